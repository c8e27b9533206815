"""The conversations service: OpenAI's /v1/conversations, durable and ordered.

Layout in the ``conversations`` kv store (one namespace; on AWS one DynamoDB table)::

    conv:<conv_id>               the conversation (an owned record: `RecordStore`)
    seq:<conv_id>                {"n": items ever added}   an atomic counter (`incr`)
    item:<conv_id>:<seq 12 dig>  one item, its wire dict  ordered listing by key
    iid:<conv_id>:<item_id>      {"seq": n[, "deleted"]}   item id -> position

One record per item, keyed by its position, so a conversation of thousands of items
pages by key range (a DynamoDB Query) and an append writes only the new items. Adding
items::

    incr seq by k  ->  positions n-k .. n-1 are ours alone (concurrent appends interleave
                       whole batches, never collide)
    create_many items (if absent)  ->  create_many / put their id pointers

The items are written before their pointers: a crash between leaves items that list
but cannot be fetched by id, never a pointer to nothing. A deleted item leaves a
tombstone pointer so that its id still works as a listing cursor.

Access is decided on the conversation record alone: item records carry the
conversation's owner but are only reached through it. Deleting a conversation deletes
its record first (everything becomes unreachable at once), then its items, within a
time budget; what the budget leaves is unreachable garbage, never visible again (ids
are never reused).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.conversations import (
    INCLUDABLE,
    MAX_ITEMS_PER_CALL,
    Conversation,
    ConversationDeleted,
    ConversationItemList,
    CreateConversationRequest,
    ItemError,
    UpdateConversationRequest,
    normalize_item,
)
from fnstack.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from fnstack.records import RecordStore, authorize, check_storable, new_id
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.spec import Api
from fnstack.storage import KVRecord, KVStore, Owner
from fnstack.storage.base import encode_cursor

__all__ = ["ConversationsService", "spec"]

STORE = "conversations"
KIND = "conversation"
MAX_LIST = 100
# Deleting a conversation removes its items inline for at most this long (the rest is
# unreachable already); well inside an API Gateway request's 29 s.
PURGE_BUDGET_S = 10.0
_WRITE_CHUNK = 100
MAX_ITEM_BYTES = 350_000


def _item_key(cid: str, seq: int) -> str:
    return f"item:{cid}:{seq:012d}"


def _ptr_key(cid: str, item_id: str) -> str:
    return f"iid:{cid}:{item_id}"


def _view(value: dict[str, Any]) -> Conversation:
    return Conversation(id=value["id"], created_at=value["created_at"],
                        metadata=value.get("metadata") or {})


def _page(data: list[dict[str, Any]], has_more: bool) -> ConversationItemList:
    return ConversationItemList(data=data, first_id=data[0]["id"] if data else None,
                                last_id=data[-1]["id"] if data else None, has_more=has_more)


def check_include(include: list[str] | None) -> None:
    for i, value in enumerate(include or []):
        if value not in INCLUDABLE:
            raise InvalidRequestError(
                f"include value {value!r} is not supported; use any of: "
                f"{', '.join(sorted(INCLUDABLE))}", param=f"include[{i}]",
                code="invalid_value")


class ConversationsService(Service):
    """Conversations and their items, owned and access-checked like every record."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.policy = ctx.policy
        self.kv: KVStore = ctx.stores.kv(STORE)
        self.records = RecordStore(self.kv, kind=KIND, id_prefix="conv_", key_prefix="conv:",
                                   policy=ctx.policy)

    # --- conversations --------------------------------------------------------------

    async def create(self, request: CreateConversationRequest, user: Owner) -> Conversation:
        items = self._normalize(request.items or [], "items", limit=True)
        check_storable(request.metadata, "metadata")
        conversation_id = self.records.new_id()
        value = {"id": conversation_id, "created_at": int(time.time()),
                 "metadata": request.metadata or {}}
        await self.records.create(conversation_id, value, user)
        if items:
            # The record was stored with the caller as its owner.
            await self._write(conversation_id, items, user, duplicates="refuse")
        return _view(value)

    async def retrieve(self, conversation_id: str, user: Owner) -> Conversation:
        return _view((await self._load(conversation_id, user, "conversation_id")).value)

    async def update(self, conversation_id: str, request: UpdateConversationRequest,
                     user: Owner) -> Conversation:
        check_storable(request.metadata, "metadata")
        await self._load(conversation_id, user, "conversation_id")

        def change(value: dict[str, Any]) -> dict[str, Any]:
            return {**value, "metadata": request.metadata or {}}

        return _view(await self.records.update(conversation_id, user, change))

    async def delete(self, conversation_id: str, user: Owner) -> ConversationDeleted:
        await self._load(conversation_id, user, "conversation_id")
        await self.records.delete(conversation_id, user)
        await self._purge(conversation_id, time.monotonic() + PURGE_BUDGET_S)
        return ConversationDeleted(id=conversation_id)

    # --- items ------------------------------------------------------------------------

    async def create_items(self, conversation_id: str, items: list[Any],
                           user: Owner) -> ConversationItemList:
        rec = await self._writable(conversation_id, user, "conversation_id")
        if not items:
            raise InvalidRequestError("items must hold at least one item", param="items")
        stored = self._normalize(items, "items", limit=True)
        await self._write(conversation_id, stored, rec.owner, duplicates="refuse")
        return _page(stored, False)

    async def list_items(self, conversation_id: str, user: Owner, *, after: str | None = None,
                         limit: int = 20, order: Literal["asc", "desc"] = "desc",
                         ) -> ConversationItemList:
        await self._load(conversation_id, user, "conversation_id")
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_LIST}",
                                      param="limit")
        cursor = None
        if after:
            ptr = await self.kv.get(_ptr_key(conversation_id, after))
            if ptr is None:
                raise InvalidRequestError(
                    f"after: no item {after!r} in conversation {conversation_id!r}; pass "
                    "the last_id of an earlier page", param="after")
            cursor = encode_cursor(_item_key(conversation_id, int(ptr.value["seq"])))
        page = await self.kv.list(f"item:{conversation_id}:", limit=limit, after=cursor,
                                  order=order)
        return _page([r.value for r in page.records], page.has_more)

    async def get_item(self, conversation_id: str, item_id: str,
                       user: Owner) -> dict[str, Any]:
        await self._load(conversation_id, user, "conversation_id")
        _, rec = await self._item(conversation_id, item_id)
        return rec.value

    async def delete_item(self, conversation_id: str, item_id: str,
                          user: Owner) -> Conversation:
        conv = await self._writable(conversation_id, user, "conversation_id")
        ptr, rec = await self._item(conversation_id, item_id)
        await self.kv.delete(rec.key)
        # A tombstone: the id stays a valid `after` cursor for clients paging past it.
        await self.kv.put(ptr.key, {**ptr.value, "deleted": True}, owner=conv.owner)
        return _view(conv.value)

    # --- for the responses service --------------------------------------------------

    async def get(self, conversation_id: str, user: Owner) -> Conversation:
        """The conversation; 404 (param ``conversation``) when missing or not readable."""
        return _view((await self._load(conversation_id, user, "conversation")).value)

    async def all_items(self, conversation_id: str, user: Owner) -> list[dict[str, Any]]:
        """Every item, oldest first, as wire dicts: a response's model input."""
        await self._load(conversation_id, user, "conversation")
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = await self.kv.list(f"item:{conversation_id}:", limit=1000, after=cursor)
            out.extend(r.value for r in page.records)
            if not page.has_more:
                return out
            cursor = page.last_cursor

    async def append_items(self, conversation_id: str, items: list[dict[str, Any]],
                           user: Owner) -> None:
        """Append ``items`` in order; an item without an id gets one. Durable when it
        returns. Idempotent: an item whose id the conversation holds already is skipped,
        so a retried append never duplicates."""
        rec = await self._writable(conversation_id, user, "conversation")
        stored = self._normalize(items, "items", limit=False)
        await self._write(conversation_id, stored, rec.owner, duplicates="skip")

    # --- internals ----------------------------------------------------------------------

    async def _load(self, conversation_id: str, user: Owner, param: str) -> KVRecord:
        try:
            return await self.records.get(conversation_id, user)
        except NotFoundError:
            raise NotFoundError(f"conversation {conversation_id!r} not found",
                                param=param) from None

    async def _writable(self, conversation_id: str, user: Owner, param: str) -> KVRecord:
        rec = await self._load(conversation_id, user, param)
        authorize(self.policy, "update", KIND, conversation_id, rec.owner, user)
        return rec

    async def _item(self, conversation_id: str, item_id: str) -> tuple[KVRecord, KVRecord]:
        """The item's pointer and its record; 404 when absent or deleted."""
        ptr = await self.kv.get(_ptr_key(conversation_id, item_id)) if item_id else None
        rec = None
        if ptr is not None and not ptr.value.get("deleted"):
            rec = await self.kv.get(_item_key(conversation_id, int(ptr.value["seq"])))
        if ptr is None or rec is None:
            raise NotFoundError(
                f"item {item_id!r} not found in conversation {conversation_id!r}",
                param="item_id")
        return ptr, rec

    def _normalize(self, items: list[Any], param: str, *, limit: bool) -> list[dict[str, Any]]:
        if limit and len(items) > MAX_ITEMS_PER_CALL:
            raise InvalidRequestError(
                f"at most {MAX_ITEMS_PER_CALL} items can be added at a time, got "
                f"{len(items)}; add them in several calls", param=param)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            try:
                value = normalize_item(item, f"{param}[{i}]", new_id)
            except ItemError as exc:
                raise InvalidRequestError(str(exc), param=exc.param,
                                          code="invalid_value") from None
            check_storable(value, f"{param}[{i}]")
            size = len(json.dumps(value, ensure_ascii=False).encode())
            if size > MAX_ITEM_BYTES:
                # Checked before anything is written: an append is all or nothing.
                raise PayloadTooLargeError(
                    f"item {i} is {size} bytes of JSON; an item holds at most "
                    f"{MAX_ITEM_BYTES} (one DynamoDB item): send large files as input_file "
                    "with a file_id", param=f"{param}[{i}]")
            if value["id"] in seen:
                raise InvalidRequestError(f"item id {value['id']!r} appears twice",
                                          param=f"{param}[{i}].id")
            seen.add(value["id"])
            out.append(value)
        return out

    async def _write(self, cid: str, items: list[dict[str, Any]], owner: Owner, *,
                     duplicates: Literal["refuse", "skip"]) -> None:
        ptrs: list[KVRecord | None] = []
        for start in range(0, len(items), _WRITE_CHUNK):  # bounded concurrency
            ptrs.extend(await asyncio.gather(*(self.kv.get(_ptr_key(cid, it["id"]))
                                               for it in items[start:start + _WRITE_CHUNK])))
        taken = {p.key for p in ptrs if p is not None and not p.value.get("deleted")}
        if taken and duplicates == "refuse":
            i = next(i for i, it in enumerate(items) if _ptr_key(cid, it["id"]) in taken)
            raise InvalidRequestError(
                f"conversation {cid!r} holds an item with id {items[i]['id']!r} already; "
                "omit the id to get a fresh one", param=f"items[{i}].id",
                code="duplicate_item")
        items = [it for it in items if _ptr_key(cid, it["id"]) not in taken]
        if not items:
            return
        counts = await self.kv.incr(f"seq:{cid}", {"n": len(items)}, owner=owner)
        assert counts is not None  # no limits: never refused
        first = counts["n"] - len(items)
        for start in range(0, len(items), _WRITE_CHUNK):
            chunk = list(enumerate(items[start:start + _WRITE_CHUNK], first + start))
            await self.kv.create_many([(_item_key(cid, n), it, owner) for n, it in chunk])
            # Pointers may replace tombstones of deleted items: plain puts.
            await asyncio.gather(*(self.kv.put(_ptr_key(cid, it["id"]), {"seq": n},
                                               owner=owner) for n, it in chunk))

    async def _purge(self, cid: str, deadline: float) -> None:
        for prefix in (f"item:{cid}:", f"iid:{cid}:"):
            while time.monotonic() < deadline:
                page = await self.kv.list(prefix, limit=100)
                if not page.records:
                    break
                await asyncio.gather(*(self.kv.delete(r.key) for r in page.records))
        if time.monotonic() < deadline:
            await self.kv.delete(f"seq:{cid}")


async def _build(ctx: ServiceContext) -> Service:
    return ConversationsService(ctx)


def _router() -> APIRouter:
    from fnstack.routes.conversations import router

    return router


spec = ServiceSpec(
    name="conversations",
    apis=(Api.conversations,),
    factory=_build,
    router=_router,
    stores=(StoreNeed(STORE),),
    description="conversations: durable, ordered Responses items (OpenAI's /v1/conversations)",
)
