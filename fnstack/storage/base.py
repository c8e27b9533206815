"""The two storage families and the semantics they share.

**kv**: JSON records under string keys in a namespace, with a version, an owner and an
optional expiry. The base class owns every rule; a backend implements five primitives
(`_get`, `_put`, `_delete`, `_scan`, `close`) over its engine.

Conditional writes, as a backend must make them atomic::

    put(if_absent=True)       stored?  no ----------------------------> write v1
                                       yes, expired (expires_at<=now) -> write v1
                                       yes, live ------------------> PreconditionFailed

    put(if_version=N)         stored, live, version == N ------------> write N+1
                                       anything else --------------> PreconditionFailed

An expired record is never returned, even where the engine deletes it late (DynamoDB
TTL takes up to days; moto never does), so the base filters on every read.

Counters (`incr`): a record whose value holds only integer fields, changed by atomic
increments; the quotas count requests and tokens with it. One increment, all or nothing::

    incr(key, {f: d}, limits={f: L}, ttl)
      stored, live ............ f' = f + d for every field (absent fields count from 0)
                                  any f' > L ......... refused: None, nothing written
                                  else ............... written, version + 1, expiry kept
      absent or expired ....... a fresh record {f: d} (the expired count restarts at 0)
                                  any d > L .......... refused: None, nothing written
                                  else ............... written, version 1, expires now+ttl
      live, not counters ...... ConflictError (code not_a_counter)

A field named in ``limits`` but not in the deltas is checked with delta 0 (and then
stored as 0), so one call can count a request and check a token budget together.

**blob**: opaque objects under keys with a content type; put from bytes or a stream,
get whole or streamed, head, delete, list by prefix.
"""

from __future__ import annotations

import base64
import builtins  # the stores' `list` methods shadow the builtin in class scope
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fnstack.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
)

__all__ = [
    "BlobInfo",
    "BlobStore",
    "Condition",
    "Increment",
    "KVPage",
    "KVRecord",
    "KVStore",
    "Owner",
    "RawRecord",
]

Order = Literal["asc", "desc"]
MAX_KEY_LENGTH = 512
MAX_LIST_LIMIT = 1000


@dataclass(frozen=True)
class Owner:
    """Who a record belongs to. Anonymous until authentication lands."""

    principal: str = "anonymous"
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "attributes": self.attributes}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Owner:
        if not data:
            return cls()
        return cls(
            principal=data.get("principal", "anonymous"), attributes=data.get("attributes", {})
        )


ANONYMOUS = Owner()


@dataclass(frozen=True)
class KVRecord:
    key: str
    value: dict[str, Any]
    version: int
    owner: Owner
    expires_at: float | None = None


@dataclass(frozen=True)
class KVPage:
    """One page of a listing. Cursors are opaque; pass them back as ``after``/``before``."""

    records: list[KVRecord]
    has_more: bool

    @property
    def first_cursor(self) -> str | None:
        return encode_cursor(self.records[0].key) if self.records else None

    @property
    def last_cursor(self) -> str | None:
        return encode_cursor(self.records[-1].key) if self.records else None


@dataclass(frozen=True)
class RawRecord:
    """What a backend stores: the value already JSON-encoded."""

    key: str
    value: str
    version: int
    owner: str  # principal, indexed for owner-filtered listings
    owner_json: str
    expires_at: float | None


@dataclass(frozen=True)
class Condition:
    """How a backend must guard a write. ``now`` decides what counts as expired."""

    kind: Literal["none", "absent", "version"]
    now: float
    version: int | None = None


# Counter names become attribute names on DynamoDB (``n_<field>``): keep them plain.
_COUNTER_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Increment:
    """One `incr`, as a backend applies it. ``deltas`` names every field of ``limits``
    (0 where the caller did not increment it); ``expires_at`` and the owner are for a
    record the increment creates."""

    key: str
    deltas: dict[str, int]
    limits: dict[str, int]
    now: float
    expires_at: float | None
    owner: str
    owner_json: str

    def apply(self, current: dict[str, int]) -> dict[str, int] | None:
        """The counts after adding to ``current``; None when a limit refuses them."""
        counts = dict(current)
        for name, delta in self.deltas.items():
            counts[name] = counts.get(name, 0) + delta
        if any(counts[name] > limit for name, limit in self.limits.items()):
            return None
        return counts

    def fresh(self) -> dict[str, int] | None:
        """The counts of a record created by this increment (absent or expired before)."""
        return self.apply({})


