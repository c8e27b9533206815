"""Owned records: the one store every user-owned resource lives in.

Stored chat completions now; files, vector stores, responses, conversations, batches
and prompts later. A `RecordStore` is one resource kind in a kv namespace:

- ids are time-ordered with a type prefix (``chatcmpl-`` + 12 hex digits of
  milliseconds + 16 random hex), so the kv store lists in creation order;
- list answers in OpenAI's shape (``first_id``, ``last_id``, ``has_more``) with
  ``after``/``before``/``limit``/``order`` and a filter;
- update is a conditional write, retried when a concurrent update won;
- every operation takes the caller's principal and asks the access policy: a record
  the caller may not read is a 404 (existence does not leak), an action it may not
  take on a record it can read is a 403.

A 200 means stored: creates go through `GroupCommit`, where each request waits for the
commit of the batch it joined (milliseconds), so killing the process loses only
requests not yet answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from fnstack.access import Resource
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    ServiceUnavailableError,
)
from fnstack.logs import request_id_var
from fnstack.storage import KVRecord, KVStore, Owner
from fnstack.storage.base import encode_cursor

__all__ = [
    "GroupCommit",
    "Policy",
    "RecordPage",
    "RecordStore",
    "authorize",
    "check_storable",
    "mutate",
    "new_id",
    "readable",
]

log = logging.getLogger("fnstack.records")

Action = Literal["create", "read", "update", "delete"]
MAX_LIST_LIMIT = 1000


class Policy(Protocol):
    """What the record store needs of the access policy (`fnstack.access.AccessPolicy`)."""

    def allows(self, action: Action, resource: Resource, user: Owner) -> bool: ...

    def reads_only_own(self, resource_type: str, user: Owner) -> bool: ...


def _resource(kind: str, identifier: str, owner: Owner | None) -> Resource:
    return Resource(kind, identifier, owner)


def readable(policy: Policy, kind: str, identifier: str, owner: Owner | None,
             user: Owner) -> bool:
    return policy.allows("read", _resource(kind, identifier, owner), user)


def authorize(policy: Policy, action: Action, kind: str, identifier: str,
              owner: Owner | None, user: Owner) -> None:
    """Raise unless ``user`` may take ``action``: 404 when it may not even read the
    resource (never say it exists), 403 when it may read but not do this."""
    resource = _resource(kind, identifier, owner)
    if policy.allows(action, resource, user):
        return
    if action in ("create",) or policy.allows("read", resource, user):
        raise PermissionDeniedError(
            f"{user.principal} may not {action} {kind} {identifier!r}; "
            "ask an administrator, or see the access policy (access_policy in the run config)"
        )
    raise NotFoundError(f"{kind} {identifier!r} not found", param="id")


def new_id(prefix: str) -> str:
    """``prefix`` + 12 hex digits of milliseconds + 16 random hex: sorts by creation."""
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def check_storable(value: Any, param: str) -> None:
    """400 for text no store can hold (lone surrogates such as ``"\\ud800"``).

    JSON can carry them as escapes, but UTF-8 cannot encode them: caught at the request
    boundary, a poisoned record never reaches a write batch to take others with it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"{param} holds invalid Unicode (an unpaired surrogate at position "
                f"{exc.start}); send well-formed UTF-8 text",
                param=param,
                code="invalid_unicode",
            ) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_storable(k, param)
            check_storable(v, f"{param}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_storable(v, f"{param}[{i}]")
    elif isinstance(value, BaseModel):
        # Walked in place (no dump): this runs on every chat request.
        for k, v in value.__dict__.items():
            if v is not None and not isinstance(v, int | float | bool):
                check_storable(v, f"{param}.{k}" if param else k)
        for k, v in (value.__pydantic_extra__ or {}).items():
            check_storable(v, f"{param}.{k}" if param else k)


async def mutate(
    store: KVStore, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None],
    attempts: int = 10,
) -> dict[str, Any] | None:
    """Read-modify-write of one record by conditional write, for background workers.

    ``change`` gets a copy of the stored value and returns the new one, or None to leave
    it; a concurrent write makes it run again on the fresh value. Returns the value
    written, or None when the record is gone or ``change`` declined."""
    for _ in range(attempts):
        rec = await store.get(key)
        if rec is None:
            return None
        value = change(dict(rec.value))
        if value is None:
            return None
        try:
            await store.put(key, value, owner=rec.owner, if_version=rec.version)
        except PreconditionFailedError:
            continue
        return value
    raise ConflictError(f"{key} kept changing under the worker; the job will be retried")


