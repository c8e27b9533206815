"""The routing table: public resource id -> provider + the provider's own id.

One table type, instantiated per resource kind (models now; vector stores, shields,
tool groups, prompts, datasets, benchmarks later). Three sources, looked up in order:

1. entries from the run config (in memory; they are the config),
2. entries registered through the API (the ``registry`` kv store under ``KIND:``; on
   AWS the DynamoDB table, so every function sees them), each with its owner,
3. what each provider reports it serves, cached per process and refreshed after
   ``refresh_ttl_s``, never on every request.

Store lookups (source 2) are reused for ``lookup_ttl_s``, hits and misses alike, so a
request does not pay a store read. Writes through this process drop its cached answer
at once; an entry registered or deleted through another process (another Lambda
function) shows here within that TTL.

An id may be qualified as ``provider_id/resource``; provider-reported entries are
listed unqualified unless two providers report the same id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from fnstack.errors import ConflictError, PreconditionFailedError
from fnstack.storage import KVStore, Owner

__all__ = ["Reporter", "RoutingEntry", "RoutingTable"]

log = logging.getLogger("fnstack.routing")


class RoutingEntry(BaseModel):
    """One routed resource. Kinds add their own fields in ``metadata`` or by subclassing."""

    identifier: str
    provider_id: str
    provider_resource_id: str
    # Kind-specific type (a model's "llm" / "embedding").
    resource_type: str = ""
    metadata: dict[str, Any] = {}
    owner: dict[str, Any] = {}
    source: Literal["config", "api", "provider"] = "api"
    created: int = 0

    @property
    def owned_by(self) -> Owner | None:
        return Owner.from_dict(self.owner) if self.owner else None


# Asks one provider what it serves now: (entries' provider_resource_id, type, metadata),
# and whether the answer may change (False: listed once, never refreshed).
Reporter = Callable[[str], Awaitable[tuple[list[RoutingEntry], bool]]]

# Most store lookups to remember; past it the memo starts over, so a client sending
# made-up ids cannot grow it without bound.
_LOOKUP_CACHE_SIZE = 1024


class _ProviderCache:
    def __init__(self) -> None:
        self.entries: list[RoutingEntry] = []
        self.fetched_at: float | None = None
        self.static = False
        self.lock = asyncio.Lock()


class RoutingTable:
    """The routing table of one resource kind."""

    def __init__(
        self,
        kind: str,
        store: KVStore,
        *,
        config_entries: Sequence[RoutingEntry] = (),
        provider_ids: Sequence[str] = (),
        reporter: Reporter | None = None,
        refresh_ttl_s: float = 300.0,
        lookup_ttl_s: float = 2.0,
    ) -> None:
        self.kind = kind
        self.store = store
        self._prefix = f"{kind}:"
        self.provider_ids = list(provider_ids)
        self._reporter = reporter
        self._ttl = refresh_ttl_s
        self._lookup_ttl = lookup_ttl_s
        self._config = {e.identifier: e for e in config_entries}
        self._cache: dict[str, _ProviderCache] = {}
        self._lookups: dict[str, tuple[float, RoutingEntry | None]] = {}
        # The provider entries, rebuilt only when a provider's list was re-fetched.
        self._provider_memo: tuple[tuple[float | None, ...], list[RoutingEntry]] | None = None

    # --- lookups -------------------------------------------------------------------

    async def find(self, identifier: str) -> RoutingEntry | None:
        if identifier in self._config:
            return self._config[identifier]
        stored = await self.stored(identifier)
        if stored is not None:
            return stored
        for e in await self.provider_entries():
            if e.identifier == identifier:
                return e
        # `provider_id/resource`: route to that provider even if the unqualified name is
        # ambiguous, or the provider does not list what it serves.
        pid, sep, rest = identifier.partition("/")
        if sep and rest and pid in self.provider_ids:
            reported = await self.reported(pid)
            match = next((e for e in reported if e.provider_resource_id == rest), None)
            if match is not None:
                return match.model_copy(update={"identifier": identifier})
            if not reported:
                return RoutingEntry(identifier=identifier, provider_id=pid,
                                    provider_resource_id=rest, source="provider")
        return None

    async def stored(self, identifier: str) -> RoutingEntry | None:
        """The entry registered through the API, read through the lookup memo."""
        now = time.monotonic()
        hit = self._lookups.get(identifier)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.store.get(self._prefix + identifier)
        entry = RoutingEntry.model_validate(record.value) if record is not None else None
        if self._lookup_ttl > 0:
            if len(self._lookups) >= _LOOKUP_CACHE_SIZE:
                self._lookups.clear()
            self._lookups[identifier] = (now + self._lookup_ttl, entry)
        return entry

    def config_entry(self, identifier: str) -> RoutingEntry | None:
        return self._config.get(identifier)

    async def all_entries(self) -> list[RoutingEntry]:
        entries: dict[str, RoutingEntry] = dict(self._config)
        cursor: str | None = None
        while True:
            page = await self.store.list(self._prefix, limit=1000, after=cursor)
            for rec in page.records:
                e = RoutingEntry.model_validate(rec.value)
                entries.setdefault(e.identifier, e)
            if not page.has_more:
                break
            cursor = page.last_cursor
        for e in await self.provider_entries():
            entries.setdefault(e.identifier, e)
        return sorted(entries.values(), key=lambda e: e.identifier)

    # --- API-registered entries ---------------------------------------------------------

    async def register(self, entry: RoutingEntry, owner: Owner) -> RoutingEntry:
        entry = entry.model_copy(update={"owner": owner.to_dict(), "source": "api",
                                         "created": entry.created or int(time.time())})
        try:
            await self.store.put(self._prefix + entry.identifier, entry.model_dump(),
                                 owner=owner, if_absent=True)
        except PreconditionFailedError:
            raise ConflictError(
                f"{self.kind} {entry.identifier!r} already exists", param="id"
            ) from None
        finally:
            self._lookups.pop(entry.identifier, None)
        return entry

    async def unregister(self, identifier: str) -> bool:
        try:
            return await self.store.delete(self._prefix + identifier)
        finally:
            self._lookups.pop(identifier, None)

    # --- provider-reported entries --------------------------------------------------------

    async def provider_entries(self) -> list[RoutingEntry]:
        ids = self.provider_ids
        reported = {pid: await self.reported(pid) for pid in ids}
        # Every routed request walks these; rebuild them only after a provider's list
        # was fetched again (its fetch time is the version of its list).
        version = tuple(self._cache[pid].fetched_at for pid in ids)
        if self._provider_memo is not None and self._provider_memo[0] == version:
            return self._provider_memo[1]
        counts: dict[str, int] = {}
        for entries in reported.values():
            for e in entries:
                counts[e.provider_resource_id] = counts.get(e.provider_resource_id, 0) + 1
        out = []
        for pid, entries in reported.items():
            for e in entries:
                unique = counts[e.provider_resource_id] == 1
                ident = e.provider_resource_id if unique else f"{pid}/{e.provider_resource_id}"
                out.append(e.model_copy(update={"identifier": ident}))
        self._provider_memo = (version, out)
        return out

    async def reported(self, provider_id: str) -> list[RoutingEntry]:
        """What ``provider_id`` reports, from the per-process cache when fresh."""
        cache = self._cache.setdefault(provider_id, _ProviderCache())
        if self._fresh(cache) or self._reporter is None:
            return cache.entries
        async with cache.lock:
            # Another request may have refreshed it while we waited.
            if self._fresh(cache):
                return cache.entries
            try:
                cache.entries, changing = await self._reporter(provider_id)
                cache.static = not changing
            except Exception:
                # Keep serving the last good list; an upstream blip must not empty it.
                log.warning("listing %ss failed", self.kind,
                            extra={"provider_id": provider_id}, exc_info=True)
            cache.fetched_at = time.monotonic()
            return cache.entries

    def _fresh(self, cache: _ProviderCache) -> bool:
        if cache.fetched_at is None:
            return False
        return cache.static or time.monotonic() - cache.fetched_at < self._ttl

