"""The inference service: routing and generation, storing nothing.

Each request finds its model in the routing table (the models service, with the
caller's principal: a model it may not use is a 404), is checked against the model's
type, goes to the provider under the provider's own model id, and comes back under the
public id with an fnstack completion id (time-ordered, so the stored history lists in
creation order straight from the kv store).

Responses and batches call this service in process; the stored chat completion history
(`fnstack.services.chat_completions`) is one of its consumers. Every provider call is
timed and counted here, per provider (`fnstack.metrics`: EMF on Lambda).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.inference import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FunctionCall,
    InferenceProvider,
    ToolCall,
    Usage,
)
from fnstack.errors import InvalidRequestError
from fnstack.metrics import MetricsSink, Operation, ProviderCall, metrics_from_env
from fnstack.quotas import Quotas
from fnstack.records import check_storable, new_id
from fnstack.routing import RoutingEntry
from fnstack.services import Service, ServiceContext, ServiceSpec
from fnstack.services.models import ModelsService
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["ChatStream", "InferenceService", "new_completion_id", "spec"]

COMPLETION_ID_PREFIX = "chatcmpl-"


def new_completion_id() -> str:
    return new_id(COMPLETION_ID_PREFIX)


class InferenceService(Service):
    def __init__(
        self, models: ModelsService, quotas: Quotas | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.models = models
        self.quotas = quotas
        self.metrics = metrics if metrics is not None else metrics_from_env()

    async def _call(self, call: ProviderCall, result: Awaitable[Any]) -> Any:
        """The provider's answer, its failure recorded (a stream's end is recorded by
        whoever reads it)."""
        try:
            return await result
        except Exception as exc:
            call.failed(exc)
            raise
        except BaseException:
            call.cancelled()
            raise

    def _start(self, entry: RoutingEntry, operation: Operation, public: str) -> ProviderCall:
        return ProviderCall(self.metrics, entry.provider_id, operation, public)

    async def _charge(self, user: Owner, usage: Usage | EmbeddingUsage | None) -> None:
        if self.quotas is not None and usage is not None:
            await self.quotas.add_tokens(user, usage.total_tokens)

    async def _route(
        self, model: str, want: Literal["llm", "embedding"], endpoint: str, user: Owner
    ) -> tuple[RoutingEntry, Any]:
        entry = await self.models.resolve(model, user)
        kind = entry.resource_type if entry.resource_type == "embedding" else "llm"
        if kind != want:
            other = "/v1/embeddings" if kind == "embedding" else "/v1/chat/completions"
            raise InvalidRequestError(
                f"model {model!r} is an {kind} model and cannot serve {endpoint}; "
                f"use it with {other}",
                param="model",
                code="wrong_model_type",
            )
        return entry, self.models.provider(entry.provider_id)

    async def chat_completion(
        self, request: ChatCompletionRequest, user: Owner
    ) -> ChatCompletion | ChatStream:
        """A completion under the public model id and a fresh id, or its stream."""
        _check_chat(request)
        public = request.model
        entry, provider = await self._route(public, "llm", "/v1/chat/completions", user)
        upstream = request.model_copy(update={"model": entry.provider_resource_id})
        cid = new_completion_id()
        call = self._start(entry, "chat", public)
        result = await self._call(call, provider.chat_completion(upstream))
        if not isinstance(result, ChatCompletion):
            stream = ChatStream(result, request, public, cid, call)
            if self.quotas is not None:

                async def charge(completion: ChatCompletion) -> None:
                    await self._charge(user, completion.usage)

                stream.add_done(charge)
            return stream
        call.succeeded(result.usage)
        result.id, result.model = cid, public
        await self._charge(user, result.usage)
        return result

    async def completion(
        self, request: CompletionRequest, user: Owner
    ) -> Completion | AsyncIterator[Completion]:
        if isinstance(request.prompt, list) and not request.prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        check_storable(request.prompt, "prompt")
        public = request.model
        entry, provider = await self._route(public, "llm", "/v1/completions", user)
        call = self._start(entry, "completion", public)
        result = await self._call(call, provider.completion(
            request.model_copy(update={"model": entry.provider_resource_id})
        ))
        if isinstance(result, Completion):
            call.succeeded(result.usage)
            result.model = public
            await self._charge(user, result.usage)
            return result

        async def charge(usage: Usage | None) -> None:
            await self._charge(user, usage)

        return _rename(result, public, charge, call)

    async def embeddings(self, request: EmbeddingRequest, user: Owner) -> EmbeddingList:
        if isinstance(request.input, list) and not request.input:
            raise InvalidRequestError("input must not be empty", param="input")
        check_storable(request.input, "input")
        public = request.model
        entry, provider = await self._route(public, "embedding", "/v1/embeddings", user)
        call = self._start(entry, "embeddings", public)
        result: EmbeddingList = await self._call(call, provider.embeddings(
            request.model_copy(update={"model": entry.provider_resource_id})
        ))
        call.succeeded(result.usage)
        result.model = public
        await self._charge(user, result.usage)
        return result


class ChatStream:
    """The provider's chunks under the public model name and the fnstack id, assembled
    for the stored copy as they pass; stored once the stream has ended normally.

    ``ready()`` says whether the next chunk has already arrived, so the route can write
    everything that is here in one go (never holding a chunk back for the next).
    """

    def __init__(
        self,
        chunks: AsyncIterator[ChatCompletionChunk],
        request: ChatCompletionRequest,
        public: str,
        cid: str,
        call: ProviderCall | None = None,
    ) -> None:
        self._chunks = chunks
        self._call = call
        if call is not None:
            call.streamed = True
        self._buffered = getattr(chunks, "buffered", None)
        self._include_usage = bool(
            request.stream_options and request.stream_options.include_usage
        )
        self._gen = self._run(public, cid)
        # Called with the assembled completion once the stream has ended normally,
        # before its last chunk goes out (storing it, charging its tokens).
        self._done: list[Callable[[ChatCompletion], Awaitable[None]]] = []

    def add_done(self, callback: Callable[[ChatCompletion], Awaitable[None]]) -> None:
        self._done.append(callback)

    def __aiter__(self) -> ChatStream:
        return self

    def __anext__(self) -> Awaitable[ChatCompletionChunk]:
        return self._gen.__anext__()

    def ready(self) -> bool:
        if self._buffered is None:
            return False
        nxt = self._buffered()
        # A usage-only chunk nobody asked for is dropped, and the one after it may not
        # be here yet: not ready, to be safe.
        return nxt is not None and (self._include_usage or bool(nxt.choices))

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _run(self, public: str, cid: str) -> AsyncGenerator[ChatCompletionChunk, None]:
        chunks = self._chunks
        include_usage = self._include_usage
        acc = _Assembler()
        created = int(time.time())
        call = self._call
        try:
            async for chunk in chunks:
                if call is not None:
                    call.first_chunk()
                chunk.id, chunk.model, chunk.created = cid, public, created
                acc.add(chunk)
                if not include_usage:
                    if not chunk.choices:
                        continue  # the usage-only chunk nobody asked for
                    chunk.usage = None
                yield chunk
        except Exception as exc:
            if call is not None:
                call.failed(exc)
            raise
        except BaseException:  # the reader went away (GeneratorExit, cancellation)
            if call is not None:
                call.cancelled()
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if call is not None:
            call.succeeded(acc.usage)
        # Reached only when the stream ended normally: the client got every chunk.
        if self._done:
            completion = acc.completion(cid, public, created)
            for callback in self._done:
                await callback(completion)


async def _rename(
    chunks: AsyncIterator[Completion], public: str,
    on_usage: Callable[[Usage | None], Awaitable[None]], call: ProviderCall,
) -> AsyncIterator[Completion]:
    usage: Usage | None = None
    call.streamed = True
    try:
        async for chunk in chunks:
            call.first_chunk()
            chunk.model = public
            usage = chunk.usage or usage
            yield chunk
    except Exception as exc:
        call.failed(exc)
        raise
    except BaseException:
        call.cancelled()
        raise
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    call.succeeded(usage)
    await on_usage(usage)


def _check_chat(request: ChatCompletionRequest) -> None:
    names = [t.function.name for t in request.tools or []]
    choice = request.tool_choice
    if choice is not None and not isinstance(choice, str):
        if not names:
            raise InvalidRequestError(
                "tool_choice names a function but no tools were given", param="tool_choice"
            )
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not among the tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )
    elif choice == "required" and not names:
        raise InvalidRequestError(
            "tool_choice 'required' needs at least one tool", param="tool_choice"
        )
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool names must be unique", param="tools")
    check_storable(request.messages, "messages")
    check_storable(request.tools, "tools")
    check_storable(request.metadata, "metadata")
    seen_calls: set[str] = set()
    for i, m in enumerate(request.messages):
        if m.role == "assistant" and m.tool_calls:
            seen_calls.update(tc.id for tc in m.tool_calls)
        if m.role == "tool" and m.tool_call_id not in seen_calls:
            raise InvalidRequestError(
                f"messages[{i}] answers tool call {m.tool_call_id!r}, but no earlier assistant "
                "message made that call",
                param=f"messages[{i}].tool_call_id",
            )


class _Assembler:
    """Rebuilds the whole completion from its chunks, choice by choice."""

    def __init__(self) -> None:
        self.text: dict[int, list[str]] = {}
        self.tools: dict[int, dict[int, dict[str, Any]]] = {}
        self.finish: dict[int, Any] = {}
        self.logprobs: dict[int, list[Any]] = {}
        self.usage: Usage | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        for c in chunk.choices:
            self.text.setdefault(c.index, [])
            if c.delta.content:
                self.text[c.index].append(c.delta.content)
            for tc in c.delta.tool_calls or []:
                slot = self.tools.setdefault(c.index, {}).setdefault(
                    tc.index, {"id": None, "name": "", "arguments": ""}
                )
                if tc.id:
                    slot["id"] = tc.id
                if tc.function is not None:
                    # OpenAI sends a call's name once, in its first delta; llama.cpp
                    # repeats it in every delta. Append only what is new.
                    name = tc.function.name or ""
                    if name != slot["name"]:
                        slot["name"] += name
                    slot["arguments"] += tc.function.arguments or ""
            if c.finish_reason is not None:
                self.finish[c.index] = c.finish_reason
            if c.logprobs is not None and c.logprobs.content:
                self.logprobs.setdefault(c.index, []).extend(c.logprobs.content)

    def completion(self, cid: str, model: str, created: int) -> ChatCompletion:
        choices = []
        for index in sorted(self.text):
            calls = [
                ToolCall(id=t["id"] or f"call_{secrets.token_hex(8)}",
                         function=FunctionCall(name=t["name"], arguments=t["arguments"]))
                for _, t in sorted(self.tools.get(index, {}).items())
            ]
            text = "".join(self.text[index])
            choices.append(
                ChatChoice(
                    index=index,
                    message=ChatCompletionMessage(
                        content=text if text or not calls else None, tool_calls=calls or None
                    ),
                    finish_reason=self.finish.get(index, "stop"),
                    logprobs=ChoiceLogprobs(content=self.logprobs[index])
                    if index in self.logprobs else None,
                )
            )
        return ChatCompletion(id=cid, created=created, model=model, choices=choices,
                              usage=self.usage)


async def _build(ctx: ServiceContext) -> InferenceService:
    return InferenceService(ctx.dep("models", ModelsService), ctx.quotas)


def _router() -> APIRouter:
    from fnstack.routes.inference import router

    return router


spec = ServiceSpec(
    name="inference",
    apis=(Api.inference,),
    factory=_build,
    router=_router,
    depends=("models",),
    provider_api=Api.inference,
    provider_protocol=InferenceProvider,
    description="chat completions, completions and embeddings, routed to providers",
)
