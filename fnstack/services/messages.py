"""Anthropic's Messages API over the inference service.

A Messages request is translated into a chat completion request, runs through the
same inference service (routing, access policy, quotas, every provider), and the
answer is translated back: content blocks, ``stop_reason``, usage, and for a stream
Anthropic's events (message_start, content_block_start/delta/stop, message_delta,
message_stop, with a ping after the start).

Stop sequences are matched here, not by the provider: OpenAI's ``finish_reason:
"stop"`` does not say whether the model ended its turn or hit a sequence, and
Anthropic's ``stop_reason`` must. So a request with ``stop_sequences`` streams from the
provider, the text is scanned as it arrives (holding back what could be the start of a
sequence), and the provider's stream is closed at the first match.

Messages are not stored (Anthropic's API keeps no history); they are not chat
completions of the stored history either.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from fnstack.api.inference import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    JSONSchema,
    NamedFunction,
    NamedToolChoice,
    ResponseFormatJSONSchema,
    StreamOptions,
    SystemMessage,
    TextPart,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from fnstack.api.messages import (
    ContentBlock,
    CountTokensRequest,
    ImageBlockParam,
    Message,
    MessagesRequest,
    StopReason,
    TextBlock,
    TextBlockParam,
    TokenCount,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    Usage,
    new_message_id,
)
from fnstack.errors import InvalidRequestError
from fnstack.quotas import Quotas
from fnstack.records import check_storable
from fnstack.routing import RoutingEntry
from fnstack.services import Service, ServiceContext, ServiceSpec
from fnstack.services.inference import ChatStream, InferenceService
from fnstack.services.models import ModelsService
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["Event", "MessagesService", "estimate_tokens", "spec", "to_chat_request"]

# One SSE event: its name and its JSON body.
Event = tuple[str, dict[str, Any]]

# The documented estimate where the provider offers no tokenizer: about four bytes of
# UTF-8 per token (English prose on BPE vocabularies), plus the chat template's few
# tokens around each message and before the reply, and a flat cost per image.
BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
TOKENS_PER_IMAGE = 85


# --- Anthropic -> chat completions ----------------------------------------------------------


def _text(blocks: str | list[TextBlockParam] | None) -> str:
    if blocks is None:
        return ""
    return blocks if isinstance(blocks, str) else "\n".join(b.text for b in blocks)


def _image(block: ImageBlockParam) -> ImagePart:
    src = block.source
    url = src.url if src.type == "url" else f"data:{src.media_type};base64,{src.data}"
    return ImagePart(type="image_url", image_url=ImageURL(url=url))


def _tool_result_text(block: ToolResultBlockParam) -> str:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        # A chat tool message holds text only: images in a tool result are dropped.
        text = "\n".join(b.text for b in content if isinstance(b, TextBlockParam))
    return f"Error: {text}" if block.is_error else text


def _messages(request: MessagesRequest | CountTokensRequest) -> list[Any]:
    out: list[Any] = []
    system = _text(request.system)
    if system:
        out.append(SystemMessage(role="system", content=system))
    for i, m in enumerate(request.messages):
        blocks = [TextBlockParam(type="text", text=m.content)] if isinstance(m.content, str) \
            else m.content
        if m.role == "assistant":
            texts, calls = [], []
            for b in blocks:
                if isinstance(b, TextBlockParam):
                    texts.append(b.text)
                elif isinstance(b, ToolUseBlockParam):
                    calls.append(ToolCall(id=b.id, function=FunctionCall(
                        name=b.name, arguments=json.dumps(b.input))))
                else:
                    raise InvalidRequestError(
                        f"messages.{i}: an assistant message cannot hold a {b.type} block",
                        param=f"messages.{i}.content",
                    )
            out.append(AssistantMessage(role="assistant", content="".join(texts) or None,
                                        tool_calls=calls or None))
            continue
        parts: list[TextPart | ImagePart] = []
        for b in blocks:
            if isinstance(b, ToolResultBlockParam):
                # Anthropic puts tool results first in the user turn; chat completions
                # answer each call with its own tool message, right after the calls.
                out.append(ToolMessage(role="tool", tool_call_id=b.tool_use_id,
                                       content=_tool_result_text(b)))
            elif isinstance(b, TextBlockParam):
                parts.append(TextPart(type="text", text=b.text))
            elif isinstance(b, ImageBlockParam):
                parts.append(_image(b))
            else:
                raise InvalidRequestError(
                    f"messages.{i}: a user message cannot hold a {b.type} block",
                    param=f"messages.{i}.content",
                )
        if parts:
            only_text = all(isinstance(p, TextPart) for p in parts)
            content: Any = "".join(p.text for p in parts if isinstance(p, TextPart)) \
                if only_text else parts
            out.append(UserMessage(role="user", content=content))
    return out


def _tools(request: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    if not request.tools:
        if request.tool_choice is not None and request.tool_choice.type in ("any", "tool"):
            raise InvalidRequestError(
                f"tool_choice {request.tool_choice.type!r} needs at least one tool in `tools`",
                param="tool_choice",
            )
        return {}
    tools = [Tool(function=FunctionDefinition(name=t.name, description=t.description,
                                              parameters=t.input_schema))
             for t in request.tools]
    out: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "auto":
            out["tool_choice"] = "auto"
        elif choice.type == "any":
            out["tool_choice"] = "required"
        elif choice.type == "none":
            out["tool_choice"] = "none"
        else:
            out["tool_choice"] = NamedToolChoice(function=NamedFunction(name=choice.name))
        if getattr(choice, "disable_parallel_tool_use", None):
            out["parallel_tool_calls"] = False
    return out


def to_chat_request(request: MessagesRequest, *, stream: bool) -> ChatCompletionRequest:
    """The chat completion request that serves ``request`` (stop sequences left out:
    they are matched here)."""
    extra: dict[str, Any] = {}
    if request.top_k is not None:
        extra["top_k"] = request.top_k  # relayed to providers that take it (vLLM, llama.cpp)
    fmt = request.output_config.format if request.output_config else None
    if fmt is not None:
        extra["response_format"] = ResponseFormatJSONSchema(
            type="json_schema",
            json_schema=JSONSchema(name="output", schema=fmt.schema_, strict=True),
        )
    try:
        return _chat_request(request, stream, extra)
    except ValidationError as exc:
        # What Anthropic's schema allows and chat completions do not (a rare corner).
        raise InvalidRequestError(
            f"this request cannot be served as a chat completion: {exc.errors()[0]['msg']}"
        ) from None


def _chat_request(request: MessagesRequest, stream: bool,
                  extra: dict[str, Any]) -> ChatCompletionRequest:
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(request),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p or None,  # Anthropic allows 0, chat completions do not
        "user": request.metadata.user_id if request.metadata else None,
        "stream": stream or None,
        "stream_options": StreamOptions(include_usage=True) if stream else None,
        **_tools(request),
        **extra,
    }
    # Only what was given: remote providers relay the fields that are set, and an
    # explicit null is not the same as an absent field to every upstream.
    return ChatCompletionRequest(**{k: v for k, v in fields.items() if v is not None})


# --- chat completions -> Anthropic ------------------------------------------------------------


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    # Anthropic's tool input is an object: anything else keeps the model's raw text.
    return value if isinstance(value, dict) else {"arguments": arguments}


def _stop_reason(finish: str | None, has_tools: bool) -> StopReason:
    if finish == "length":
        return "max_tokens"
    if finish == "tool_calls" or has_tools:
        return "tool_use"
    return "end_turn"


def _tool_id(provided: str | None) -> str:
    return provided or f"toolu_{secrets.token_hex(12)}"


def to_message(completion: ChatCompletion, model: str, input_estimate: int) -> Message:
    choice = completion.choices[0]
    blocks: list[ContentBlock] = []
    if choice.message.content:
        blocks.append(TextBlock(text=choice.message.content))
    for call in choice.message.tool_calls or []:
        blocks.append(ToolUseBlock(id=_tool_id(call.id), name=call.function.name,
                                   input=_input(call.function.arguments)))
    usage = completion.usage
    return Message(
        id=_message_id(completion.id),
        content=blocks,
        model=model,
        stop_reason=_stop_reason(choice.finish_reason, bool(choice.message.tool_calls)),
        usage=Usage(input_tokens=usage.prompt_tokens if usage else input_estimate,
                    output_tokens=usage.completion_tokens if usage else 0),
    )


def _message_id(completion_id: str) -> str:
    suffix = completion_id.removeprefix("chatcmpl-")
    return f"msg_{suffix}" if suffix else new_message_id()


class _StopScanner:
    """Finds the first stop sequence in streamed text, holding back a tail that could be
    the start of one so that no part of a sequence is ever sent."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """(text safe to send now, the sequence matched or None)."""
        if not self.stops:
            return text, None
        buf = self.held + text
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            at, stop = min(hits)
            self.held = ""
            return buf[:at], stop
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], None

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass
class _Turn:
    """The answer as it streams: blocks by position, tool calls by the provider's index."""

    index: int = -1
    open_kind: str | None = None
    open_tool: int | None = None
    tools: dict[int, int] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    output_chunks: int = 0


