"""Guardrails on chat completions: shields run on the input and on the output.

A request names its shields in ``extra_body`` (the openai SDK sends them as top-level
fields), in Llama Stack's spelling::

    guardrails: ["pii", {"type": "llama-guard"}]   # input and output (Responses' field)
    shields: ["pii"]                               # the same
    input_shields: [...] / output_shields: [...]   # one direction only (Agents' fields)

These fields are taken off the request before it goes to the model. Input shields see
the conversation (user, assistant and tool messages), not system/developer instructions.

A blocked input is answered as OpenAI answers content it will not produce: a normal
``chat.completion`` whose message has ``content: null``, ``refusal`` = the shield's
user message, and ``finish_reason: "content_filter"`` (no model call is made; usage is
zero). A stream gets the same as chunks: the role, a ``refusal`` delta, the finish.

Output is checked after generation; a violation replaces the choice's content with the
refusal, ``finish_reason: "content_filter"``. A stream is checked as it goes: text is
held back until a sentence ends (or ``WINDOW`` characters gather) and then the output
so far is checked; only checked text is sent. A violation ends the stream there: a
last chunk with the ``refusal`` delta and ``finish_reason: "content_filter"``, and no
further text. Only ``error``-level violations block; ``warn`` and ``info`` pass.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fnstack.api.inference import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceDelta,
    ChunkChoice,
    Message,
    Usage,
)
from fnstack.errors import InvalidRequestError
from fnstack.services.inference import ChatStream, new_completion_id
from fnstack.storage import Owner

if TYPE_CHECKING:
    from fnstack.api.safety import SafetyViolation, Shield
    from fnstack.services.safety import SafetyService

__all__ = ["FIELDS", "WINDOW", "Guard", "guarded", "requested"]

FIELDS = ("guardrails", "shields", "input_shields", "output_shields")
# Most characters held back before a check when no sentence has ended.
WINDOW = 200
_BOUNDARY = re.compile("[.!?;:\n\u3002\uff01\uff1f]")  # and CJK full stops

Generate = Callable[[ChatCompletionRequest, Owner], Awaitable["ChatCompletion | ChatStream"]]


@dataclass(frozen=True)
class Guard:
    input: list[str]
    output: list[str]


def _ids(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidRequestError(f"{name} must be a list of shield ids", param=name)
    out: list[str] = []
    for i, item in enumerate(value):
        ident = item.get("type") if isinstance(item, dict) else item
        if not isinstance(ident, str) or not ident:
            raise InvalidRequestError(
                f"{name}[{i}] must be a shield id or {{\"type\": <shield id>}}",
                param=f"{name}[{i}]",
            )
        if ident not in out:
            out.append(ident)
    return out


def requested(request: ChatCompletionRequest) -> tuple[Guard | None, ChatCompletionRequest]:
    """The guard a request asks for (None: none) and the request without its fields."""
    extra = request.model_extra or {}
    if not any(k in extra for k in FIELDS):
        return None, request
    both = _ids(extra.get("guardrails"), "guardrails") + _ids(extra.get("shields"), "shields")
    guard = Guard(
        input=list(dict.fromkeys(both + _ids(extra.get("input_shields"), "input_shields"))),
        output=list(dict.fromkeys(both + _ids(extra.get("output_shields"), "output_shields"))),
    )
    stripped = request.model_copy()
    stripped.__pydantic_extra__ = {k: v for k, v in extra.items() if k not in FIELDS}
    if not guard.input and not guard.output:
        return None, stripped
    return guard, stripped


async def guarded(
    safety: SafetyService | None,
    request: ChatCompletionRequest,
    user: Owner,
    generate: Generate,
) -> ChatCompletion | ChatStream:
    """``generate(request, user)`` under the guardrails the request names."""
    guard, request = requested(request)
    if guard is None:
        return await generate(request, user)
    if safety is None:
        raise InvalidRequestError("guardrails need the safety API, which this deployment "
                                  "does not serve", param="guardrails")
    for shield_id in dict.fromkeys(guard.input + guard.output):
        await safety.resolve(shield_id, user, param="guardrails")  # unknown: 404 now
    # The conversation, not the deployment's own instructions: a system prompt that
    # names a support address must not block every request.
    said = [m for m in request.messages if m.role not in ("system", "developer")]
    if guard.input and said:
        hit = await safety.check(guard.input, said, user)
        if hit is not None:
            return _refusal(request, *hit)
    result = await generate(request, user)
    if not guard.output:
        return result
    if isinstance(result, ChatStream):
        return await _guard_stream(result, request, guard.output, safety, user)
    for choice in result.choices:
        text = choice.message.content or ""
        if not text:
            continue
        hit = await safety.check(guard.output, [_assistant(text)], user)
        if hit is not None:
            choice.message.content = None
            choice.message.refusal = _message(*hit)
            choice.message.tool_calls = None
            choice.finish_reason = "content_filter"
    return result


def _assistant(text: str) -> Message:
    return AssistantMessage(role="assistant", content=text)


def _message(shield: Shield, violation: SafetyViolation) -> str:
    return violation.user_message or f"The {shield.identifier} guardrail blocked this content."


def _refusal(request: ChatCompletionRequest, shield: Shield,
             violation: SafetyViolation) -> ChatCompletion | ChatStream:
    cid, text = new_completion_id(), _message(shield, violation)
    if not request.stream:
        return ChatCompletion(
            id=cid, model=request.model,
            choices=[ChatChoice(index=i, message=ChatCompletionMessage(refusal=text),
                                finish_reason="content_filter")
                     for i in range(request.n or 1)],
            usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
        )

    async def chunks() -> AsyncGenerator[ChatCompletionChunk, None]:
        n = request.n or 1
        yield _chunk(cid, request.model,
                     [ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))
                      for i in range(n)])
        yield _chunk(cid, request.model,
                     [ChunkChoice(index=i, delta=ChoiceDelta(refusal=text),
                                  finish_reason="content_filter") for i in range(n)])
        usage = _chunk(cid, request.model, [])
        usage.usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        yield usage

    return ChatStream(chunks(), request, request.model, cid)


def _chunk(cid: str, model: str, choices: list[ChunkChoice]) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=cid, model=model, created=int(time.time()), choices=choices)


async def _guard_stream(
    inner: ChatStream, request: ChatCompletionRequest, shields: list[str],
    safety: SafetyService, user: Owner,
) -> ChatStream:
    try:
        first = await anext(inner)
    except StopAsyncIteration:
        return inner
    source = _checked(first, inner, shields, safety, user)
    return ChatStream(source, request, first.model, first.id)


async def _checked(
    first: ChatCompletionChunk, inner: AsyncIterator[ChatCompletionChunk],
    shields: list[str], safety: SafetyService, user: Owner,
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """The chunks of ``inner``, each let through once the text up to it is checked."""
    held: list[ChatCompletionChunk] = []
    passed: dict[int, str] = {}  # choice index -> text checked and sent
    pending: dict[int, str] = {}  # choice index -> text held back
    seen: set[int] = set()  # choice indexes
    sent_finish: set[int] = set()  # choices whose finish the client already has

    async def blocked() -> tuple[Shield, SafetyViolation] | None:
        for index, text in pending.items():
            if text:
                hit = await safety.check(shields, [_assistant(passed.get(index, "") + text)],
                                         user)
                if hit is not None:
                    return hit
        return None

    async def chunks() -> AsyncGenerator[ChatCompletionChunk, None]:
        yield first
        async for chunk in inner:
            yield chunk

    stream = chunks()
    try:
        async for chunk in stream:
            text_here = False
            ends = False
            for c in chunk.choices:
                seen.add(c.index)
                if c.delta.content:
                    pending[c.index] = pending.get(c.index, "") + c.delta.content
                    text_here = True
                if c.finish_reason is not None:
                    ends = True
            if not held and not text_here and not ends:
                yield chunk  # nothing to check before it: the role chunk, tool deltas
                continue
            held.append(chunk)
            gathered = any(_BOUNDARY.search(t) or len(t) >= WINDOW for t in pending.values())
            if not (ends or gathered):
                continue
            hit = await blocked()
            if hit is not None:
                yield _stop(chunk, seen - sent_finish, *hit)
                return
            for index, text in pending.items():
                passed[index] = passed.get(index, "") + text
            pending.clear()
            for h in held:
                sent_finish.update(x.index for x in h.choices if x.finish_reason is not None)
                yield h
            held.clear()
        if held:
            hit = await blocked()
            if hit is not None:
                yield _stop(held[-1], seen - sent_finish, *hit)
                return
            for h in held:
                yield h
    finally:
        await stream.aclose()
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


def _stop(last: ChatCompletionChunk, open_choices: set[int], shield: Shield,
          violation: SafetyViolation) -> ChatCompletionChunk:
    text = _message(shield, violation)
    return _chunk(last.id, last.model, [
        ChunkChoice(index=i, delta=ChoiceDelta(refusal=text), finish_reason="content_filter")
        for i in sorted(open_choices or {0})
    ])
