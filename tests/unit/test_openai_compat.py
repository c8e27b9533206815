"""remote::openai, called directly (no app around it).

Two upstreams: a real llama.cpp server on SmolLM2-135M for correctness, and a scripted
fake (tests/support/fake_openai.py) for faults a real server will not produce on cue.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
)
from fnstack.errors import (
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UnprocessableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import ProviderContext
from providers.inference.openai_compat import OpenAICompatConfig, OpenAICompatProvider, spec
from tests.support.fake_openai import MODEL, FakeOpenAI, Reply, chat_chunk_json, chat_json
from tests.support.llamacpp import LlamaCppServer, LlamaCppUnavailable

CHAT = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def make_provider(base_url: str, **config: Any) -> OpenAICompatProvider:
    provider = await spec.factory(
        OpenAICompatConfig(base_url=base_url, **config),
        ProviderContext(provider_id="test", cache_dir=Path("/tmp")),
    )
    return cast(OpenAICompatProvider, provider)


def chat(model: str = MODEL, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": QUESTION, **fields})


async def chat_once(provider: OpenAICompatProvider, **fields: Any) -> ChatCompletion:
    result = await provider.chat_completion(chat(**fields))
    assert isinstance(result, ChatCompletion)
    return result


async def chat_stream(
    provider: OpenAICompatProvider, **fields: Any
) -> AsyncIterator[ChatCompletionChunk]:
    result = await provider.chat_completion(chat(stream=True, **fields))
    assert not isinstance(result, ChatCompletion)
    return result


async def drain(stream: AsyncIterator[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)


# --- against a real llama.cpp server -----------------------------------------------------


@dataclass
class Llama:
    """The llama.cpp upstream, or why there is none: a missing install must fail the
    tests that need it (CI installs it), with the command to install it."""

    server: LlamaCppServer | None
    _provider: OpenAICompatProvider | None
    problem: str = ""

    @property
    def provider(self) -> OpenAICompatProvider:
        if self._provider is None:
            pytest.fail(self.problem, pytrace=False)
        return self._provider

    @property
    def model_id(self) -> str:
        if self.server is None:
            pytest.fail(self.problem, pytrace=False)
        return self.server.model_id


@pytest.fixture(scope="module")
async def llama() -> AsyncIterator[Llama]:
    try:
        server = LlamaCppServer().__enter__()
    except LlamaCppUnavailable as exc:
        yield Llama(None, None, str(exc))
        return
    provider = await make_provider(server.base_url, timeout=60, max_retries=0)
    try:
        yield Llama(server, provider)
    finally:
        await provider.shutdown()
        server.__exit__(None, None, None)


@pytest.mark.slow
async def test_llamacpp_chat_answers(llama: Llama) -> None:
    answer = await chat_once(llama.provider, model=llama.model_id, temperature=0, max_tokens=32)
    choice = answer.choices[0]
    assert "Paris" in (choice.message.content or ""), choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens > 0


@pytest.mark.slow
async def test_llamacpp_chat_streams(llama: Llama) -> None:
    fields: dict[str, Any] = {"model": llama.model_id, "temperature": 0, "max_tokens": 16}
    whole = await chat_once(llama.provider, **fields)
    stream = await chat_stream(llama.provider, stream_options={"include_usage": True}, **fields)
    chunks = await drain(stream)

    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3
    streamed = text_of(chunks)
    assert streamed
    # Greedy decoding: the stream says what the one-shot answer says.
    expected = whole.choices[0].message.content or ""
    assert expected.startswith(streamed) or streamed.startswith(expected), (streamed, expected)
    assert any(c.finish_reason for chunk in chunks for c in chunk.choices)
    # llama-cpp-python 0.3.36 ignores stream_options (its source never reads it), so its
    # streams carry no usage chunk; the relay of one is tested against the fake. We do
    # not invent token counts. Should a later llama-cpp-python send usage, check it.
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert all(u.completion_tokens > 0 for u in usage)


@pytest.mark.slow
async def test_llamacpp_completion(llama: Llama) -> None:
    request = CompletionRequest(
        model=llama.model_id, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    result = await llama.provider.completion(request)
    assert isinstance(result, Completion)
    assert result.choices[0].text.strip()
    assert result.choices[0].finish_reason in ("stop", "length")

    stream = await llama.provider.completion(request.model_copy(update={"stream": True}))
    assert not isinstance(stream, Completion)
    parts = [chunk async for chunk in stream]
    assert "".join(p.choices[0].text for p in parts if p.choices) == result.choices[0].text


@pytest.mark.slow
async def test_llamacpp_lists_models(llama: Llama) -> None:
    models = await llama.provider.list_models()
    assert [(m.provider_resource_id, m.model_type) for m in models] == [(llama.model_id, "llm")]


@pytest.mark.slow
async def test_llamacpp_bad_request_maps_to_400(llama: Llama) -> None:
    # A prompt longer than the 2048-token context: llama.cpp refuses it with a 400.
    with pytest.raises(InvalidRequestError) as info:
        await llama.provider.completion(
            CompletionRequest(model=llama.model_id, prompt="Paris " * 3000, max_tokens=4)
        )
    assert info.value.status == 400 and "context" in info.value.message.lower()


@pytest.mark.slow
async def test_llamacpp_embeddings() -> None:
    # SmolLM2's GGUF names no pooling, so llama.cpp would answer one vector per token;
    # mean pooling (1) makes it an ordinary sentence-embedding model.
    server = LlamaCppServer(
        embedding=True, extra_args=("--kv_overrides", "llama.pooling_type=int:1")
    )
    try:
        server.__enter__()
    except LlamaCppUnavailable as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    provider = await make_provider(server.base_url, max_retries=0)
    try:
        result = await provider.embeddings(
            EmbeddingRequest(model=server.model_id, input=["Paris", "London"])
        )
    finally:
        await provider.shutdown()
        server.__exit__(None, None, None)
    assert [e.index for e in result.data] == [0, 1]
    first = result.data[0].embedding
    assert isinstance(first, list) and len(first) > 100
    assert first != result.data[1].embedding


# --- against the scripted fake -------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(request: pytest.FixtureRequest) -> None:
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture(scope="module")
async def mock(fake: FakeOpenAI) -> AsyncIterator[OpenAICompatProvider]:
    provider = await make_provider(
        fake.base_url,
        api_key="sk-test",
        headers={"X-Tenant": "t1"},
        timeout=5,
        max_retries=2,
        backoff=0.01,
        max_backoff=2,
        model_type_overrides={"fake-embed": "embedding"},
    )
    yield provider
    await provider.shutdown()


async def test_relays_the_request_as_sent(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    request = chat(
        top_k=5,  # a vendor extension: relayed untouched
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    )
    answer = await mock.chat_completion(request)
    assert isinstance(answer, ChatCompletion) and answer.choices[0].message.content == "Hello!"
    seen = fake.requests[-1]
    assert seen.path == CHAT
    assert seen.body == {
        "model": MODEL,
        "messages": QUESTION,
        "top_k": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    }
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["x-tenant"] == "t1"


async def test_relays_explicit_nulls_of_a_tool_call_turn(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    await mock.chat_completion(ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": messages}))
    # llama.cpp's chat templates need the assistant's explicit "content": null.
    assert fake.requests[-1].body["messages"] == messages


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_retries_then_succeeds(
    fake: FakeOpenAI, mock: OpenAICompatProvider, status: int
) -> None:
    fake.script(CHAT, Reply(status=status), Reply(status=status), Reply(json=chat_json("ok")))
    answer = await chat_once(mock)
    assert answer.choices[0].message.content == "ok"
    assert len(fake.requests) == 3


async def test_honours_retry_after(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    fake.script(CHAT, Reply(status=429, headers={"retry-after": "0.4"}), Reply(json=chat_json()))
    started = time.monotonic()
    await chat_once(mock)
    assert time.monotonic() - started >= 0.4
    assert len(fake.requests) == 2


async def test_429_with_long_retry_after_goes_back_to_the_caller(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    fake.script(CHAT, Reply(status=429, headers={"retry-after": "120"}))
    with pytest.raises(RateLimitError) as info:
        await chat_once(mock)
    assert info.value.status == 429
    assert info.value.headers["retry-after"] == "120"
    assert len(fake.requests) == 1


async def test_gives_up_after_max_retries(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    fake.script(CHAT, *[Reply(status=500)] * 3, Reply(json=chat_json()))
    with pytest.raises(UpstreamError) as info:
        await chat_once(mock)
    assert type(info.value) is UpstreamError and info.value.status == 502
    assert "scripted 500" in info.value.message
    assert len(fake.requests) == 3


async def test_rate_limit_exhausted_keeps_retry_after(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    fake.script(CHAT, *[Reply(status=429, headers={"retry-after": "0"})] * 3)
    with pytest.raises(RateLimitError) as info:
        await chat_once(mock)
    assert info.value.headers == {"retry-after": "0"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidRequestError),
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (422, UnprocessableError),
    ],
)
async def test_client_errors_keep_openai_fields(
    fake: FakeOpenAI, mock: OpenAICompatProvider, status: int, error: type[FnstackError]
) -> None:
    body = {
        "error": {"message": "bad value", "type": "x", "param": "temperature", "code": "bad_temp"}
    }
    fake.script(CHAT, Reply(status=status, json=body))
    with pytest.raises(error) as info:
        await chat_once(mock)
    assert (info.value.status, info.value.message) == (status, "bad value")
    assert (info.value.param, info.value.code) == ("temperature", "bad_temp")
    assert len(fake.requests) == 1  # a refusal is not retried


async def test_non_openai_error_body(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    fake.script(CHAT, Reply(status=404, json={"error": "model 'x' not found"}))
    with pytest.raises(NotFoundError, match="model 'x' not found"):
        await chat_once(mock)


async def test_upstream_auth_failure_is_ours(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    fake.script(CHAT, Reply(status=401))
    with pytest.raises(UpstreamError, match="api_key") as info:
        await chat_once(mock)
    assert info.value.status == 502


async def test_timeout(fake: FakeOpenAI) -> None:
    provider = await make_provider(fake.base_url, timeout=0.3, max_retries=2, backoff=0.01)
    fake.script(CHAT, Reply(delay=1.0, json=chat_json()))
    try:
        with pytest.raises(UpstreamTimeoutError) as info:
            await chat_once(provider)
    finally:
        await provider.shutdown()
    assert info.value.status == 504
    assert len(fake.requests) == 1  # the upstream may still be working: not sent twice


async def test_connect_error_names_base_url() -> None:
    from tests.support.fake_openai import free_port

    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    provider = await make_provider(base_url, max_retries=1, backoff=0.01)
    try:
        with pytest.raises(UpstreamError) as info:
            await chat_once(provider)
        assert info.value.status == 502 and base_url in info.value.message
        assert await provider.list_models() == []  # logged, not raised
    finally:
        await provider.shutdown()


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>gateway</html>", content_type="text/html"),
        Reply(json={"unexpected": True}),
        Reply(status=502, body=b"<html>bad gateway</html>", content_type="text/html"),
    ],
    ids=["html-200", "wrong-json", "html-502"],
)
async def test_garbage_is_an_upstream_error(
    fake: FakeOpenAI, mock: OpenAICompatProvider, reply: Reply
) -> None:
    fake.script(CHAT, *[reply] * 3)
    with pytest.raises(UpstreamError) as info:
        await chat_once(mock)
    assert info.value.status == 502


async def test_embeddings(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    result = await mock.embeddings(EmbeddingRequest(model="fake-embed", input=["a", "b"]))
    assert [e.index for e in result.data] == [0, 1]
    assert fake.requests[-1].body == {"model": "fake-embed", "input": ["a", "b"]}


async def test_list_models(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    models = await mock.list_models()
    assert [(m.provider_resource_id, m.model_type) for m in models] == [
        (MODEL, "llm"),
        ("fake-embed", "embedding"),
    ]
    assert models[0].metadata == {"owned_by": "fake"}


@pytest.mark.parametrize(
    "reply", [Reply(status=400), Reply(body=b"nope")], ids=["status", "garbage"]
)
async def test_list_models_failure_is_empty(
    fake: FakeOpenAI, mock: OpenAICompatProvider, reply: Reply
) -> None:
    fake.script("/v1/models", reply)
    assert await mock.list_models() == []


# --- streaming against the fake ---


async def test_stream_relays_chunks(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    chunks = await drain(await chat_stream(mock))
    assert text_of(chunks) == "Hello there!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.requests[-1].body["stream"] is True


async def test_finished_stream_returns_its_connection_to_the_pool(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    for _ in range(3):
        await drain(await chat_stream(mock))
    assert len({seen.client for seen in fake.requests}) == 1


async def test_stream_relays_the_usage_chunk(fake: FakeOpenAI, mock: OpenAICompatProvider) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    events = [
        chat_chunk_json("Hi"),
        chat_chunk_json(finish_reason="stop"),
        {**chat_chunk_json(), "choices": [], "usage": usage},
    ]
    fake.script(CHAT, Reply(events=events))
    chunks = await drain(await chat_stream(mock, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 6
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_yields_each_chunk_as_it_arrives(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    events = [chat_chunk_json(), chat_chunk_json("a"), chat_chunk_json("b")]
    fake.script(
        CHAT, Reply(events=[*events, chat_chunk_json(finish_reason="stop")], event_delay=0.3)
    )
    started = time.monotonic()
    stream = await chat_stream(mock)
    arrivals = [time.monotonic() - started async for _ in stream]
    assert arrivals[0] < 0.25 and arrivals[-1] > 0.8
    assert all(later - earlier > 0.2 for earlier, later in itertools.pairwise(arrivals))


async def test_stream_relays_tool_call_deltas_as_they_arrive(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    def call_chunk(call: dict[str, Any]) -> dict[str, Any]:
        chunk = chat_chunk_json()
        chunk["choices"][0]["delta"] = {"tool_calls": [{"index": 0, **call}]}
        return chunk

    head = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}
    fragments = ['{"a": ', "1, ", '"b": 2}']
    events = [
        chat_chunk_json(),
        call_chunk(head),
        *(call_chunk({"function": {"arguments": f}}) for f in fragments),
        chat_chunk_json(finish_reason="tool_calls"),
    ]
    fake.script(CHAT, Reply(events=events, event_delay=0.3))
    started = time.monotonic()
    stream = await chat_stream(mock, tools=[{"type": "function", "function": {"name": "add"}}])
    arrivals: list[float] = []
    calls = []
    async for chunk in stream:
        arrivals.append(time.monotonic() - started)
        calls.extend(chunk.choices[0].delta.tool_calls or [])
    # Each delta is relayed when it arrives, not gathered until the end.
    assert all(later - earlier > 0.2 for earlier, later in itertools.pairwise(arrivals))
    assert calls[0].id == "call_1" and calls[0].function and calls[0].function.name == "add"
    assert [c.function.arguments for c in calls[1:] if c.function] == fragments


async def test_stream_retried_before_the_first_byte(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    fake.script(CHAT, Reply(status=503))
    assert text_of(await drain(await chat_stream(mock))) == "Hello there!"
    assert len(fake.requests) == 2


async def test_broken_stream_raises_and_is_not_retried(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    events = [chat_chunk_json(), chat_chunk_json("Hel"), chat_chunk_json("lo")]
    fake.script(CHAT, Reply(events=events, break_after=2), Reply(json=chat_json()))
    stream = await chat_stream(mock)
    received: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert text_of(received) == "Hel"
    assert info.value.status == 502
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("events", "match"),
    [
        ([chat_chunk_json(), {"error": {"message": "out of memory"}}], "out of memory"),
        ([chat_chunk_json(), "{not json"], "malformed"),
    ],
    ids=["error-event", "garbage-event"],
)
async def test_bad_stream_events(
    fake: FakeOpenAI, mock: OpenAICompatProvider, events: list[Any], match: str
) -> None:
    fake.script(CHAT, Reply(events=events))
    stream = await chat_stream(mock)
    with pytest.raises(UpstreamError, match=match):
        await drain(stream)


async def test_stream_ending_early_is_an_error(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    # A clean end of body, but no finish_reason and no [DONE]: the answer is cut short.
    fake.script(CHAT, Reply(events=[chat_chunk_json(), chat_chunk_json("Hi")], done=False))
    with pytest.raises(UpstreamError, match="before it was complete"):
        await drain(await chat_stream(mock))
    # With a finish_reason the answer is whole, [DONE] or not.
    events = [chat_chunk_json("Hi"), chat_chunk_json(finish_reason="stop")]
    fake.script(CHAT, Reply(events=events, done=False))
    assert text_of(await drain(await chat_stream(mock))) == "Hi"


async def test_error_before_the_first_event_has_its_status(
    fake: FakeOpenAI, mock: OpenAICompatProvider
) -> None:
    fake.script(CHAT, Reply(status=400, json={"error": {"message": "no", "param": "n"}}))
    with pytest.raises(InvalidRequestError) as info:
        await chat_stream(mock)
    assert info.value.param == "n"


@pytest.mark.parametrize("read_first", [2, 0], ids=["mid-stream", "before-reading"])
async def test_closing_the_stream_closes_the_upstream_request(
    fake: FakeOpenAI, mock: OpenAICompatProvider, read_first: int
) -> None:
    events = [chat_chunk_json(), *[chat_chunk_json("tok") for _ in range(100)]]
    fake.script(CHAT, Reply(events=events, event_delay=0.05))
    stream = await chat_stream(mock)
    for _ in range(read_first):
        await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]  # what the router does on disconnect
    seen = fake.requests[-1]
    assert await asyncio.to_thread(seen.disconnected.wait, 5), "upstream never saw the close"
    # The pooled connection is usable again.
    assert (await chat_once(mock)).choices[0].message.content == "Hello!"


async def test_shutdown_closes_the_pool(fake: FakeOpenAI) -> None:
    provider = await make_provider(fake.base_url)
    await provider.shutdown()
    assert provider._client.is_closed


def test_config_checks_base_url() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        OpenAICompatConfig(base_url="localhost:8080")
    assert OpenAICompatConfig(base_url="http://h:1/v1/").base_url == "http://h:1/v1"
