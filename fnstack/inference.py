"""The inference API: routing to providers, stream assembly, the stored history.

Each request finds its model in the routing table, is checked against the model's
type, goes to the provider under the provider's own model id, and comes back under
the public id with an fnstack completion id (time-ordered, so the history lists in
creation order straight from the kv store).

Stored completions go through `CompletionWriter`: a bounded queue drained by N writer
tasks in the local server (the request path never waits on storage), or written
before the response completes on Lambda, where the environment freezes once the
response is sent and background work would be lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Literal

from fnstack.api.inference import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessage,
    ChatCompletionMessageList,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    FunctionCall,
    StoredMessage,
    ToolCall,
    Usage,
)
from fnstack.errors import InvalidRequestError, NotFoundError, PreconditionFailedError
from fnstack.registry import ModelEntry
from fnstack.storage import KVStore, Owner
from fnstack.storage.base import encode_cursor

if TYPE_CHECKING:
    from fnstack.stack import Stack

__all__ = ["CompletionWriter", "InferenceService", "new_completion_id"]

log = logging.getLogger("fnstack.inference")

_KEY = "chatcmpl:"
_ID_PREFIX = "chatcmpl-"
MAX_LIST_LIMIT = 100


def new_completion_id() -> str:
    """``chatcmpl-`` + 12 hex digits of milliseconds + 16 random hex: sorts by creation."""
    return f"{_ID_PREFIX}{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


_Item = tuple[str, dict[str, Any], Owner]


class CompletionWriter:
    """Writes stored completions without losing any.

    ``queue`` mode: ``submit`` enqueues (waiting only when the bounded queue is full)
    and N tasks write, each taking what is pending (up to ``batch``) as one
    `KVStore.create_many`; ``flush`` waits for everything submitted so far, so a read
    after a write sees it; ``close`` drains. ``sync`` mode: ``submit`` writes at once.
    """

    def __init__(self, store: KVStore, mode: Literal["queue", "sync"], writers: int = 4,
                 max_pending: int = 10_000, batch: int = 100) -> None:
        self.store = store
        self.mode = mode
        self.writers = writers
        self.batch = batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._max_pending = max_pending

    async def submit(self, key: str, value: dict[str, Any], owner: Owner) -> None:
        if self.mode == "sync":
            await self._write([(key, value, owner)])
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self._max_pending)
            self._tasks = [asyncio.create_task(self._run()) for _ in range(self.writers)]
        await self._queue.put((key, value, owner))

    async def flush(self) -> None:
        if self._queue is not None:
            await self._queue.join()

    async def close(self) -> None:
        await self.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            items = [await self._queue.get()]
            # Under load many completions wait here: one store call for all of them
            # (with SQLite, one thread hop and one transaction instead of one each).
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._write(items)
            except Exception:
                log.error("storing chat completions failed",
                          extra={"keys": [key for key, _, _ in items]}, exc_info=True)
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _write(self, items: list[_Item]) -> None:
        # Keys are fresh completion ids, so each write is a create (if_absent), which
        # spares the read an unconditional put makes to bump the version. A retry that
        # finds a record there means an earlier attempt landed after all.
        delay = 0.05
        for attempt in range(5):
            try:
                created = await self.store.create_many(items)
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(delay)
                delay *= 4
                continue
            if attempt == 0 and not all(created):
                taken = [k for (k, _, _), ok in zip(items, created, strict=True) if not ok]
                log.error("chat completion ids already stored; not overwritten",
                          extra={"keys": taken})
            return


class InferenceService:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        cfg = stack.config.inference_store
        mode = cfg.write_mode
        if mode == "auto":
            mode = "sync" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "queue"
        self.store_default = cfg.store_by_default
        self.writer: CompletionWriter | None = None
        if stack.stores.has("inference"):
            self.writer = CompletionWriter(
                stack.stores.kv("inference"), mode, cfg.writers, cfg.max_pending
            )

    # --- routing -------------------------------------------------------------------

    async def _route(
        self, model: str, want: Literal["llm", "embedding"], endpoint: str
    ) -> tuple[ModelEntry, Any]:
        entry = await self.stack.registry.resolve(model)
        if entry.model_type != want:
            other = "/v1/embeddings" if entry.model_type == "embedding" else "/v1/chat/completions"
            raise InvalidRequestError(
                f"model {model!r} is an {entry.model_type} model and cannot serve {endpoint}; "
                f"use it with {other}",
                param="model",
                code="wrong_model_type",
            )
        return entry, await self.stack.provider(entry.provider_id)

    # --- chat completions ---------------------------------------------------------------

    async def chat_completion(
        self, request: ChatCompletionRequest, owner: Owner
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        _check_chat(request)
        public = request.model
        entry, provider = await self._route(public, "llm", "/v1/chat/completions")
        upstream = request.model_copy(update={"model": entry.provider_resource_id})
        cid = new_completion_id()
        store = self.writer is not None and (
            request.store if request.store is not None else self.store_default
        )
        result = await provider.chat_completion(upstream)
        if not isinstance(result, ChatCompletion):
            return _Relay(self, result, request, public, cid, owner, bool(store))
        result.id, result.model = cid, public
        if store:
            await self._store(result, request, owner)
        return result

    async def _store(
        self, completion: ChatCompletion, request: ChatCompletionRequest, owner: Owner
    ) -> None:
        assert self.writer is not None
        value = completion.model_dump(mode="json", exclude_none=True)
        value["metadata"] = request.metadata or {}
        value["input_messages"] = [
            m.model_dump(mode="json", exclude_none=True) for m in request.messages
        ]
        await self.writer.submit(_KEY + completion.id, value, owner)

    # --- the stored history ------------------------------------------------------------

    def _history(self) -> KVStore:
        if self.writer is None:
            raise NotFoundError(
                "chat completions are not stored: the run config has no `inference` store"
            )
        return self.writer.store

    async def _flushed_history(self) -> KVStore:
        """The history store once every write submitted so far has landed."""
        store = self._history()
        assert self.writer is not None
        await self.writer.flush()
        return store

    async def _record(self, completion_id: str, owner: Owner) -> tuple[dict[str, Any], int]:
        store = await self._flushed_history()
        rec = await store.get(_KEY + completion_id) if completion_id else None
        if rec is None or rec.owner.principal != owner.principal:
            raise NotFoundError(
                f"chat completion {completion_id!r} not found", param="completion_id"
            )
        return rec.value, rec.version

    async def list_chat_completions(
        self,
        owner: Owner,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "asc",
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ChatCompletionList:
        store = await self._flushed_history()
        _check_limit(limit)
        cursor = encode_cursor(_KEY + after) if after else None
        out: list[ChatCompletion] = []
        has_more = False
        while True:
            page = await store.list(_KEY, limit=100, after=cursor, order=order,
                                    owner=owner.principal)
            for rec in page.records:
                v = rec.value
                if model is not None and v.get("model") != model:
                    continue
                if metadata and any((v.get("metadata") or {}).get(k) != val
                                    for k, val in metadata.items()):
                    continue
                if len(out) == limit:
                    has_more = True
                    break
                out.append(_completion(v))
            if has_more or not page.has_more:
                break
            cursor = page.last_cursor
        return ChatCompletionList(
            data=out,
            first_id=out[0].id if out else None,
            last_id=out[-1].id if out else None,
            has_more=has_more,
        )

    async def get_chat_completion(self, completion_id: str, owner: Owner) -> ChatCompletion:
        value, _ = await self._record(completion_id, owner)
        return _completion(value)

    async def get_messages(
        self,
        completion_id: str,
        owner: Owner,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "asc",
    ) -> ChatCompletionMessageList:
        _check_limit(limit)
        value, _ = await self._record(completion_id, owner)
        messages = [
            StoredMessage(id=f"{completion_id}-{i}", **m)
            for i, m in enumerate(value.get("input_messages", []))
        ]
        if order == "desc":
            messages.reverse()
        if after is not None:
            ids = [m.id for m in messages]
            if after not in ids:
                raise InvalidRequestError(f"no message {after!r} in {completion_id}",
                                          param="after")
            messages = messages[ids.index(after) + 1:]
        page = messages[:limit]
        return ChatCompletionMessageList(
            data=page,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
            has_more=len(messages) > limit,
        )

    async def update_chat_completion(
        self, completion_id: str, metadata: dict[str, str] | None, owner: Owner
    ) -> ChatCompletion:
        store = self._history()
        for _ in range(5):
            value, version = await self._record(completion_id, owner)
            value["metadata"] = metadata or {}
            try:
                await store.put(_KEY + completion_id, value, owner=owner, if_version=version)
            except PreconditionFailedError:
                continue  # a concurrent update won; re-read and apply ours on top
            return _completion(value)
        raise PreconditionFailedError(
            f"chat completion {completion_id!r} is being updated concurrently; retry"
        )

    async def delete_chat_completion(
        self, completion_id: str, owner: Owner
    ) -> ChatCompletionDeleted:
        await self._record(completion_id, owner)
        await self._history().delete(_KEY + completion_id)
        return ChatCompletionDeleted(id=completion_id)

    # --- completions and embeddings ---------------------------------------------------------

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        if isinstance(request.prompt, list) and not request.prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        public = request.model
        entry, provider = await self._route(public, "llm", "/v1/completions")
        result = await provider.completion(
            request.model_copy(update={"model": entry.provider_resource_id})
        )
        if isinstance(result, Completion):
            result.model = public
            return result
        return _rename(result, public)

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        if isinstance(request.input, list) and not request.input:
            raise InvalidRequestError("input must not be empty", param="input")
        public = request.model
        entry, provider = await self._route(public, "embedding", "/v1/embeddings")
        result: EmbeddingList = await provider.embeddings(
            request.model_copy(update={"model": entry.provider_resource_id})
        )
        result.model = public
        return result

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()


class _Relay:
    """The provider's chunks under the public model name and the fnstack id, assembled
    for the stored copy as they pass; stored once the stream has ended normally.

    ``ready()`` says whether the next chunk has already arrived, so the route can write
    everything that is here in one go (never holding a chunk back for the next).
    """

    def __init__(
        self,
        service: InferenceService,
        chunks: AsyncIterator[ChatCompletionChunk],
        request: ChatCompletionRequest,
        public: str,
        cid: str,
        owner: Owner,
        store: bool,
    ) -> None:
        self._chunks = chunks
        self._buffered = getattr(chunks, "buffered", None)
        self._include_usage = bool(
            request.stream_options and request.stream_options.include_usage
        )
        self._gen = self._run(service, request, public, cid, owner, store)

    def __aiter__(self) -> _Relay:
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

    async def _run(
        self,
        service: InferenceService,
        request: ChatCompletionRequest,
        public: str,
        cid: str,
        owner: Owner,
        store: bool,
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        chunks = self._chunks
        include_usage = self._include_usage
        acc = _Assembler()
        created = int(time.time())
        try:
            async for chunk in chunks:
                chunk.id, chunk.model, chunk.created = cid, public, created
                acc.add(chunk)
                if not include_usage:
                    if not chunk.choices:
                        continue  # the usage-only chunk nobody asked for
                    chunk.usage = None
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        # Reached only when the stream ended normally: the client got every chunk.
        if store:
            await service._store(acc.completion(cid, public, created), request, owner)


async def _rename(chunks: AsyncIterator[Completion], public: str) -> AsyncIterator[Completion]:
    try:
        async for chunk in chunks:
            chunk.model = public
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _completion(value: dict[str, Any]) -> ChatCompletion:
    data = {k: v for k, v in value.items() if k not in ("input_messages", "metadata")}
    completion = ChatCompletion.model_validate(data)
    # OpenAI returns metadata on stored completions; keep it as an extra field.
    completion.metadata = value.get("metadata") or {}  # type: ignore[attr-defined]
    return completion


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit")


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