def counters_of(key: str, value: dict[str, Any]) -> dict[str, int]:
    """``value`` as counters, or ConflictError when a field is not an integer."""
    if all(type(v) is int for v in value.values()):
        return value
    raise ConflictError(
        f"record {key!r} does not hold counters (incr needs a record of integer fields "
        "only); use another key",
        code="not_a_counter",
    )


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, param: str = "after") -> str:
    # Strict: the lenient decoder drops characters outside the alphabet, so garbage
    # like "!!" would decode to "" and silently restart the listing from the top.
    problem = f"invalid pagination cursor {cursor!r}; pass back a cursor from an earlier page"
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(problem, param=param) from exc
    if not key or encode_cursor(key) != cursor:
        raise InvalidRequestError(problem, param=param)
    return key


def _check_key(key: str) -> None:
    # Counted in UTF-8 bytes, the unit engines limit (a DynamoDB sort key holds 1024),
    # so every backend accepts exactly the same keys.
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # lone surrogates: no engine can store them
        size = 0
    if not 1 <= size <= MAX_KEY_LENGTH:
        raise InvalidRequestError(f"storage keys must be 1-{MAX_KEY_LENGTH} bytes of UTF-8")


def _encode(
    key: str, value: dict[str, Any], version: int, owner: Owner | None, expires_at: float | None
) -> RawRecord:
    who = owner or ANONYMOUS
    return RawRecord(
        key=key,
        value=json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        version=version,
        owner=who.principal,
        owner_json=json.dumps(who.to_dict(), separators=(",", ":")),
        expires_at=expires_at,
    )


