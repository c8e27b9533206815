"""remote::bedrock, driven through boto3 against a fake Bedrock Runtime on 127.0.0.1.

The fake (tests/support/fake_bedrock.py) speaks the real wire protocol, event-stream
framing included, so botocore's own serializers and parsers run on every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

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
    PermissionDeniedError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import ProviderContext, load_spec
from providers.inference.bedrock import BedrockConfig, BedrockProvider, spec
from tests.support.fake_bedrock import Answer, FakeBedrock, Fault, ToolUse

MODEL = "amazon.nova-lite-v1:0"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeBedrock) -> AsyncIterator[BedrockProvider]:
    fake.reset()
    # One attempt: botocore's own retries would hide the error mappings under test.
    made = await make_provider(fake, max_attempts=1)
    yield made
    await made.shutdown()


async def make_provider(fake: FakeBedrock, **config: Any) -> BedrockProvider:
    cfg = BedrockConfig(region="us-east-1", endpoint_url=fake.url, **config)
    return cast(
        BedrockProvider,
        await spec.factory(cfg, ProviderContext(provider_id="bedrock", cache_dir=Path("/tmp"))),
    )


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatCompletionRequest:
    messages = messages or [{"role": "user", "content": "Hi"}]
    return ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages, **fields})


async def once(provider: BedrockProvider, request: ChatCompletionRequest) -> ChatCompletion:
    result = await provider.chat_completion(request)
    assert isinstance(result, ChatCompletion)
    return result


async def stream(provider: BedrockProvider, request: ChatCompletionRequest) -> list[Any]:
    result = await provider.chat_completion(request.model_copy(update={"stream": True}))
    assert not isinstance(result, ChatCompletion)
    return [chunk async for chunk in result]


# --- registration, models -------------------------------------------------------------


def test_registered_through_entry_point_and_cheap_to_import() -> None:
    assert load_spec("remote::bedrock") is spec
    # The module itself must not pull boto3 in (cold starts); check in a clean process.
    code = "import sys, providers.inference.bedrock; print('boto3' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_empty_region_from_env_substitution_means_unset() -> None:
    assert BedrockConfig(region="", endpoint_url="").region is None


async def test_list_models_reports_configured_models(fake: FakeBedrock) -> None:
    p = await make_provider(
        fake, models=[{"model_id": "m1"}, {"model_id": "e1", "model_type": "embedding"}]
    )
    models = await p.list_models()
    assert [(m.provider_resource_id, m.model_type) for m in models] == [
        ("m1", "llm"), ("e1", "embedding")
    ]
    assert any(m.model_type == "embedding" for m in await (await make_provider(fake)).list_models())


# --- request mapping ------------------------------------------------------------------


async def test_request_mapping(fake: FakeBedrock, provider: BedrockProvider) -> None:
    await once(
        provider,
        chat(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
            ],
            temperature=0.2, top_p=0.9, max_completion_tokens=64, stop=["END"],
        ),
    )
    seen = fake.last
    assert seen.operation == "converse" and seen.model_id == MODEL
    body = seen.body
    assert body["system"] == [{"text": "Be brief."}, {"text": "Use French."}]
    content = body["messages"][0]["content"]
    assert content[0] == {"text": "What is this?"}
    # boto3 sends blob members base64-encoded in JSON, as the real service expects.
    assert content[1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert body["inferenceConfig"] == {
        "maxTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]
    }
    assert "toolConfig" not in body


async def test_tools_and_tool_choice(fake: FakeBedrock, provider: BedrockProvider) -> None:
    spec_json = {
        "toolSpec": {
            "name": "get_weather",
            "description": "Weather of a city",
            "inputSchema": {
                "json": {"type": "object", "properties": {"city": {"type": "string"}}}
            },
        }
    }
    choices: list[tuple[Any, Any]] = [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}},
         {"tool": {"name": "get_weather"}}),
    ]
    for choice, expected in choices:
        await once(provider, chat(tools=TOOLS, tool_choice=choice))
        assert fake.last.body["toolConfig"] == {"tools": [spec_json], "toolChoice": expected}
    await once(provider, chat(tools=TOOLS))
    assert fake.last.body["toolConfig"] == {"tools": [spec_json]}
    await once(provider, chat(tools=TOOLS, tool_choice="none"))
    assert "toolConfig" not in fake.last.body
    with pytest.raises(InvalidRequestError) as err:
        await once(provider, chat(tools=TOOLS, tool_choice={"type": "function",
                                                            "function": {"name": "nope"}}))
    assert err.value.param == "tool_choice"


async def test_tool_history_merges_results(fake: FakeBedrock, provider: BedrockProvider) -> None:
    calls = [
        {"id": "t1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "t2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]
    await once(
        provider,
        chat(
            [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "t2", "content": "rainy"},
                {"role": "user", "content": "And so?"},
            ],
            tools=TOOLS, tool_choice="none",
        ),
    )
    messages = fake.last.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "t2", "name": "get_weather", "input": {"city": "Rome"}}},
    ]
    # Both results and the next question in one user turn, as Converse requires.
    assert messages[2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}},
        {"toolResult": {"toolUseId": "t2", "content": [{"text": "rainy"}]}},
        {"text": "And so?"},
    ]
    # With tool blocks in the history Converse needs a toolConfig, even for "none".
    assert "toolConfig" in fake.last.body


async def test_response_format_becomes_an_instruction(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await once(provider, chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}
    }))
    assert '"properties":{"a"' in fake.last.body["system"][-1]["text"]


async def test_guardrail_config(fake: FakeBedrock) -> None:
    fake.reset()
    p = await make_provider(fake, guardrail={"identifier": "gr-1", "version": "2"})
    await once(p, chat())
    assert fake.last.body["guardrailConfig"] == {
        "guardrailIdentifier": "gr-1", "guardrailVersion": "2", "trace": "disabled"
    }
    await stream(p, chat())
    assert fake.last.body["guardrailConfig"]["streamProcessingMode"] == "sync"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]},
         "messages.content.image_url"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
         "messages.tool_calls.function.arguments"),
    ],
)
async def test_requests_bedrock_cannot_serve_are_400(
    fake: FakeBedrock, provider: BedrockProvider, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await provider.chat_completion(chat(**fields))
    assert err.value.param == param
    assert fake.requests == []  # refused before any call


# --- response mapping -----------------------------------------------------------------


async def test_text_answer(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="Bonjour !", input_tokens=9, output_tokens=3))
    result = await once(provider, chat())
    assert result.model == MODEL
    assert result.id == "chatcmpl-fake-converse-id"  # Bedrock's request id, for tracing
    assert result.choices[0].message.content == "Bonjour !"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens,
            result.usage.total_tokens) == (9, 3, 12)


async def test_tool_call_answer(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="", stop_reason="tool_use",
                       tool_uses=[ToolUse("tu-1", "get_weather", {"city": "Paris"})]))
    result = await once(provider, chat(tools=TOOLS))
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name) == ("tu-1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("content_filtered", "content_filter"), ("guardrail_intervened", "content_filter")],
)
async def test_stop_reasons(
    fake: FakeBedrock, provider: BedrockProvider, stop_reason: str, finish: str
) -> None:
    fake.script(Answer(stop_reason=stop_reason), Answer(stop_reason=stop_reason))
    assert (await once(provider, chat())).choices[0].finish_reason == finish
    chunks = await stream(provider, chat())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish


# --- streaming ------------------------------------------------------------------------


async def test_stream_text_and_usage(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="one two three", input_tokens=7, output_tokens=3))
    chunks = await stream(provider, chat(stream_options={"include_usage": True}))
    assert fake.last.operation == "converse-stream"
    assert all(isinstance(c, ChatCompletionChunk) and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    # The usage chunk comes last, with no choices, as OpenAI sends it.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10


async def test_stream_without_include_usage_has_no_usage_chunk(
    provider: BedrockProvider,
) -> None:
    chunks = await stream(provider, chat())
    assert all(c.choices and c.usage is None for c in chunks)


async def test_stream_tool_calls(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="Let me check.", stop_reason="tool_use", tool_uses=[
        ToolUse("a", "get_weather", {"city": "Paris"}),
        ToolUse("b", "get_weather", {"city": "Rome", "unit": "celsius"}),
    ]))
    chunks = await stream(provider, chat(tools=TOOLS))
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += d.id or ""
        call["name"] += (d.function.name or "") if d.function else ""
        call["arguments"] += (d.function.arguments or "") if d.function else ""
    assert sorted(calls) == [0, 1]
    assert (calls[0]["id"], calls[0]["name"]) == ("a", "get_weather")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["arguments"]) == {"city": "Rome", "unit": "celsius"}
    assert len([d for d in deltas if d.index == 1]) > 2  # arguments came in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_stream_relays_tool_call_deltas_as_they_arrive(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Answer(text="", stop_reason="tool_use", event_delay=0.3, tool_uses=[
        ToolUse("a", "get_weather", {"city": "Paris", "unit": "celsius"})]))
    result = await provider.chat_completion(chat(tools=TOOLS, stream=True))
    assert not isinstance(result, ChatCompletion)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async for chunk in result:
        calls = chunk.choices[0].delta.tool_calls if chunk.choices else None
        if calls:
            # The call's id and name, relayed before the rest of the stream has come.
            assert calls[0].id == "a" and calls[0].function and calls[0].function.name
            assert loop.time() - start < 1.5
            break
    else:
        pytest.fail("no tool call delta")
    await result.aclose()  # type: ignore[attr-defined]


async def test_stream_relays_chunks_as_they_arrive(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Answer(text="a b c d e f", event_delay=0.3))
    result = await provider.chat_completion(chat(stream=True))
    assert not isinstance(result, ChatCompletion)
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = await anext(result)
    second = await anext(result)
    # Relayed as they come, not after the whole (~2.7 s) answer.
    assert loop.time() - start < 1.5
    assert first.choices[0].delta.role == "assistant" and second.choices[0].delta.content == "a "
    await result.aclose()  # type: ignore[attr-defined]


async def test_closing_the_stream_closes_the_upstream_response(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Answer(text=" ".join(["w"] * 100), event_delay=0.05))
    result = await provider.chat_completion(chat(stream=True))
    await anext(result)  # type: ignore[call-overload]
    await result.aclose()  # type: ignore[union-attr]
    assert await asyncio.to_thread(fake.last.closed.wait, 5)


async def test_error_event_mid_stream(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="partial answer here", fail_after=3))
    result = await provider.chat_completion(chat(stream=True))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError, match="modelStreamErrorException") as err:
        async for chunk in result:  # type: ignore[union-attr]
            got.append(chunk)
    assert len(got) == 3
    assert type(err.value) is UpstreamError


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_type", "expected", "status"),
    [
        ("ValidationException", InvalidRequestError, 400),
        ("AccessDeniedException", PermissionDeniedError, 403),
        ("ResourceNotFoundException", NotFoundError, 404),
        ("ThrottlingException", RateLimitError, 429),
        ("ModelTimeoutException", UpstreamTimeoutError, 504),
        ("ModelErrorException", UpstreamError, 502),
        ("ModelNotReadyException", UpstreamError, 502),
        ("InternalServerException", UpstreamError, 502),
        ("ServiceUnavailableException", UpstreamError, 502),
    ],
)
async def test_error_mapping(
    fake: FakeBedrock, provider: BedrockProvider, error_type: str,
    expected: type[FnstackError], status: int,
) -> None:
    fake.script(Fault(error_type, "nope"), Fault(error_type, "nope"))
    with pytest.raises(expected) as err:
        await provider.chat_completion(chat())
    assert type(err.value) is expected and err.value.status == status
    assert "nope" in err.value.message
    assert isinstance(err.value.__cause__, Exception)  # re-raised from botocore's error
    # A streaming request fails the same way, before any chunk.
    with pytest.raises(expected):
        await provider.chat_completion(chat(stream=True))


async def test_unknown_500_is_upstream_error(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Fault("SomethingOdd", status=500))
    with pytest.raises(UpstreamError):
        await provider.chat_completion(chat())


async def test_read_timeout(fake: FakeBedrock) -> None:
    fake.reset()
    p = await make_provider(fake, max_attempts=1, read_timeout=0.3)
    fake.script(Fault("ThrottlingException", delay=2.0))
    with pytest.raises(UpstreamTimeoutError, match="read_timeout"):
        await p.chat_completion(chat())


async def test_retries_then_succeeds(fake: FakeBedrock) -> None:
    fake.reset()
    p = await make_provider(fake, max_attempts=2)
    fake.script(Fault("ThrottlingException"), Answer(text="second try"))
    result = await once(p, chat())
    assert result.choices[0].message.content == "second try"
    assert len(fake.requests) == 2


async def test_unreachable_endpoint(fake: FakeBedrock) -> None:
    cfg = BedrockConfig(region="us-east-1", endpoint_url="http://127.0.0.1:9", max_attempts=1)
    p = await spec.factory(cfg, ProviderContext(provider_id="b", cache_dir=Path("/tmp")))
    with pytest.raises(UpstreamError, match="cannot reach"):
        await p.chat_completion(chat())


# --- completions, embeddings ----------------------------------------------------------


async def test_legacy_completion(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Answer(text="Paris", stop_reason="max_tokens"))
    result = await provider.completion(
        CompletionRequest(model=MODEL, prompt="The capital of France is", max_tokens=3)
    )
    assert isinstance(result, Completion)
    assert result.choices[0].text == "Paris" and result.choices[0].finish_reason == "length"
    assert fake.last.body["messages"] == [
        {"role": "user", "content": [{"text": "The capital of France is"}]}
    ]
    assert fake.last.body["inferenceConfig"] == {"maxTokens": 3}
    chunks = await provider.completion(
        CompletionRequest(model=MODEL, prompt="Hi", stream=True)
    )
    assert not isinstance(chunks, Completion)
    texts = [c.choices[0].text async for c in chunks if c.choices]
    assert "".join(texts) == "Hello there!"
    with pytest.raises(InvalidRequestError):
        await provider.completion(CompletionRequest(model=MODEL, prompt=[1, 2, 3]))


async def test_titan_embeddings(fake: FakeBedrock, provider: BedrockProvider) -> None:
    result = await provider.embeddings(
        EmbeddingRequest(model="amazon.titan-embed-text-v2:0", input=["a b", "c"], dimensions=4)
    )
    assert [len(cast(list[float], e.embedding)) for e in result.data] == [4, 4]
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3
    assert fake.last.operation == "invoke"
    assert fake.last.body == {"inputText": "c", "dimensions": 4}


async def test_cohere_embeddings_base64(fake: FakeBedrock, provider: BedrockProvider) -> None:
    result = await provider.embeddings(
        EmbeddingRequest(model="cohere.embed-english-v3", input=["x", "y"],
                         encoding_format="base64")
    )
    assert fake.last.body == {"texts": ["x", "y"], "input_type": "search_document"}
    assert len(fake.requests) == 1  # one batch
    raw = base64.b64decode(cast(str, result.data[0].embedding))
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == 4


async def test_embedding_errors_map(fake: FakeBedrock, provider: BedrockProvider) -> None:
    fake.script(Fault("ResourceNotFoundException"))
    with pytest.raises(NotFoundError):
        await provider.embeddings(EmbeddingRequest(model="amazon.titan-embed-text-v1", input="x"))
    with pytest.raises(InvalidRequestError):
        await provider.embeddings(EmbeddingRequest(model="amazon.titan-embed-text-v1", input=[1]))