async def claim(
    store: KVStore, key: str, *, active: Callable[[dict[str, Any]], bool], lease_s: float,
    reclaim: bool, name: str, work: str = "run",
) -> KVRecord | None:
    """Take the lease on a background job's record (one worker at a time) by conditional
    write; the record as written, or None when it is gone or no longer ``active``.

    ``reclaim`` takes it even while leased (this process knows the holder is gone)."""
    rec = await store.get(key)
    if rec is None or not active(rec.value):
        return None
    if not reclaim and float(rec.value.get("lease_until") or 0) > time.time():
        # Another worker holds it: fail this delivery so it is retried after the
        # lease (SQS visibility), unless that worker finishes first.
        raise ServiceUnavailableError(f"{name} is being {work} by another worker")
    value = {**rec.value, "lease_until": time.time() + lease_s}
    try:
        return await store.put(key, value, owner=rec.owner, if_version=rec.version)
    except PreconditionFailedError:
        raise ServiceUnavailableError(f"{name} was claimed concurrently") from None


# --- group commit ----------------------------------------------------------------------


@dataclass
class _Pending:
    key: str
    value: dict[str, Any]
    owner: Owner
    request_id: str | None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())


class GroupCommit:
    """Creates records so that a returned ``create`` means stored, in batches.

    ``queue`` mode: each ``create`` joins the pending batch and waits for its commit;
    N writer tasks take what is pending (up to ``batch``) as one `KVStore.create_many`.
    A failed batch is retried record by record, so one bad record fails only its own
    request. ``sync`` mode (Lambda: one request at a time) writes at once.
    """

    def __init__(self, store: KVStore, mode: Literal["queue", "sync"], writers: int = 4,
                 max_pending: int = 10_000, batch: int = 100, attempts: int = 3) -> None:
        self.store = store
        self.mode = mode
        self.writers = writers
        self.batch = batch
        self.attempts = attempts
        self._max_pending = max_pending
        self._queue: asyncio.Queue[_Pending] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def create(self, key: str, value: dict[str, Any], owner: Owner) -> None:
        """Store a new record under ``key``; returns once it is committed."""
        item = _Pending(key, value, owner, request_id_var.get())
        if self.mode == "sync":
            await self._commit([item])
        else:
            if self._queue is None:
                self._queue = asyncio.Queue(self._max_pending)
                # A fresh context: the writers' log lines must not carry the request id
                # of whichever request happened to start them (each line names its own).
                self._tasks = [asyncio.create_task(self._run(), context=contextvars.Context())
                               for _ in range(self.writers)]
            await self._queue.put(item)
        # Shielded: a client hanging up must not cancel the wait of a batch already
        # being written (the result is still recorded for the other requests in it).
        await asyncio.shield(item.done)

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._queue = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            items = [await self._queue.get()]
            # Under load many creates wait here: one store call for all of them
            # (with SQLite one thread hop and one transaction instead of one each).
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._commit(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _commit(self, items: list[_Pending]) -> None:
        try:
            await self._write(items)
        except Exception as exc:
            if len(items) == 1:
                self._fail(items[0], exc)
                return
            # Isolate: whatever broke the batch breaks only its own record.
            for item in items:
                try:
                    await self._write([item])
                except Exception as one:
                    self._fail(item, one)

    async def _write(self, items: list[_Pending]) -> None:
        delay = 0.05
        for attempt in range(self.attempts):
            try:
                created = await self.store.create_many(
                    [(i.key, i.value, i.owner) for i in items]
                )
            except FnstackError as exc:
                if exc.status < 500 or attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 4
                continue
            # Keys are fresh ids, so a record already there means an earlier attempt
            # of this very write landed after all (a retry after a lost answer).
            if attempt == 0 and not all(created):
                taken = [i.key for i, ok in zip(items, created, strict=True) if not ok]
                log.error("record ids already stored; not overwritten",
                          extra={"keys": taken, "request_ids": [i.request_id for i in items]})
            for item in items:
                if not item.done.done():
                    item.done.set_result(None)
            return

    @staticmethod
    def _fail(item: _Pending, exc: Exception) -> None:
        log.error("storing a record failed",
                  extra={"key": item.key, "request_ids": [item.request_id]},
                  exc_info=exc)
        if not item.done.done():
            err = exc if isinstance(exc, FnstackError) and exc.status < 500 else (
                ServiceUnavailableError(
                    "the record could not be stored; the request was not saved, retry it"
                )
            )
            item.done.set_exception(err)


# --- the record store ----------------------------------------------------------------


@dataclass(frozen=True)
class RecordPage:
    records: list[KVRecord]
    has_more: bool


class RecordStore:
    """One resource kind of owned records in a kv namespace."""

    def __init__(
        self,
        store: KVStore,
        *,
        kind: str,
        id_prefix: str,
        key_prefix: str,
        policy: Policy,
        writer: GroupCommit | None = None,
        max_list_limit: int = MAX_LIST_LIMIT,
    ) -> None:
        self.store = store
        self.kind = kind
        self.id_prefix = id_prefix
        self.key_prefix = key_prefix
        self.policy = policy
        self.writer = writer or GroupCommit(store, "sync")
        self.max_list_limit = max_list_limit

    def new_id(self) -> str:
        return new_id(self.id_prefix)

    def _key(self, record_id: str) -> str:
        return self.key_prefix + record_id

    def record_id(self, record: KVRecord) -> str:
        return record.key[len(self.key_prefix):]

    async def create(self, record_id: str, value: dict[str, Any], user: Owner) -> None:
        authorize(self.policy, "create", self.kind, record_id, user, user)
        await self.writer.create(self._key(record_id), value, user)

    async def get(self, record_id: str, user: Owner) -> KVRecord:
        rec = await self.store.get(self._key(record_id)) if record_id else None
        if rec is None or not readable(self.policy, self.kind, record_id, rec.owner, user):
            raise NotFoundError(f"{self.kind} {record_id!r} not found", param="id")
        return rec

    async def list(
        self,
        user: Owner,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "asc",
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> RecordPage:
        """The caller's readable records, ``limit`` of them past ``after`` (or just
        before ``before``), in ``order``."""
        if not 1 <= limit <= self.max_list_limit:
            raise InvalidRequestError(
                f"limit must be between 1 and {self.max_list_limit}", param="limit"
            )
        # The owner filter goes into the kv listing (DynamoDB: the by_owner index) when
        # the policy grants this caller nothing beyond its own records: no scanning of
        # anyone else's. Otherwise scan and ask the policy record by record.
        own_only = self.policy.reads_only_own(self.kind, user)
        start = encode_cursor(self._key(after)) if after else None
        stop = encode_cursor(self._key(before)) if before else None
        out: list[KVRecord] = []
        back = stop is not None and start is None
        scan_order: Literal["asc", "desc"] = order
        if back:
            scan_order = "desc" if order == "asc" else "asc"
            start, stop = stop, None
        cursor = start
        while True:
            page = await self.store.list(
                self.key_prefix, limit=min(self.max_list_limit, max(limit + 1, 100)),
                after=cursor, before=stop, order=scan_order,
                owner=user.principal if own_only else None,
            )
            for rec in page.records:
                rid = rec.key[len(self.key_prefix):]
                if not own_only and not readable(self.policy, self.kind, rid, rec.owner, user):
                    continue
                if where is not None and not where(rec.value):
                    continue
                out.append(rec)
                if len(out) > limit:
                    break
            if len(out) > limit or not page.has_more:
                break
            cursor = page.last_cursor
        has_more = len(out) > limit
        out = out[:limit]
        if back:
            out.reverse()
        return RecordPage(out, has_more)

    async def update(
        self, record_id: str, user: Owner, mutate: Callable[[dict[str, Any]], dict[str, Any]],
        attempts: int = 5,
    ) -> dict[str, Any]:
        """Apply ``mutate`` to the stored value with a conditional write; retried when a
        concurrent update won (re-read, apply ours on top)."""
        for _ in range(attempts):
            rec = await self.get(record_id, user)
            authorize(self.policy, "update", self.kind, record_id, rec.owner, user)
            value = mutate(dict(rec.value))
            check_storable(value, self.kind)
            try:
                await self.store.put(self._key(record_id), value, owner=rec.owner,
                                     if_version=rec.version)
            except PreconditionFailedError:
                continue
            return value
        raise PreconditionFailedError(
            f"{self.kind} {record_id!r} is being updated concurrently; retry"
        )

    async def delete(self, record_id: str, user: Owner) -> None:
        rec = await self.get(record_id, user)
        authorize(self.policy, "delete", self.kind, record_id, rec.owner, user)
        await self.store.delete(self._key(record_id))

    async def close(self) -> None:
        await self.writer.close()