class KVStore(ABC):
    """A kv namespace. Subclasses implement the primitives; this class owns the rules."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    # --- public API ---------------------------------------------------------------

    async def get(self, key: str) -> KVRecord | None:
        """The live record under ``key``, or None (absent or expired)."""
        _check_key(key)
        raw = await self._get(key)
        return self._live(raw, time.time())

    async def put(
        self,
        key: str,
        value: dict[str, Any],
        *,
        owner: Owner | None = None,
        ttl: float | None = None,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> KVRecord:
        """Write ``value``. Conditional forms raise PreconditionFailedError when they lose."""
        _check_key(key)
        if if_absent and if_version is not None:
            raise ValueError("if_absent and if_version are exclusive")
        now = time.time()
        if if_absent:
            cond = Condition("absent", now)
            version = 1
        elif if_version is not None:
            cond = Condition("version", now, if_version)
            version = if_version + 1
        else:
            # An unconditional put still bumps the version: read it first. The race
            # here only affects the version number, never the write itself.
            current = self._live(await self._get(key), now)
            cond = Condition("none", now)
            version = current.version + 1 if current else 1
        raw = _encode(key, value, version, owner, now + ttl if ttl is not None else None)
        if not await self._put(raw, cond):
            what = "exists" if cond.kind == "absent" else f"is not at version {if_version}"
            raise PreconditionFailedError(f"record {key!r} {what}")
        return self._decode(raw)

    async def create_many(
        self, items: Sequence[tuple[str, dict[str, Any], Owner | None]]
    ) -> builtins.list[bool]:
        """``put(key, value, owner=owner, if_absent=True)`` for each item, in one go
        where the backend can; per item, True when written, False when a live record
        held the key. For bulk writers of fresh keys (the chat completion history)."""
        now = time.time()
        raws = []
        for key, value, owner in items:
            _check_key(key)
            raws.append(_encode(key, value, 1, owner, None))
        return await self._put_many(raws, Condition("absent", now))

    async def incr(
        self,
        key: str,
        deltas: dict[str, int],
        *,
        limits: dict[str, int] | None = None,
        ttl: float | None = None,
        owner: Owner | None = None,
    ) -> dict[str, int] | None:
        """Add ``deltas`` to the counters under ``key`` atomically; every count after it.

        Creates the record when absent or expired (counting from 0, expiring ``ttl``
        seconds from now, owned by ``owner``); a live record keeps its expiry and owner.
        With ``limits``, the whole increment is refused (None, nothing written) when any
        field would end above its limit. See the module docstring for the cases.
        """
        _check_key(key)
        limits = dict(limits or {})
        if not deltas and not limits:
            raise ValueError("incr needs at least one field")
        for name, number in (*deltas.items(), *limits.items()):
            if not _COUNTER_FIELD.fullmatch(name):
                raise ValueError(f"invalid counter field {name!r}: use [A-Za-z0-9_], 1-64")
            if type(number) is not int:
                raise ValueError(f"counter {name!r}: {number!r} is not an integer")
        now = time.time()
        who = owner or ANONYMOUS
        return await self._incr(
            Increment(
                key=key,
                deltas={**dict.fromkeys(limits, 0), **deltas},
                limits=limits,
                now=now,
                expires_at=now + ttl if ttl is not None else None,
                owner=who.principal,
                owner_json=json.dumps(who.to_dict(), separators=(",", ":")),
            )
        )

    async def delete(self, key: str, *, if_version: int | None = None) -> bool:
        """Delete ``key``; False when there was no live record."""
        _check_key(key)
        now = time.time()
        cond = Condition("version", now, if_version) if if_version is not None else Condition(
            "none", now
        )
        existed = await self._delete(key, cond)
        if not existed and if_version is not None:
            raise PreconditionFailedError(f"record {key!r} is not at version {if_version}")
        return existed

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int = 100,
        after: str | None = None,
        before: str | None = None,
        order: Order = "asc",
        owner: str | None = None,
    ) -> KVPage:
        """Live records whose key starts with ``prefix``, in key order.

        ``after``/``before`` are cursors from an earlier page, exclusive bounds in the
        direction of ``order``. ``after`` pages forward: the first ``limit`` records
        past it. ``before`` alone pages back: the ``limit`` records just before it,
        still in ``order``, with ``has_more`` telling whether earlier ones exist. Both
        together: the first ``limit`` records between them. ``owner`` keeps only one
        principal's records.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit"
            )
        start = decode_cursor(after, "after") if after else None
        stop = decode_cursor(before, "before") if before else None
        if stop is not None and start is None:
            # Paging back: the page is the `limit` records just before `stop`, so scan
            # away from it and flip; has_more then says whether earlier pages exist.
            back = await self._collect(
                prefix, stop, None, "desc" if order == "asc" else "asc", limit, owner
            )
            return KVPage(back.records[::-1], back.has_more)
        return await self._collect(prefix, start, stop, order, limit, owner)

    async def _collect(
        self,
        prefix: str,
        start: str | None,
        stop: str | None,
        order: Order,
        limit: int,
        owner: str | None,
    ) -> KVPage:
        now = time.time()
        out: list[KVRecord] = []
        cursor = start
        # Expired records are filtered here, so a backend page may come back short:
        # keep scanning until the page is full or the range ends.
        while True:
            want = limit + 1 - len(out)
            batch = await self._scan(prefix, cursor, order, max(want, 16), owner)
            for raw in batch:
                if stop is not None and (raw.key >= stop if order == "asc" else raw.key <= stop):
                    return KVPage(out[:limit], len(out) > limit)
                rec = self._live(raw, now)
                if rec is not None:
                    out.append(rec)
                    if len(out) > limit:
                        return KVPage(out[:limit], True)
            if len(batch) < max(want, 16):
                return KVPage(out, False)
            cursor = batch[-1].key

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # --- primitives ------------------------------------------------------------------

    @abstractmethod
    async def _get(self, key: str) -> RawRecord | None:
        """The stored record, expired or not."""

    @abstractmethod
    async def _put(self, raw: RawRecord, cond: Condition) -> bool:
        """Write atomically under ``cond``; False when the condition failed."""

    async def _put_many(
        self, raws: Sequence[RawRecord], cond: Condition
    ) -> builtins.list[bool]:
        """`_put` of each record under one ``cond``. Backends that can batch (one
        round trip, one transaction) override it; each write stays atomic on its own."""
        return [await self._put(raw, cond) for raw in raws]

    @abstractmethod
    async def _delete(self, key: str, cond: Condition) -> bool:
        """Delete atomically under ``cond``; True when a live record was removed."""

    @abstractmethod
    async def _incr(self, inc: Increment) -> dict[str, int] | None:
        """Apply ``inc`` atomically (see the module docstring); None when refused."""

    @abstractmethod
    async def _scan(
        self, prefix: str, start_after: str | None, order: Order, limit: int, owner: str | None
    ) -> builtins.list[RawRecord]:
        """Up to ``limit`` records with ``prefix``, strictly after ``start_after`` in ``order``."""

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _decode(raw: RawRecord) -> KVRecord:
        return KVRecord(
            key=raw.key,
            value=json.loads(raw.value),
            version=raw.version,
            owner=Owner.from_dict(json.loads(raw.owner_json)),
            expires_at=raw.expires_at,
        )

    def _live(self, raw: RawRecord | None, now: float) -> KVRecord | None:
        if raw is None or (raw.expires_at is not None and raw.expires_at <= now):
            return None
        return self._decode(raw)


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str
    etag: str | None = None
    last_modified: float | None = None


