"""The routing table: public model id -> provider + the provider's own model id.

Three sources, looked up in this order:

1. ``registered_resources`` in the run config (in memory; they are the config),
2. models registered through ``POST /v1/models`` (the ``registry`` kv store; on AWS
   the DynamoDB table, so every function sees them),
3. what each provider reports it serves, cached per process and refreshed after
   ``registry.refresh_ttl_s``, never on every request.

Store lookups (source 2) are reused for ``registry.lookup_ttl_s`` (2 s by default),
hits and misses alike, so an inference request does not pay a store read. Writes
through this process drop its cached answer at once; a model registered or deleted
through another process (another Lambda function) shows here within that TTL.

A model id may be qualified as ``provider_id/model``; provider-reported models are
listed unqualified unless two providers report the same id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from fnstack.api.models import Model, ModelDeleted, ModelList, RegisterModelRequest
from fnstack.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
)
from fnstack.spec import Api, ProviderModel
from fnstack.storage import KVStore, Owner

if TYPE_CHECKING:
    from fnstack.stack import Stack

__all__ = ["ModelEntry", "Registry"]

log = logging.getLogger("fnstack.registry")

_KEY = "model:"


class ModelEntry(BaseModel):
    identifier: str
    provider_id: str
    provider_resource_id: str
    model_type: Literal["llm", "embedding"] = "llm"
    metadata: dict[str, Any] = {}
    owner: dict[str, Any] = {}
    source: Literal["config", "api", "provider"] = "api"
    created: int = 0

    def to_model(self) -> Model:
        return Model(
            id=self.identifier,
            created=self.created,
            owned_by=self.provider_id,
            provider_id=self.provider_id,
            provider_resource_id=self.provider_resource_id,
            model_type=self.model_type,
            metadata=self.metadata,
        )


class _ProviderCache:
    def __init__(self) -> None:
        self.models: list[ProviderModel] = []
        self.fetched_at: float | None = None
        # A provider may say its list never changes (refresh_models: false): listed once.
        self.static = False
        self.lock = asyncio.Lock()


def _wants_refresh(provider: Any) -> bool:
    should = getattr(provider, "should_refresh_models", None)
    return bool(should()) if callable(should) else True


# Most store lookups to remember; past it the memo starts over, so a client sending
# made-up model ids cannot grow it without bound.
_LOOKUP_CACHE_SIZE = 1024


class Registry:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._ttl = stack.config.registry.refresh_ttl_s
        self._lookup_ttl = stack.config.registry.lookup_ttl_s
        self._started = int(time.time())
        self._cache: dict[str, _ProviderCache] = {}
        self._config_entries = {e.identifier: e for e in self._from_config()}
        # model id -> (monotonic expiry, the stored entry or None for "not stored")
        self._lookups: dict[str, tuple[float, ModelEntry | None]] = {}
        # The provider entries, rebuilt only when a provider's list was re-fetched.
        self._provider_memo: tuple[tuple[float | None, ...], list[ModelEntry]] | None = None

    # --- the Models API ------------------------------------------------------------

    async def list_models(self) -> ModelList:
        entries = await self.all_entries()
        return ModelList(data=[e.to_model() for e in entries])

    async def get_model(self, model_id: str) -> Model:
        return (await self.resolve(model_id)).to_model()

    async def register_model(
        self, request: RegisterModelRequest, owner: Owner | None = None
    ) -> Model:
        provider_id = request.provider_id or self._default_provider(request.model_id)
        if provider_id not in self.stack.provider_ids(Api.inference):
            raise InvalidRequestError(
                f"unknown provider {provider_id!r}; inference providers: "
                f"{', '.join(self.stack.provider_ids(Api.inference)) or 'none'}",
                param="provider_id",
            )
        resource_id = request.provider_model_id or request.model_id
        metadata = dict(request.metadata)
        reported = {m.provider_resource_id: m for m in await self._reported(provider_id)}
        if resource_id in reported:
            metadata = {**reported[resource_id].metadata, **metadata}
        if request.model_type == "embedding" and "embedding_dimension" not in metadata:
            raise InvalidRequestError(
                "an embedding model needs metadata.embedding_dimension (the provider does not "
                "report one for this model)",
                param="metadata.embedding_dimension",
            )
        if await self._find(request.model_id) is not None:
            raise ConflictError(
                f"model {request.model_id!r} already exists; delete it first or pick another id",
                param="model_id",
            )
        entry = ModelEntry(
            identifier=request.model_id,
            provider_id=provider_id,
            provider_resource_id=resource_id,
            model_type=request.model_type,
            metadata=metadata,
            owner=(owner or Owner()).to_dict(),
            source="api",
            created=int(time.time()),
        )
        try:
            await self._store().put(
                _KEY + entry.identifier, entry.model_dump(), owner=owner, if_absent=True
            )
        except PreconditionFailedError:
            raise ConflictError(
                f"model {request.model_id!r} already exists", param="model_id"
            ) from None
        finally:
            self._lookups.pop(entry.identifier, None)
        return entry.to_model()

    async def unregister_model(self, model_id: str) -> ModelDeleted:
        record = await self._store().get(_KEY + model_id)
        if record is None:
            entry = await self._find(model_id)
            if entry is None:
                raise self._not_found(model_id)
            raise InvalidRequestError(
                f"model {model_id!r} comes from the {entry.source} "
                f"({'run config' if entry.source == 'config' else 'provider ' + entry.provider_id}"
                "); only models registered with POST /v1/models can be deleted",
                param="model_id",
                code="model_not_deletable",
            )
        try:
            await self._store().delete(_KEY + model_id)
        finally:
            self._lookups.pop(model_id, None)
        return ModelDeleted(id=model_id)

    # --- routing ------------------------------------------------------------------------

    async def resolve(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``, or a 404 that says how to list the models."""
        entry = await self._find(model_id)
        if entry is None:
            raise self._not_found(model_id)
        return entry

    async def all_entries(self) -> list[ModelEntry]:
        entries: dict[str, ModelEntry] = dict(self._config_entries)
        page_after: str | None = None
        while True:
            page = await self._store().list(_KEY, limit=1000, after=page_after)
            for rec in page.records:
                e = ModelEntry.model_validate(rec.value)
                entries.setdefault(e.identifier, e)
            if not page.has_more:
                break
            page_after = page.last_cursor
        for e in await self._provider_entries():
            entries.setdefault(e.identifier, e)
        return sorted(entries.values(), key=lambda e: e.identifier)

    async def _find(self, model_id: str) -> ModelEntry | None:
        if model_id in self._config_entries:
            return self._config_entries[model_id]
        stored = await self._stored(model_id)
        if stored is not None:
            return stored
        for e in await self._provider_entries():
            if e.identifier == model_id:
                return e
        # `provider_id/model`: route to that provider even if the unqualified name is
        # ambiguous, or the provider does not list its models.
        pid, sep, rest = model_id.partition("/")
        if sep and rest and pid in self.stack.provider_ids(Api.inference):
            reported = await self._reported(pid)
            match = next((m for m in reported if m.provider_resource_id == rest), None)
            if match is not None:
                return self._entry(pid, match, model_id)
            if not reported:
                return self._entry(pid, ProviderModel(provider_resource_id=rest), model_id)
        return None

    async def _stored(self, model_id: str) -> ModelEntry | None:
        """The entry registered with POST /v1/models, read through the lookup memo."""
        now = time.monotonic()
        hit = self._lookups.get(model_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self._store().get(_KEY + model_id)
        entry = ModelEntry.model_validate(record.value) if record is not None else None
        if self._lookup_ttl > 0:
            if len(self._lookups) >= _LOOKUP_CACHE_SIZE:
                self._lookups.clear()
            self._lookups[model_id] = (now + self._lookup_ttl, entry)
        return entry

    def _not_found(self, model_id: str) -> NotFoundError:
        return NotFoundError(
            f"model {model_id!r} not found; list the available models with GET /v1/models "
            "(`client.models.list()`), or register one with POST /v1/models",
            param="model",
            code="model_not_found",
        )

    # --- sources -------------------------------------------------------------------------

    def _store(self) -> KVStore:
        return self.stack.stores.kv("registry")

    def _from_config(self) -> list[ModelEntry]:
        out = []
        for m in self.stack.config.registered_resources.models:
            out.append(
                ModelEntry(
                    identifier=m.model_id,
                    provider_id=m.provider_id or self._default_provider(m.model_id),
                    provider_resource_id=m.provider_model_id or m.model_id,
                    model_type=m.model_type,
                    metadata=m.metadata,
                    source="config",
                    created=self._started,
                )
            )
        return out

    def _default_provider(self, model_id: str) -> str:
        ids = self.stack.provider_ids(Api.inference)
        if len(ids) == 1:
            return ids[0]
        raise InvalidRequestError(
            f"model {model_id!r} needs a provider_id: {len(ids)} inference providers are "
            f"configured ({', '.join(ids) or 'none'})",
            param="provider_id",
        )

    def _entry(self, provider_id: str, m: ProviderModel, identifier: str) -> ModelEntry:
        return ModelEntry(
            identifier=identifier,
            provider_id=provider_id,
            provider_resource_id=m.provider_resource_id,
            model_type=m.model_type,
            metadata=m.metadata,
            source="provider",
            created=self._started,
        )

    async def _provider_entries(self) -> list[ModelEntry]:
        ids = self.stack.provider_ids(Api.inference)
        reported = {pid: await self._reported(pid) for pid in ids}
        # Every routed request walks these; rebuild them only after a provider's list
        # was fetched again (its fetch time is the version of its list).
        version = tuple(self._cache[pid].fetched_at for pid in ids)
        if self._provider_memo is not None and self._provider_memo[0] == version:
            return self._provider_memo[1]
        counts: dict[str, int] = {}
        for models in reported.values():
            for m in models:
                counts[m.provider_resource_id] = counts.get(m.provider_resource_id, 0) + 1
        out = []
        for pid, models in reported.items():
            for m in models:
                unique = counts[m.provider_resource_id] == 1
                ident = m.provider_resource_id if unique else f"{pid}/{m.provider_resource_id}"
                out.append(self._entry(pid, m, ident))
        self._provider_memo = (version, out)
        return out

    async def _reported(self, provider_id: str) -> list[ProviderModel]:
        cache = self._cache.setdefault(provider_id, _ProviderCache())
        if self._fresh(cache):
            return cache.models
        async with cache.lock:
            # Another request may have refreshed it while we waited.
            if self._fresh(cache):
                return cache.models
            try:
                provider = await self.stack.provider(provider_id)
                cache.models = list(await provider.list_models())
                cache.static = not _wants_refresh(provider)
            except Exception:
                # Keep serving the last good list; an upstream blip must not empty it.
                log.warning("listing models failed", extra={"provider_id": provider_id},
                            exc_info=True)
            cache.fetched_at = time.monotonic()
            return cache.models

    def _fresh(self, cache: _ProviderCache) -> bool:
        if cache.fetched_at is None:
            return False
        return cache.static or time.monotonic() - cache.fetched_at < self._ttl
