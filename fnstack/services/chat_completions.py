"""The stored chat completion history: a consumer of the inference service.

``create`` asks the inference service for the completion and stores it (unless
``store: false``) before answering: a 200 means stored. A stream is stored once it
has ended normally, before its last event goes out. Records are owned: list, get,
messages, update and delete see only what the access policy lets the caller read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessageList,
    ChatCompletionRequest,
    StoredMessage,
)
from fnstack.errors import InvalidRequestError, NotFoundError
from fnstack.guardrails import guarded
from fnstack.records import GroupCommit, RecordStore
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.services.inference import ChatStream, InferenceService
from fnstack.services.safety import SafetyService
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["ChatCompletionsService", "spec"]

KIND = "chat_completion"
# Kept from the first layout of the history: records already stored stay listable.
KEY_PREFIX = "chatcmpl:"
MAX_LIST_LIMIT = 1000


class ChatCompletionsService(Service):
    def __init__(self, inference: InferenceService, records: RecordStore | None,
                 store_by_default: bool, safety: SafetyService | None = None) -> None:
        self.inference = inference
        self.safety = safety
        self.records = records
        self.store_default = store_by_default

    async def create(
        self, request: ChatCompletionRequest, user: Owner
    ) -> ChatCompletion | ChatStream:
        # Shields the request names (extra_body guardrails) run around the model call.
        result = await guarded(self.safety, request, user, self.inference.chat_completion)
        store = self.records is not None and (
            request.store if request.store is not None else self.store_default
        )
        if not store:
            return result
        if isinstance(result, ChatStream):

            async def on_complete(completion: ChatCompletion) -> None:
                await self._store(completion, request, user)

            result.add_done(on_complete)
            return result
        await self._store(result, request, user)
        return result

    async def _store(
        self, completion: ChatCompletion, request: ChatCompletionRequest, user: Owner
    ) -> None:
        records = self._records()
        value = completion.model_dump(mode="json", exclude_none=True)
        value["metadata"] = request.metadata or {}
        value["input_messages"] = [
            m.model_dump(mode="json", exclude_none=True) for m in request.messages
        ]
        await records.create(completion.id, value, user)

    # --- the stored history ------------------------------------------------------------

    def _records(self) -> RecordStore:
        if self.records is None:
            raise NotFoundError(
                "chat completions are not stored: the run config has no `inference` store"
            )
        return self.records

    async def list(
        self,
        user: Owner,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "asc",
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ChatCompletionList:
        where: Callable[[dict[str, Any]], bool] | None = None
        if model is not None or metadata:

            def where(v: dict[str, Any]) -> bool:
                if model is not None and v.get("model") != model:
                    return False
                meta = v.get("metadata") or {}
                return not metadata or all(meta.get(k) == val for k, val in metadata.items())

        records = self._records()
        page = await records.list(user, after=after, limit=limit, order=order, where=where)
        data = [_completion(r.value) for r in page.records]
        return ChatCompletionList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )

    async def get(self, completion_id: str, user: Owner) -> ChatCompletion:
        rec = await self._get(completion_id, user)
        return _completion(rec)

    async def _get(self, completion_id: str, user: Owner) -> dict[str, Any]:
        try:
            return (await self._records().get(completion_id, user)).value
        except NotFoundError:
            raise NotFoundError(
                f"chat completion {completion_id!r} not found", param="completion_id"
            ) from None

    async def messages(
        self,
        completion_id: str,
        user: Owner,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "asc",
    ) -> ChatCompletionMessageList:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        value = await self._get(completion_id, user)
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

    async def update(
        self, completion_id: str, metadata: dict[str, str] | None, user: Owner
    ) -> ChatCompletion:
        def apply(value: dict[str, Any]) -> dict[str, Any]:
            value["metadata"] = metadata or {}
            return value

        try:
            value = await self._records().update(completion_id, user, apply)
        except NotFoundError:
            raise NotFoundError(
                f"chat completion {completion_id!r} not found", param="completion_id"
            ) from None
        return _completion(value)

    async def delete(self, completion_id: str, user: Owner) -> ChatCompletionDeleted:
        try:
            await self._records().delete(completion_id, user)
        except NotFoundError:
            raise NotFoundError(
                f"chat completion {completion_id!r} not found", param="completion_id"
            ) from None
        return ChatCompletionDeleted(id=completion_id)

    async def close(self) -> None:
        if self.records is not None:
            await self.records.close()


def _completion(value: dict[str, Any]) -> ChatCompletion:
    data = {k: v for k, v in value.items() if k != "metadata"}
    completion = ChatCompletion.model_validate(data)
    # OpenAI returns metadata on stored completions; Llama Stack's clients read
    # input_messages. Both ride as extra fields of the wire model.
    completion.metadata = value.get("metadata") or {}  # type: ignore[attr-defined]
    return completion


async def _build(ctx: ServiceContext) -> ChatCompletionsService:
    cfg = ctx.config.inference_store
    records = None
    if ctx.stores.has("inference"):
        mode = cfg.write_mode
        if mode == "auto":
            mode = "sync" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "queue"
        store = ctx.stores.kv("inference")
        records = RecordStore(
            store,
            kind=KIND,
            id_prefix="chatcmpl-",
            key_prefix=KEY_PREFIX,
            policy=ctx.policy,
            writer=GroupCommit(store, mode, cfg.writers, cfg.max_pending),
            max_list_limit=MAX_LIST_LIMIT,
        )
    return ChatCompletionsService(ctx.dep("inference", InferenceService), records,
                                  cfg.store_by_default, ctx.dep("safety", SafetyService))


def _router() -> APIRouter:
    from fnstack.routes.chat_completions import router

    return router


spec = ServiceSpec(
    name="chat_completions",
    apis=(Api.inference,),
    factory=_build,
    router=_router,
    depends=("inference", "safety"),
    stores=(StoreNeed("inference", required=False),),
    description="chat completions, stored unless store=false, and their history",
)