class BlobStore(ABC):
    """A blob prefix. Keys are relative to the store's prefix."""

    chunk_size = 1024 * 1024

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def put(
        self,
        key: str,
        data: bytes | AsyncIterator[bytes],
        *,
        content_type: str = "application/octet-stream",
    ) -> BlobInfo:
        """Store bytes, or consume an async stream of chunks without holding it all."""
        self._check_key(key)
        if isinstance(data, bytes | bytearray | memoryview):
            return await self._put_bytes(key, bytes(data), content_type)
        return await self._put_stream(key, data, content_type)

    async def get(self, key: str) -> bytes:
        chunks = [c async for c in await self.stream(key)]
        return b"".join(chunks)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object in chunks. Raises NotFoundError before the first chunk if absent."""
        self._check_key(key)
        return await self._open_stream(key)

    async def head(self, key: str) -> BlobInfo:
        self._check_key(key)
        info = await self._head(key)
        if info is None:
            raise NotFoundError(f"object {key!r} not found")
        return info

    async def exists(self, key: str) -> bool:
        self._check_key(key)
        return await self._head(key) is not None

    async def delete(self, key: str) -> bool:
        self._check_key(key)
        return await self._delete(key)

    async def download_url(self, key: str, *, expires_s: int, content_type: str,
                           filename: str) -> str | None:
        """A URL serving the object directly for ``expires_s`` seconds, with that content
        type and as an attachment named ``filename`` (S3: a presigned GET); None where
        the store has none (a local folder), and the caller streams the object."""
        self._check_key(key)
        return None

    async def list(self, prefix: str = "") -> list[BlobInfo]:
        """Every object under ``prefix``, in key order."""
        return sorted(await self._list(prefix), key=lambda b: b.key)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @staticmethod
    def _check_key(key: str) -> None:
        parts = key.split("/")
        if not key or len(key) > MAX_KEY_LENGTH or any(p in ("", ".", "..") for p in parts):
            raise InvalidRequestError(f"invalid object key {key!r}")

    @abstractmethod
    async def _put_bytes(self, key: str, data: bytes, content_type: str) -> BlobInfo: ...

    @abstractmethod
    async def _put_stream(
        self, key: str, data: AsyncIterator[bytes], content_type: str
    ) -> BlobInfo: ...

    @abstractmethod
    async def _open_stream(self, key: str) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def _head(self, key: str) -> BlobInfo | None: ...

    @abstractmethod
    async def _delete(self, key: str) -> bool: ...

    @abstractmethod
    async def _list(self, prefix: str) -> builtins.list[BlobInfo]: ...
