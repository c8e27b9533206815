"""remote::sagemaker and the container it talks to (fnstack.sagemaker_server).

The whole path runs over real HTTP, with boto3 at one end::

    provider --boto3--> fake SageMaker Runtime --HTTP--> sagemaker_server (the container)
             (tests/support/fake_sagemaker.py)            remote::openai --> fake_openai

so the PayloadPart bytes are what the container really streamed.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.config import RunConfig, parse_config
from fnstack.errors import (
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import ProviderContext, load_spec
from fnstack.stack import Stack
from fnstack_dev.sagemaker_server import create_sagemaker_app
from providers.inference._sse import SSEEvents
from providers.inference.sagemaker import SageMakerConfig, SageMakerProvider, spec
from tests.support.eventstream import ThreadedServer
from tests.support.fake_openai import FakeOpenAI, Reply, chat_chunk_json
from tests.support.fake_sagemaker import FakeSageMaker, Fault

ENDPOINT = "fnstack-test"
MODEL = "fake-model"
CHAT = "/v1/chat/completions"


def container_config(base_url: str, tmp: Path) -> RunConfig:
    return parse_config(
        {
            "providers": {
                "inference": [
                    {
                        "provider_id": "upstream",
                        "provider_type": "remote::openai",
                        "config": {
                            "base_url": base_url,
                            "max_retries": 0,
                            "model_type_overrides": {"fake-embed": "embedding"},
                        },
                    }
                ]
            },
            "registered_resources": {
                "models": [{"model_id": "smol", "provider_model_id": MODEL}]
            },
            "storage": {
                "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")}},
                "stores": {"registry": {"backend": "kv", "namespace": "registry"}},
            },
            "cache_dir": str(tmp / "cache"),
        },
        env={},
    )


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def container(openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = container_config(openai.base_url, tmp_path_factory.mktemp("container"))
    server = ThreadedServer(create_sagemaker_app(config), "sagemaker-container")
    server.start()  # runs the app's lifespan: the stack starts before /ping says 200
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def sagemaker(container: str) -> Iterator[FakeSageMaker]:
    with FakeSageMaker(container, endpoint=ENDPOINT) as fake:
        yield fake


@pytest.fixture
async def provider(
    sagemaker: FakeSageMaker, openai: FakeOpenAI
) -> AsyncIterator[SageMakerProvider]:
    sagemaker.reset()
    openai.reset()
    made = await make_provider(sagemaker.url)
    yield made
    await made.shutdown()


async def make_provider(url: str, **config: Any) -> SageMakerProvider:
    cfg = SageMakerConfig(
        **{"endpoint_name": ENDPOINT, "region": "us-east-1", "endpoint_url": url,
           "model_id": MODEL, "max_attempts": 1, **config}
    )
    made = await spec.factory(cfg, ProviderContext(provider_id="sm", cache_dir=Path("/tmp")))
    return cast(SageMakerProvider, made)


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


async def drain(result: Any) -> list[Any]:
    assert not isinstance(result, ChatCompletion | Completion)
    return [chunk async for chunk in result]


def completion_json(text: str = "Paris.") -> dict[str, Any]:
    return {
        "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
    }


# --- the provider ----------------------------------------------------------------------------


def test_registered_and_cheap_to_import() -> None:
    assert load_spec("remote::sagemaker") is spec
    code = "import sys, providers.inference.sagemaker; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_list_models() -> None:
    p = await make_provider("http://127.0.0.1:9", embedding_model_id="e5",
                            embedding_dimension=384)
    models = await p.list_models()
    assert [(m.provider_resource_id, m.model_type) for m in models] == [
        (MODEL, "llm"), ("e5", "embedding")
    ]
    assert models[1].metadata == {"embedding_dimension": 384}
    assert SageMakerConfig(endpoint_name="x").model_id == "SmolLM2-135M-Instruct"


async def test_chat(provider: SageMakerProvider, sagemaker: FakeSageMaker,
                    openai: FakeOpenAI) -> None:
    result = await provider.chat_completion(chat(temperature=0.5))
    assert isinstance(result, ChatCompletion)
    assert result.choices[0].message.content == "Hello!"
    seen = sagemaker.last
    assert (seen.operation, seen.endpoint) == ("invocations", ENDPOINT)
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                         "temperature": 0.5}
    assert openai.requests[-1].body["temperature"] == 0.5  # relayed all the way


async def test_inference_component_header(sagemaker: FakeSageMaker) -> None:
    sagemaker.reset()
    p = await make_provider(sagemaker.url, inference_component="smol-ic")
    await p.chat_completion(chat())
    assert sagemaker.last.headers["x-amzn-sagemaker-inference-component"] == "smol-ic"


@pytest.mark.parametrize("part_size", [None, 1, 3, 7])
async def test_chat_stream_reassembles_split_lines(
    provider: SageMakerProvider, sagemaker: FakeSageMaker, openai: FakeOpenAI,
    part_size: int | None,
) -> None:
    sagemaker.part_size = part_size
    words = ["Héllo", " wörld", " ✓"]  # multi-byte characters get cut mid-way too
    openai.script(CHAT, Reply(events=[
        chat_chunk_json(), *(chat_chunk_json(w) for w in words),
        chat_chunk_json(finish_reason="stop"),
    ]))
    chunks = await drain(await provider.chat_completion(chat(stream=True)))
    assert sagemaker.last.operation == "invocations-response-stream"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Héllo wörld ✓"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {MODEL}


async def test_chat_stream_relays_tool_call_deltas_as_they_arrive(
    provider: SageMakerProvider, openai: FakeOpenAI
) -> None:
    def call_chunk(call: dict[str, Any]) -> dict[str, Any]:
        chunk = chat_chunk_json()
        chunk["choices"][0]["delta"] = {"tool_calls": [{"index": 0, **call}]}
        return chunk

    head = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}
    fragments = ['{"a": ', "1, ", '"b": 2}']
    openai.script(CHAT, Reply(event_delay=0.3, events=[
        chat_chunk_json(), call_chunk(head),
        *(call_chunk({"function": {"arguments": f}}) for f in fragments),
        chat_chunk_json(finish_reason="tool_calls"),
    ]))
    started = time.monotonic()
    result = await provider.chat_completion(chat(stream=True))
    arrivals, calls = [], []
    async for chunk in cast(AsyncIterator[ChatCompletionChunk], result):
        arrivals.append(time.monotonic() - started)
        calls.extend(chunk.choices[0].delta.tool_calls or [])
    # Relayed through the container and SageMaker as each arrives, not at the end.
    assert all(later - earlier > 0.15 for earlier, later in itertools.pairwise(arrivals))
    assert calls[0].id == "call_1" and calls[0].function and calls[0].function.name == "add"
    assert [c.function.arguments for c in calls[1:] if c.function] == fragments


def test_sse_lines_parser() -> None:
    lines = SSEEvents()
    raw = b'data: {"a":1}\r\n\r\nevent: error\ndata: x\ndata: y\n\n: comment\ndata: [DONE]'
    events = [e for byte in raw for e in lines.feed(bytes([byte]))]
    assert events == [("", '{"a":1}'), ("error", "x\ny")]
    assert lines.finish() == [("", "[DONE]")]


async def test_completions(provider: SageMakerProvider, openai: FakeOpenAI) -> None:
    openai.script("/v1/completions", Reply(json=completion_json()))
    result = await provider.completion(CompletionRequest(model=MODEL, prompt="Capital?"))
    assert isinstance(result, Completion) and result.choices[0].text == "Paris."
    assert openai.requests[-1].path == "/v1/completions"
    pieces = [{**completion_json(t), "choices": [{"index": 0, "text": t, "finish_reason": f}]}
              for t, f in (("Pa", None), ("ris", "stop"))]
    openai.script("/v1/completions", Reply(events=pieces))
    chunks = await drain(
        await provider.completion(CompletionRequest(model=MODEL, prompt="Capital?", stream=True))
    )
    assert "".join(c.choices[0].text for c in chunks) == "Paris"


async def test_embeddings(provider: SageMakerProvider, openai: FakeOpenAI) -> None:
    result = await provider.embeddings(EmbeddingRequest(model="fake-embed", input=["a", "b"]))
    assert isinstance(result, EmbeddingList) and len(result.data) == 2
    assert openai.requests[-1].path == "/v1/embeddings"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, InvalidRequestError), (404, NotFoundError), (429, RateLimitError),
     (500, UpstreamError), (503, UpstreamError)],
)
async def test_container_errors_come_back_as_themselves(
    provider: SageMakerProvider, openai: FakeOpenAI, status: int,
    expected: type[FnstackError],
) -> None:
    # upstream status -> the container's OpenAI error -> SageMaker's ModelError (424,
    # OriginalStatusCode) -> the same error type again.
    openai.script(CHAT, Reply(status=status), Reply(status=status))
    with pytest.raises(expected) as err:
        await provider.chat_completion(chat())
    assert type(err.value) is expected
    with pytest.raises(expected):
        await provider.chat_completion(chat(stream=True))


@pytest.mark.parametrize(
    ("fault", "expected", "match"),
    [
        (Fault("ThrottlingException"), RateLimitError, "throttling"),
        (Fault("ModelNotReadyException"), UpstreamError, "not ready"),
        (Fault("ServiceUnavailable"), UpstreamError, "ServiceUnavailable"),
        (Fault("InternalFailure"), UpstreamError, "InternalFailure"),
        (Fault("ValidationError", "bad header"), InvalidRequestError, "bad header"),
    ],
)
async def test_sagemaker_errors(
    provider: SageMakerProvider, sagemaker: FakeSageMaker, fault: Fault,
    expected: type[FnstackError], match: str,
) -> None:
    sagemaker.script(fault)
    with pytest.raises(expected, match=match) as err:
        await provider.chat_completion(chat())
    assert type(err.value) is expected


async def test_missing_endpoint_is_a_config_problem(sagemaker: FakeSageMaker) -> None:
    p = await make_provider(sagemaker.url, endpoint_name="nope")
    with pytest.raises(UpstreamError, match="check endpoint_name"):
        await p.chat_completion(chat())


async def test_timeout(sagemaker: FakeSageMaker) -> None:
    sagemaker.reset()
    p = await make_provider(sagemaker.url, read_timeout=0.3)
    sagemaker.script(Fault("ThrottlingException", delay=2.0))
    with pytest.raises(UpstreamTimeoutError):
        await p.chat_completion(chat())


async def test_failure_mid_stream_in_the_container(
    provider: SageMakerProvider, openai: FakeOpenAI
) -> None:
    # The upstream breaks after two events: the container reports an error event.
    openai.script(CHAT, Reply(events=[chat_chunk_json(), chat_chunk_json("Hi"),
                                      chat_chunk_json(" there")], break_after=2))
    result = await provider.chat_completion(chat(stream=True))
    got = []
    with pytest.raises(UpstreamError, match="mid-stream"):
        async for chunk in result:  # type: ignore[union-attr]
            got.append(chunk)
    assert len(got) == 2


async def test_model_stream_error_event(openai: FakeOpenAI) -> None:
    # A container whose connection breaks: SageMaker sends a ModelStreamError event.
    openai.reset()
    with FakeSageMaker(f"http://127.0.0.1:{openai.port}", endpoint=ENDPOINT) as raw:
        openai.script("/invocations", Reply(events=[chat_chunk_json(), chat_chunk_json("a")],
                                            break_after=1))
        p = await make_provider(raw.url)
        result = await p.chat_completion(chat(stream=True))
        with pytest.raises(UpstreamError, match="ModelStreamError"):
            await drain(result)
        # A stream that just stops, with no finish_reason and no [DONE], is an error too.
        openai.script("/invocations", Reply(events=[chat_chunk_json("a")], done=False))
        with pytest.raises(UpstreamError, match="before it was complete"):
            await drain(await p.chat_completion(chat(stream=True)))


# --- the container: fnstack.sagemaker_server -----------------------------------------------------


async def test_ping_and_invocations(container: str, openai: FakeOpenAI) -> None:
    openai.reset()
    async with httpx.AsyncClient(base_url=container) as client:
        assert (await client.get("/ping")).status_code == 200
        # A public model id: the provider gets its own id, the caller sees the public one.
        answer = await client.post("/invocations", json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}]})
        assert answer.status_code == 200 and answer.json()["model"] == "smol"
        assert openai.requests[-1].body["model"] == MODEL
        answer = await client.post("/invocations", json={
            "model": "smol", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in answer.text.split("\n") if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
        assert json.loads(lines[0][6:])["model"] == "smol"
        # No model: fine when the endpoint serves one model of the kind asked for...
        answer = await client.post("/invocations", json={"input": "x"})
        assert answer.json()["object"] == "list" and answer.json()["model"] == "fake-embed"
        # ...and a 400 that lists them when it serves several.
        answer = await client.post("/invocations", json={
            "messages": [{"role": "user", "content": "Hi"}]})
        assert answer.status_code == 400
        assert "fake-model, smol" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"hello": 1}', 400, "cannot tell the API"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "not found"),
        (b'{"model": "smol", "messages": []}', 400, "messages"),
        (b'{"model": "fake-embed", "messages": [{"role": "user", "content": "x"}]}', 400,
         "embedding model"),
    ],
)
async def test_invocation_errors(container: str, body: bytes, status: int, match: str) -> None:
    async with httpx.AsyncClient(base_url=container) as client:
        answer = await client.post("/invocations", content=body,
                                   headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert match in answer.json()["error"]["message"]


async def test_ping_is_503_before_the_stack_starts(openai: FakeOpenAI, tmp_path: Path) -> None:
    config = container_config(openai.base_url, tmp_path)
    stack = Stack(config)
    app = create_sagemaker_app(config, stack=stack)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://container") as client:
        assert (await client.get("/ping")).status_code == 503  # no lifespan ran
    await stack.shutdown()
