"""Constrained decoding in inline::reference, on the real SmolLM2-135M-Instruct GGUF.

response_format and tool_choice are enforced by an llguidance grammar on the logits:
these tests check the promises (parses, validates, a valid call every time, streams as
generated) on real model output, plus the pieces (the stream parser, the mask) alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import torch
from pydantic import ValidationError

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
)
from fnstack.errors import InvalidRequestError
from fnstack.spec import ProviderContext
from providers.inference.llama import SamplingParams
from providers.inference.llama.constrained import GrammarError, TokenMasker
from providers.inference.llama.gguf_loader import default_cache_dir
from providers.inference.llama.structured import (
    ArgumentsDelta,
    CallStart,
    TextDelta,
    ToolCallParser,
    json_grammar,
    tool_call_grammar,
)
from providers.inference.reference import ReferenceConfig, ReferenceProvider

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ADD = {
    "name": "add",
    "description": "Add two numbers",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
SEARCH = {
    "name": "search_flights",
    "description": "Find flights between two airports on a date",
    "parameters": {
        "type": "object",
        "properties": {
            "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["origin", "destination", "date", "passengers"],
        "additionalProperties": False,
    },
}
TOOLS = [WEATHER, ADD, SEARCH]
SCHEMA_OF = {t["name"]: t["parameters"] for t in TOOLS}


def _string(max_length: int = 40) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length}


def _object(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


# (prompt, schema): nested objects, arrays, enums, required and optional fields, bounds.
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Describe a person named Alice who is 31.",
     _object({"name": _string(), "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    ("Give the address of the Louvre museum.",
     _object({"name": _string(), "address": _object({
         "street": _string(), "city": _string(),
         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})})),
    ("What colour is the sky on a clear day?",
     _object({"color": {"enum": ["red", "green", "blue", "yellow"]},
              "confidence": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("List up to three tags for a blog post about baking bread.",
     _object({"tags": {"type": "array", "items": _string(20), "minItems": 1, "maxItems": 3}})),
    ("Make a shopping list with quantities for pancakes.",
     _object({"items": {"type": "array", "maxItems": 3, "items": _object(
         {"name": _string(20), "qty": {"type": "integer", "minimum": 1, "maximum": 12}})}})),
    ("Is the task 'write report' done? Add a note if you like.",
     _object({"task": _string(), "done": {"type": "boolean"},
              "note": {"anyOf": [_string(), {"type": "null"}]}}, required=["task", "done"])),
    ("Rate the movie Inception.",
     _object({"title": _string(), "stars": {"type": "integer", "minimum": 1, "maximum": 5},
              "genre": {"enum": ["action", "drama", "science fiction", "comedy"]}})),
    ("Give a 2x2 matrix of small integers.",
     _object({"matrix": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
         "type": "array", "minItems": 2, "maxItems": 2,
         "items": {"type": "integer", "minimum": -9, "maximum": 9}}}})),
    ("Describe a circle of radius 2 or a square of side 3.",
     _object({"shape": {"anyOf": [
         _object({"kind": {"const": "circle"}, "radius": {"type": "number"}}),
         _object({"kind": {"const": "square"}, "side": {"type": "number"}})]}})),
    ("Create a user profile for Bob with his settings.",
     _object({"user": _object({"id": {"type": "integer"}, "name": _string(),
                               "settings": _object({
                                   "theme": {"enum": ["light", "dark"]},
                                   "notifications": {"type": "boolean"}})}),
              "roles": {"type": "array", "items": {"enum": ["admin", "editor", "viewer"]},
                        "maxItems": 3}})),
]


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[ReferenceProvider]:
    # One engine for the module: max_batch_size 10 decodes the ten schemas in one batch.
    prov = ReferenceProvider(
        ReferenceConfig(max_seq_len=1024, max_batch_size=10),
        ProviderContext(provider_id="reference", cache_dir=default_cache_dir()),
    )
    await prov.warmup()
    yield prov
    await prov.shutdown()


def chat(content: str, **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 120,
        "temperature": 0,
    }
    return ChatCompletionRequest.model_validate({**body, **fields})


def tool_list(*tools: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": t} for t in tools]


async def complete(provider: ReferenceProvider, request: ChatCompletionRequest) -> ChatCompletion:
    result = await provider.chat_completion(request)
    assert isinstance(result, ChatCompletion)
    return result


def assert_valid_call(call: Any, allowed: set[str]) -> None:
    assert call.function.name in allowed
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])


# -- response_format -------------------------------------------------------------------


async def test_json_schema_ten_schemas_parse_and_validate(provider: ReferenceProvider) -> None:
    requests = [
        chat(prompt, max_tokens=160, response_format={
            "type": "json_schema",
            "json_schema": {"name": f"s{i}", "schema": schema, "strict": True},
        })
        for i, (prompt, schema) in enumerate(SCHEMAS)
    ]
    results = await asyncio.gather(*(complete(provider, r) for r in requests))
    for (_, schema), result in zip(SCHEMAS, results, strict=True):
        choice = result.choices[0]
        print(choice.message.content)
        assert choice.finish_reason == "stop", choice.message.content
        assert choice.message.content is not None
        jsonschema.validate(json.loads(choice.message.content), schema)


async def test_json_object_is_an_object_even_sampled(provider: ReferenceProvider) -> None:
    request = chat("Give me a JSON object describing a cat in two fields.", temperature=1.0,
                   seed=7, n=3, max_tokens=200, response_format={"type": "json_object"})
    result = await complete(provider, request)
    for choice in result.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content or ""), dict)
        else:  # cut by max_tokens: still a JSON object so far
            assert (choice.message.content or "").startswith("{")
    assert any(c.finish_reason == "stop" for c in result.choices)


async def test_unsupported_strict_schema_is_a_400(provider: ReferenceProvider) -> None:
    bad = {"type": "object", "properties": {"x": {"type": "string", "format": "no-such"}}}
    request = chat("hi", response_format={
        "type": "json_schema", "json_schema": {"name": "bad", "schema": bad, "strict": True}})
    with pytest.raises(InvalidRequestError) as err:
        await provider.chat_completion(request)
    assert err.value.param == "response_format"


# -- tools ----------------------------------------------------------------------------

TOOL_PROMPTS = [
    "What's the weather in Paris?",
    "Add 17 and 25.",
    "Find me a flight from JFK to LHR on 2026-12-24 for 2 people.",
    "Hello! How are you today?",
]


async def test_tool_choice_required_always_a_valid_call(provider: ReferenceProvider) -> None:
    requests = [chat(p, tools=tool_list(*TOOLS), tool_choice="required") for p in TOOL_PROMPTS]
    results = await asyncio.gather(*(complete(provider, r) for r in requests))
    for result in results:
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None and choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert call.id.startswith("call_")
            assert_valid_call(call, set(SCHEMA_OF))


async def test_named_tool_choice_always_calls_that_tool(provider: ReferenceProvider) -> None:
    requests = [
        chat(p, tools=tool_list(*TOOLS), parallel_tool_calls=False,
             tool_choice={"type": "function", "function": {"name": name}})
        for p in TOOL_PROMPTS for name in ("add", "search_flights")
    ]
    results = await asyncio.gather(*(complete(provider, r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1  # parallel_tool_calls=False: exactly one
        assert not isinstance(request.tool_choice, str | None)
        assert calls[0].function.name == request.tool_choice.function.name
        assert_valid_call(calls[0], {request.tool_choice.function.name})


async def test_auto_is_text_or_a_valid_call(provider: ReferenceProvider) -> None:
    requests = [chat(p, tools=tool_list(*TOOLS), max_tokens=60) for p in TOOL_PROMPTS]
    results = await asyncio.gather(*(complete(provider, r) for r in requests))
    kinds = set()
    for result in results:
        choice = result.choices[0]
        if choice.message.tool_calls:
            kinds.add("call")
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert_valid_call(call, set(SCHEMA_OF))
        else:
            kinds.add("text")
            assert choice.message.content and "<tool_call>" not in choice.message.content
    print("auto chose:", kinds)


async def test_tool_choice_errors(provider: ReferenceProvider) -> None:
    named = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(InvalidRequestError) as err:
        await provider.chat_completion(chat("x", tools=tool_list(ADD), tool_choice=named))
    assert err.value.param == "tool_choice"
    with pytest.raises(InvalidRequestError):
        await provider.chat_completion(chat("x", tool_choice="required"))


async def test_streaming_tool_call_deltas_arrive_while_generating(
    provider: ReferenceProvider,
) -> None:
    request = chat(TOOL_PROMPTS[2], tools=tool_list(*TOOLS), tool_choice="required", stream=True)
    stream = await provider.chat_completion(request)
    assert not isinstance(stream, ChatCompletion)
    engine = provider._engine
    assert engine is not None
    chunks: list[ChatCompletionChunk] = []
    first_delta_at = finished_at = None
    active_at_first_delta = 0
    start = time.perf_counter()
    async for chunk in stream:
        chunks.append(chunk)
        for c in chunk.choices:
            if c.delta.tool_calls and first_delta_at is None:
                first_delta_at = time.perf_counter() - start
                active_at_first_delta = engine.num_active
            if c.finish_reason is not None:
                finished_at = time.perf_counter() - start
                assert c.finish_reason == "tool_calls"
    assert first_delta_at is not None and finished_at is not None
    assert first_delta_at < finished_at
    assert active_at_first_delta >= 1  # the sequence was still generating
    deltas = [tc for ch in chunks for c in ch.choices for tc in (c.delta.tool_calls or [])]
    head = deltas[0]
    assert head.id and head.type == "function" and head.function and head.function.name
    fragments = [d.function.arguments for d in deltas[1:] if d.function]
    assert len(fragments) >= 3  # the arguments came piece by piece
    arguments = "".join(f or "" for f in fragments)
    jsonschema.validate(json.loads(arguments), SCHEMA_OF[head.function.name])


async def test_streaming_auto_text_streams_as_content(provider: ReferenceProvider) -> None:
    stream = await provider.chat_completion(
        chat("Say hello in one short sentence.", tools=tool_list(ADD), stream=True,
             max_tokens=20))
    assert not isinstance(stream, ChatCompletion)
    pieces = [c.delta.content for ch in [x async for x in stream] for c in ch.choices
              if c.delta.content]
    assert len(pieces) >= 2 and "<tool_call>" not in "".join(pieces)


# -- continuous batching: constrained rows next to free ones ------------------------------


# float32 on CPU takes the numpy path; any other dtype (bf16 on CUDA) the torch one.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_touches_only_constrained_rows(
    provider: ReferenceProvider, dtype: torch.dtype
) -> None:
    engine = provider._engine
    assert engine is not None
    grammar = json_grammar({"type": "object"})
    matcher = engine.grammars.matcher(grammar)
    masker = TokenMasker(engine.args.vocab_size, 4)
    logits = torch.randn(3, engine.args.vocab_size, dtype=dtype)
    before = logits.clone()
    masker.apply(logits, [1], [matcher])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    finite = torch.isfinite(logits[1])
    assert torch.equal(logits[1][finite], before[1][finite])  # allowed ones unchanged
    allowed = finite.nonzero().flatten().tolist()
    # At the start of a JSON object only tokens starting with "{" are allowed.
    texts = {engine.decode([t]) for t in allowed}
    assert texts and all(t.startswith("{") for t in texts), sorted(texts)[:10]


async def test_free_and_constrained_requests_share_a_batch(provider: ReferenceProvider) -> None:
    free = chat("Write one sentence about the sea.", max_tokens=24)
    shaped = chat("Describe a person named Alice who is 31.", response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS[0][1]}})
    alone = await complete(provider, free)
    together = await asyncio.gather(complete(provider, free), complete(provider, shaped))
    free_text = together[0].choices[0].message.content or ""
    assert not free_text.lstrip().startswith("{")
    assert free_text.split()[:3] == (alone.choices[0].message.content or "").split()[:3]
    jsonschema.validate(json.loads(together[1].choices[0].message.content or ""), SCHEMAS[0][1])


async def test_engine_stops_when_the_grammar_is_complete(provider: ReferenceProvider) -> None:
    from llguidance import LLMatcher

    engine = provider._engine
    assert engine is not None
    prompt = engine.apply_chat_template([{"role": "user", "content": "Pick a number."}])
    grammar = LLMatcher.grammar_from_regex("[0-9]{3}")
    deltas = [d async for d in engine.generate(
        prompt, SamplingParams(grammar=grammar, max_tokens=50, temperature=1.0, seed=1))]
    text = "".join(d.text for d in deltas)
    assert len(text) == 3 and text.isdigit()
    # Ended by the grammar itself: no end-of-turn token had to be sampled.
    assert deltas[-1].finish_reason == "stop"
    usage = deltas[-1].usage
    assert usage is not None and usage.completion_tokens == len(engine.encode(text))


def test_engine_rejects_a_bad_grammar_at_once(provider: ReferenceProvider) -> None:
    from llguidance import LLMatcher

    engine = provider._engine
    assert engine is not None
    with pytest.raises(GrammarError):
        engine.generate("hi", SamplingParams(grammar=LLMatcher.grammar_from_lark("start: (")))


# -- the stream parser alone -------------------------------------------------------------

CALLS_TEXT = (
    '<tool_call>{"name": "add", "arguments": {"a": 1, "b": {"c": "}</tool_call>"}}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_parser_any_split_gives_the_same_calls(step: int) -> None:
    parser = ToolCallParser({"add", "get_weather"})
    events: list[Any] = []
    for i in range(0, len(CALLS_TEXT), step):
        events += parser.feed(CALLS_TEXT[i : i + step])
    events += parser.finish()
    assert [e.name for e in events if isinstance(e, CallStart)] == ["add", "get_weather"]
    assert parser.arguments == ['{"a": 1, "b": {"c": "}</tool_call>"}}', '{"city": "Rome"}']
    assert not any(isinstance(e, TextDelta) for e in events)
    joined = ["", ""]
    for e in events:
        if isinstance(e, ArgumentsDelta):
            joined[e.index] += e.fragment
    assert joined == parser.arguments


def test_parser_text_and_held_back_prefix() -> None:
    parser = ToolCallParser({"add"})
    assert parser.feed("<tool") == []  # could still become a call
    assert parser.feed("s are great") == [TextDelta("<tools are great")]
    assert parser.finish() == []
    parser = ToolCallParser({"add"})
    assert parser.feed("Hello <tool_call>") == [TextDelta("Hello <tool_call>")]


def test_auto_grammar_allows_text_or_a_well_formed_call(provider: ReferenceProvider) -> None:
    engine = provider._engine
    assert engine is not None
    grammar = tool_call_grammar([ADD, WEATHER], required=False)

    def accepts(text: str) -> bool:
        matcher = engine.grammars.matcher(grammar)
        return matcher.consume_tokens(engine.encode(text)) and matcher.is_accepting()

    assert accepts("Just some text, with <b>markup</b> and { braces.")
    assert accepts('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2.5}}</tool_call>')
    assert not accepts('<tool_call>{"name": "add", "arguments": {"a": "one"}}</tool_call>')
    assert not accepts('<tool_call>{"name": "nope", "arguments": {}}</tool_call>')
    assert not accepts('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}')


def test_grammars_compile() -> None:
    assert json_grammar(SCHEMAS[1][1], strict=True)
    assert tool_call_grammar([ADD, WEATHER], required=False, text_json=True,
                             text_schema=SCHEMAS[0][1])


# -- limits and fidelity -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n", "top_logprobs"])
def test_integer_fields_reject_floats(field: str) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], field: 1073741825.0})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 2.0})


def test_default_max_tokens_is_the_configured_cap(provider: ReferenceProvider) -> None:
    assert ReferenceConfig().default_max_tokens == 512
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert provider._params(request, 0).max_tokens == provider.config.default_max_tokens
    capped = ReferenceProvider(ReferenceConfig(default_max_tokens=7), provider.context)
    assert capped._params(request, 0).max_tokens == 7


async def test_legacy_top_logprobs_include_the_sampled_token(
    provider: ReferenceProvider,
) -> None:
    request = CompletionRequest.model_validate({
        "model": "m", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 2.0,
        "seed": 3, "logprobs": 1})
    result = await provider.completion(request)
    assert isinstance(result, Completion)
    lp = result.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == 24
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == logprob
    # At temperature 2 some sampled tokens are not the most likely one: then both show.
    assert any(len(top) == 2 for top in lp.top_logprobs)
    # Streamed, the same tokens come with the same logprobs, chunk by chunk.
    stream = await provider.completion(request.model_copy(update={"stream": True}))
    assert not isinstance(stream, Completion)
    chunks = [c async for c in stream]
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [t for s in streamed for t in s.top_logprobs] == lp.top_logprobs
    assert [t for s in streamed for t in s.text_offset] == lp.text_offset
