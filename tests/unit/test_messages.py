"""The Messages API's translation to and from chat completions, without a server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fnstack.api.inference import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChunkChoice,
    ToolCallDelta,
    ToolCallDeltaFunction,
    Usage,
)
from fnstack.api.messages import CountTokensRequest, MessagesRequest
from fnstack.services.messages import (
    _EventStream,
    _StopScanner,
    estimate_tokens,
    to_chat_request,
)


def test_stop_scanner_holds_back_a_possible_start_and_cuts_at_the_first_match() -> None:
    s = _StopScanner(["END", "##"])
    assert s.feed("Hello E") == ("Hello ", None)  # "E" could start "END"
    assert s.feed("N") == ("", None)
    assert s.feed("Dless") == ("", "END")
    s = _StopScanner(["END"])
    assert s.feed("Eve") == ("Eve", None)
    assert s.feed("n E") == ("n ", None)
    assert s.flush() == "E"
    assert _StopScanner([]).feed("abc") == ("abc", None)


def test_request_translation() -> None:
    req = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 5, "top_k": 3, "temperature": 0.5,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "metadata": {"user_id": "u1"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAAA"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                {"type": "text", "text": "and?"}]},
        ],
    })
    chat = to_chat_request(req, stream=False)
    dumped = chat.model_dump(exclude_none=True)
    roles = [m["role"] for m in dumped["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert dumped["messages"][0]["content"] == "Be brief.\nBe kind."
    image = dumped["messages"][1]["content"][1]
    assert image["image_url"]["url"] == "data:image/png;base64,AAAA"
    call = dumped["messages"][2]["tool_calls"][0]
    assert call["id"] == "toolu_1" and json.loads(call["function"]["arguments"]) == {"a": 1}
    assert dumped["messages"][3] == {"role": "tool", "content": "42", "tool_call_id": "toolu_1"}
    assert dumped["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert dumped["parallel_tool_calls"] is False and dumped["user"] == "u1"
    assert dumped["top_k"] == 3 and "stop" not in dumped and "stream" not in dumped
    # Only what was given is set: remote providers relay the set fields.
    assert "top_p" not in chat.model_fields_set


async def _chunks(items: list[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    for c in items:
        yield c


def _chunk(content: str | None = None, tool: ToolCallDelta | None = None,
           finish: Any = None, usage: Usage | None = None) -> ChatCompletionChunk:
    choices = [] if usage else [ChunkChoice(index=0, delta=ChoiceDelta(
        content=content, tool_calls=[tool] if tool else None), finish_reason=finish)]
    return ChatCompletionChunk(id="chatcmpl-x", model="m", choices=choices, usage=usage)


async def _run(items: list[ChatCompletionChunk], stops: list[str],
               charged: list[int] | None = None) -> tuple[list[Any], Any]:
    gen = _chunks(items[1:])

    async def on_cut(tokens: int) -> None:
        assert charged is not None
        charged.append(tokens)

    stream = _EventStream(gen, items[0], "m", stops, 7, on_cut)  # type: ignore[arg-type]
    events = [e async for e in stream.events()]
    return events, stream.message()


async def test_events_for_text_then_a_tool_call() -> None:
    items = [
        _chunk("Let me "), _chunk("check."),
        _chunk(tool=ToolCallDelta(index=0, id="call_1", function=ToolCallDeltaFunction(
            name="f", arguments='{"a"'))),
        _chunk(tool=ToolCallDelta(index=0, function=ToolCallDeltaFunction(
            name="f", arguments=": 1}"))),
        _chunk(finish="tool_calls"),
        _chunk(usage=Usage(prompt_tokens=11, completion_tokens=6, total_tokens=17)),
    ]
    events, message = await _run(items, [])
    names = [n for n, _ in events]
    assert names == ["message_start", "ping",
                     "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f",
                                             "input": {}}
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a"'}
    assert events[10][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[10][1]["usage"] == {"input_tokens": 11, "output_tokens": 6}
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"a": 1}


async def test_a_stop_sequence_split_across_chunks_is_never_sent() -> None:
    items = [_chunk("one tw"), _chunk("o thr"), _chunk("ee four"), _chunk(finish="stop")]
    charged: list[int] = []
    events, message = await _run(items, ["three"], charged)
    sent = "".join(b["delta"]["text"] for n, b in events if n == "content_block_delta")
    assert sent == "one two "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "three"
    # No usage from the provider: the estimate and a count of the chunks stand in.
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 3
    # Cut short, the stream never reaches the inference service's charge: this one does.
    assert charged == [10]


def test_count_estimate_grows_with_the_prompt() -> None:
    small = CountTokensRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "Hi"}]})
    large = CountTokensRequest.model_validate({"model": "m", "system": "Be brief.",
                                               "messages": [{"role": "user",
                                                             "content": "Hi " * 100}]})
    assert 0 < estimate_tokens(small) < estimate_tokens(large)
