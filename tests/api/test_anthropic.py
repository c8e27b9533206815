"""Anthropic's Messages API through the official anthropic SDK, in every execution mode.

The SDK is pointed at fnstack unchanged (``base_url`` without ``/v1``, the admin key as
``x-api-key``). Answers come from the bundled reference model (greedy, a few tokens) and,
for plain and streamed text, from llama.cpp behind ``remote::openai`` too; tool use runs on
the reference model with ``tool_choice`` any/tool, which it decodes under a grammar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of

WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HI: list[Any] = [{"role": "user", "content": "Hi"}]
QUESTION: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
# Sampling parameters are not in this SDK's signature any more; fnstack still takes them.
GREEDY = {"temperature": 0}


@pytest.fixture
def claude(api: LiveApi, request: pytest.FixtureRequest) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=api.url_for(request).removesuffix("/v1"),
                                 api_key=api.key, max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture
def reference(api: LiveApi) -> str:
    return models_of(api)["reference"]


@pytest.fixture(params=["reference", "openai"])
def llm(request: pytest.FixtureRequest, api: LiveApi) -> str:
    return models_of(api)[request.param]


def _text(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_plain_message(claude: anthropic.Anthropic, llm: str) -> None:
    msg = claude.messages.create(model=llm, max_tokens=6, messages=QUESTION, extra_body=GREEDY)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == llm
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and _text(msg)
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 6
    assert msg._request_id  # fnstack's request id, in the header the SDK reads


def test_max_tokens_is_the_stop_reason_when_reached(claude: anthropic.Anthropic,
                                                    reference: str) -> None:
    msg = claude.messages.create(model=reference, max_tokens=2, extra_body=GREEDY,
                                 messages=[{"role": "user", "content": "Tell me a long story."}])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2


def test_streaming_events_in_order(claude: anthropic.Anthropic, llm: str) -> None:
    with claude.messages.stream(model=llm, max_tokens=6, messages=QUESTION,
                                extra_body=GREEDY) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    raw = [k for k in kinds if k in ("message_start", "content_block_start",
                                     "content_block_delta", "content_block_stop",
                                     "message_delta", "message_stop")]
    assert raw[0] == "message_start" and raw[1] == "content_block_start"
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}
    assert _text(final) and final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    # Streamed and unstreamed greedy answers agree.
    plain = claude.messages.create(model=llm, max_tokens=6, messages=QUESTION, extra_body=GREEDY)
    assert _text(plain) == _text(final)


def test_stream_wire_has_named_events_and_a_ping(api: LiveApi, reference: str,
                                                 request: pytest.FixtureRequest) -> None:
    body = {"model": reference, "max_tokens": 3, "messages": HI, "stream": True}
    with httpx.Client(timeout=120) as http:
        r = http.post(f"{api.url_for(request)}/messages", json=body,
                      headers={"x-api-key": api.key, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in r.text.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    for lines in events:
        assert lines[1].startswith("data: ")
        assert json.loads(lines[1].removeprefix("data: "))["type"] == \
            lines[0].removeprefix("event: ")


def test_system_prompt_as_string_or_blocks(claude: anthropic.Anthropic, reference: str) -> None:
    system = "You are a pirate. Answer every question like a pirate."
    kw: dict[str, Any] = {"model": reference, "max_tokens": 8, "extra_body": GREEDY,
                          "messages": QUESTION}
    as_string = claude.messages.create(system=system, **kw)
    as_blocks = claude.messages.create(system=[{"type": "text", "text": system}], **kw)
    without = claude.messages.create(**kw)
    # The same prompt either way; another prompt without it (SmolLM2's chat template
    # puts its own default system prompt in when none is given).
    assert _text(as_string) == _text(as_blocks)
    assert as_string.usage.input_tokens == as_blocks.usage.input_tokens
    assert as_string.usage.input_tokens != without.usage.input_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(claude: anthropic.Anthropic, reference: str, stream: bool) -> None:
    kw: dict[str, Any] = {"model": reference, "max_tokens": 12, "extra_body": GREEDY,
                          "messages": QUESTION}
    full = _text(claude.messages.create(**kw))
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    cut = full[:full.index(stop)]
    if stream:
        with claude.messages.stream(stop_sequences=["@@never@@", stop], **kw) as s:
            msg = s.get_final_message()
    else:
        msg = claude.messages.create(stop_sequences=["@@never@@", stop], **kw)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert _text(msg) == cut
    # A sequence never produced leaves the answer whole.
    unhit = claude.messages.create(stop_sequences=["@@never@@"], **kw)
    assert _text(unhit) == full and unhit.stop_reason in ("end_turn", "max_tokens")
    assert unhit.stop_sequence is None


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_tool_use_both_ways(claude: anthropic.Anthropic, reference: str,
                            choice: dict[str, Any]) -> None:
    question: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = claude.messages.create(model=reference, max_tokens=40, extra_body=GREEDY,
                                 tools=[WEATHER], tool_choice=choice,  # type: ignore[arg-type]
                                 messages=question)
    assert msg.stop_reason == "tool_use"
    (call,) = [b for b in msg.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    assert isinstance(call.input, dict) and isinstance(call.input.get("city"), str)
    # The result goes back as a tool_result block; the model answers in text.
    answer = claude.messages.create(
        model=reference, max_tokens=8, extra_body=GREEDY, tools=[WEATHER],
        messages=[*question,
                  {"role": "assistant", "content": msg.content},  # type: ignore[list-item]
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": call.id,
                       "content": "Sunny, 24 degrees"}]}],
    )
    assert answer.type == "message" and answer.content


def test_tool_use_streams_input_json(claude: anthropic.Anthropic, reference: str) -> None:
    with claude.messages.stream(model=reference, max_tokens=40, extra_body=GREEDY,
                                tools=[WEATHER],  # type: ignore[list-item]
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Rome?"}]) as s:
        events = list(s)
        final = s.get_final_message()
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(e.delta.type == "input_json_delta" for e in deltas)
    joined = "".join(e.delta.partial_json for e in deltas)  # type: ignore[union-attr]
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.input == json.loads(joined) and isinstance(call.input.get("city"), str)
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_answers_in_text(claude: anthropic.Anthropic, reference: str) -> None:
    msg = claude.messages.create(model=reference, max_tokens=4, tools=[WEATHER],  # type: ignore[list-item]
                                 tool_choice={"type": "none"}, messages=HI)
    assert [b.type for b in msg.content] == ["text"] and msg.stop_reason != "tool_use"


def test_count_tokens(claude: anthropic.Anthropic, reference: str) -> None:
    short = claude.messages.count_tokens(model=reference, messages=HI)
    longer = claude.messages.count_tokens(model=reference, messages=QUESTION,
                                          system="Be brief.", tools=[WEATHER])  # type: ignore[list-item]
    assert 0 < short.input_tokens < longer.input_tokens


def test_unknown_model_is_a_404_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "no-such-model" in \
        body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=HI)


def test_bad_requests_are_400s_in_anthropics_shape(api: LiveApi, reference: str,
                                                   request: pytest.FixtureRequest) -> None:
    headers = {"x-api-key": api.key, "anthropic-version": "2023-06-01"}
    base_url = api.url_for(request)
    with httpx.Client(timeout=60, headers=headers) as http:
        missing = http.post(f"{base_url}/messages", json={"model": reference,
                                                          "messages": HI})
        bad_json = http.post(f"{base_url}/messages", content=b"{nope",
                             headers={"content-type": "application/json"})
        no_tools = http.post(f"{base_url}/messages", json={
            "model": reference, "max_tokens": 4, "messages": HI, "tool_choice": {"type": "any"}})
    for r in (missing, bad_json, no_tools):
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]


def test_sdk_errors_carry_anthropics_types(claude: anthropic.Anthropic, reference: str,
                                           api: LiveApi) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=reference, max_tokens=-1, messages=HI)
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    stranger = anthropic.Anthropic(base_url=str(claude.base_url).rstrip("/"),
                                   api_key="fns-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.create(model=reference, max_tokens=4, messages=HI)