class _EventStream:
    """Anthropic's events from a chat completion stream."""

    def __init__(self, chunks: ChatStream, first: ChatCompletionChunk, model: str,
                 stops: list[str], input_estimate: int,
                 on_cut: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.chunks = chunks
        # A stream cut at a stop sequence never ends normally, so the inference service
        # charges no tokens for it: this does, with the best count at hand.
        self.on_cut = on_cut
        self.first: ChatCompletionChunk | None = first
        self.model = model
        self.scanner = _StopScanner(stops)
        self.input_estimate = input_estimate
        self.turn = _Turn()
        self.message_id = _message_id(first.id)
        self.stop_sequence: str | None = None
        self.finish: str | None = None
        self.usage: tuple[int, int] | None = None

    async def _source(self) -> AsyncIterator[ChatCompletionChunk]:
        if self.first is not None:
            first, self.first = self.first, None
            yield first
        async for chunk in self.chunks:
            yield chunk

    def _close_block(self) -> list[Event]:
        t = self.turn
        if t.open_kind is None:
            return []
        t.open_kind, t.open_tool = None, None
        return [("content_block_stop", {"type": "content_block_stop", "index": t.index})]

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        t = self.turn
        out: list[Event] = []
        if t.open_kind != "text":
            out += self._close_block()
            t.index += 1
            t.open_kind = "text"
            t.texts[t.index] = []
            out.append(("content_block_start", {
                "type": "content_block_start", "index": t.index,
                "content_block": {"type": "text", "text": ""}}))
        t.texts[t.index].append(text)
        out.append(("content_block_delta", {
            "type": "content_block_delta", "index": t.index,
            "delta": {"type": "text_delta", "text": text}}))
        return out

    def _tool(self, tc_index: int, tc_id: str | None, name: str | None,
              arguments: str | None) -> list[Event]:
        t = self.turn
        out: list[Event] = []
        if tc_index not in t.tools:
            out += self._text(self.scanner.flush())
            out += self._close_block()
            t.index += 1
            t.tools[tc_index] = t.index
            t.open_kind, t.open_tool = "tool_use", tc_index
            call = {"id": _tool_id(tc_id), "name": name or "", "arguments": ""}
            t.calls[t.index] = call
            out.append(("content_block_start", {
                "type": "content_block_start", "index": t.index,
                "content_block": {"type": "tool_use", "id": call["id"], "name": call["name"],
                                  "input": {}}}))
        if arguments:
            block = t.tools[tc_index]
            t.calls[block]["arguments"] += arguments
            out.append(("content_block_delta", {
                "type": "content_block_delta", "index": block,
                "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return out

    def _start(self) -> list[Event]:
        return [
            ("message_start", {"type": "message_start", "message": {
                "id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}}),
            ("ping", {"type": "ping"}),
        ]

    async def events(self) -> AsyncIterator[Event]:
        for event in self._start():
            yield event
        try:
            async for chunk in self._source():
                if chunk.usage is not None:
                    self.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for c in chunk.choices[:1]:
                    out: list[Event] = []
                    if c.delta.content:
                        self.turn.output_chunks += 1
                        safe, hit = self.scanner.feed(c.delta.content)
                        out += self._text(safe)
                        if hit is not None:
                            self.stop_sequence = hit
                    for tc in c.delta.tool_calls or []:
                        self.turn.output_chunks += 1
                        fn = tc.function
                        out += self._tool(tc.index, tc.id, fn.name if fn else None,
                                          fn.arguments if fn else None)
                    if c.finish_reason is not None:
                        self.finish = c.finish_reason
                    for event in out:
                        yield event
                if self.stop_sequence is not None:
                    break
        finally:
            await self.chunks.aclose()
        if self.stop_sequence is not None and self.on_cut is not None:
            spent = self.usage or (self.input_estimate, self.turn.output_chunks)
            await self.on_cut(sum(spent))
        for event in self._end():
            yield event

    def _end(self) -> list[Event]:
        out = self._text(self.scanner.flush()) + self._close_block()
        if self.stop_sequence is not None:
            reason: StopReason = "stop_sequence"
        else:
            reason = _stop_reason(self.finish, bool(self.turn.calls))
        input_tokens, output_tokens = self.usage or (self.input_estimate,
                                                     self.turn.output_chunks)
        out.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": self.stop_sequence},
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def message(self) -> Message:
        """The whole message, once ``events()`` has run to its end."""
        blocks: list[ContentBlock] = []
        for index in sorted({*self.turn.texts, *self.turn.calls}):
            if index in self.turn.texts:
                blocks.append(TextBlock(text="".join(self.turn.texts[index])))
            else:
                call = self.turn.calls[index]
                blocks.append(ToolUseBlock(id=call["id"], name=call["name"],
                                           input=_input(call["arguments"])))
        end = self._end()[-2][1]
        return Message(id=self.message_id, content=blocks, model=self.model,
                       stop_reason=end["delta"]["stop_reason"],
                       stop_sequence=self.stop_sequence, usage=Usage(**end["usage"]))


# --- counting tokens -----------------------------------------------------------------


def _rendered(request: MessagesRequest | CountTokensRequest) -> tuple[str, int, int]:
    """(the text a model reads, the number of messages, the number of images)."""
    texts: list[str] = [_text(request.system)]
    images = 0
    for m in request.messages:
        if isinstance(m.content, str):
            texts.append(m.content)
            continue
        for b in m.content:
            if isinstance(b, TextBlockParam):
                texts.append(b.text)
            elif isinstance(b, ImageBlockParam):
                images += 1
            elif isinstance(b, ToolUseBlockParam):
                texts.append(f"{b.name} {json.dumps(b.input)}")
            else:
                texts.append(_tool_result_text(b))
                if isinstance(b.content, list):
                    images += sum(isinstance(p, ImageBlockParam) for p in b.content)
    for t in request.tools or []:
        texts.append(json.dumps({"name": t.name, "description": t.description,
                                 "parameters": t.input_schema}))
    return "\n".join(t for t in texts if t), len(request.messages) + bool(request.system), images


def estimate_tokens(request: MessagesRequest | CountTokensRequest) -> int:
    text, messages, images = _rendered(request)
    return (math.ceil(len(text.encode()) / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * messages
            + TOKENS_PER_IMAGE * images + TOKENS_PER_REPLY)


def _check_text(request: MessagesRequest | CountTokensRequest) -> None:
    # Before anything encodes the text (the estimate, a tokenizer): lone surrogates are 400.
    check_storable(request.system, "system")
    check_storable(request.messages, "messages")
    check_storable(request.tools, "tools")
    if isinstance(request, MessagesRequest):
        check_storable(request.stop_sequences, "stop_sequences")


# --- the service ---------------------------------------------------------------------


class MessagesService(Service):
    def __init__(self, inference: InferenceService, models: ModelsService,
                 quotas: Quotas | None = None) -> None:
        self.inference = inference
        self.models = models
        self.quotas = quotas

    async def create(self, request: MessagesRequest, user: Owner) -> Message | _EventStream:
        """The message, or (``stream: true``) the stream whose ``events()`` the route sends.

        Anything that fails before the first token (unknown model, bad request, the
        provider refusing) raises here, so the route answers it as an HTTP error.
        """
        _check_text(request)
        stops = [s for s in request.stop_sequences or [] if s]
        stream = bool(request.stream) or bool(stops)
        estimate = estimate_tokens(request)
        if request.max_tokens == 0:
            await self._llm(request.model, user)
            return Message(content=[], model=request.model, stop_reason="max_tokens",
                           usage=Usage(input_tokens=estimate, output_tokens=0))
        result = await self.inference.chat_completion(
            to_chat_request(request, stream=stream), user
        )
        if isinstance(result, ChatCompletion):
            return to_message(result, request.model, estimate)
        try:
            first = await anext(result)
        except StopAsyncIteration:
            await result.aclose()
            first = ChatCompletionChunk(id=new_message_id(), model=request.model, choices=[])
        on_cut = None
        if self.quotas is not None:
            quotas = self.quotas

            async def on_cut(tokens: int) -> None:
                await quotas.add_tokens(user, tokens)

        events = _EventStream(result, first, request.model, stops, estimate, on_cut)
        if request.stream:
            return events
        async for _ in events.events():
            pass
        return events.message()

    async def _llm(self, model: str, user: Owner) -> RoutingEntry:
        entry = await self.models.resolve(model, user)
        if entry.resource_type == "embedding":
            raise InvalidRequestError(
                f"model {model!r} is an embedding model and cannot serve /v1/messages; "
                "use an llm",
                param="model", code="wrong_model_type",
            )
        return entry

    async def count_tokens(self, request: CountTokensRequest, user: Owner) -> TokenCount:
        _check_text(request)
        entry = await self._llm(request.model, user)
        _tools(request)  # the same checks as a real request
        if "tokenizer" in self.models.hooks(entry.provider_id):
            provider = self.models.provider(entry.provider_id)
            tokenizer = await provider.tokenizer(entry.provider_resource_id)
            text, messages, images = _rendered(request)
            count = len(tokenizer.encode(text).ids)
            return TokenCount(input_tokens=count + TOKENS_PER_MESSAGE * messages
                              + TOKENS_PER_IMAGE * images + TOKENS_PER_REPLY)
        return TokenCount(input_tokens=estimate_tokens(request))


async def _build(ctx: ServiceContext) -> MessagesService:
    return MessagesService(ctx.dep("inference", InferenceService),
                           ctx.dep("models", ModelsService), ctx.quotas)


def _router() -> APIRouter:
    from fnstack.routes.messages import router

    return router


spec = ServiceSpec(
    name="messages",
    apis=(Api.inference,),
    factory=_build,
    router=_router,
    depends=("inference", "models"),
    description="Anthropic's Messages API (and count_tokens) over the inference service",
)
