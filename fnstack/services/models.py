"""The models service: the routing table of kind ``model`` behind /v1/models.

Every call takes the caller's principal and asks the access policy: a model the caller
may not read is a 404 (existence does not leak), an action it may not take on a model
it can see is a 403. Under the default policy every principal reads the deployment's
models and only admins register or delete them.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.common import ProviderModel
from fnstack.api.inference import InferenceProvider
from fnstack.api.models import Model, ModelDeleted, ModelList, RegisterModelRequest
from fnstack.errors import ConflictError, InvalidRequestError, NotFoundError
from fnstack.records import authorize, readable
from fnstack.routing import RoutingEntry, RoutingTable
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["ModelsService", "spec"]

KIND = "model"


def to_model(entry: RoutingEntry) -> Model:
    model_type: Literal["llm", "embedding"] = (
        "embedding" if entry.resource_type == "embedding" else "llm"
    )
    return Model(
        id=entry.identifier,
        created=entry.created,
        owned_by=entry.provider_id,
        provider_id=entry.provider_id,
        provider_resource_id=entry.provider_resource_id,
        model_type=model_type,
        metadata=entry.metadata,
        identifier=entry.identifier,
        # As Llama Stack builds it: its own keys first, the model's metadata (e.g.
        # embedding_dimension) merged in after.
        custom_metadata={
            "model_type": model_type,
            "provider_id": entry.provider_id,
            "provider_resource_id": entry.provider_resource_id,
            **entry.metadata,
        },
    )


class ModelsService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.policy = ctx.policy
        self.providers = ctx.providers
        self._specs = ctx.provider_specs
        cfg = ctx.config
        started = int(time.time())
        self.table = RoutingTable(
            KIND,
            ctx.stores.kv("registry"),
            config_entries=[
                RoutingEntry(
                    identifier=m.model_id,
                    provider_id=m.provider_id or self._default_provider(m.model_id),
                    provider_resource_id=m.provider_model_id or m.model_id,
                    resource_type=m.model_type,
                    metadata=m.metadata,
                    source="config",
                    created=started,
                )
                for m in cfg.registered_resources.models
            ],
            provider_ids=list(ctx.providers),
            reporter=self._report,
            refresh_ttl_s=cfg.registry.refresh_ttl_s,
            lookup_ttl_s=cfg.registry.lookup_ttl_s,
        )
        self._started = started

    async def _report(self, provider_id: str) -> tuple[list[RoutingEntry], bool]:
        provider: Any = self.providers[provider_id]
        models: list[ProviderModel] = list(await provider.list_models())
        should = getattr(provider, "should_refresh_models", None)
        changing = bool(should()) if callable(should) else True
        entries = [
            RoutingEntry(
                identifier=m.provider_resource_id,
                provider_id=provider_id,
                provider_resource_id=m.provider_resource_id,
                resource_type=m.model_type,
                metadata=m.metadata,
                source="provider",
                created=self._started,
            )
            for m in models
        ]
        return entries, changing

    # --- routing (for the inference service) --------------------------------------------

    async def resolve(self, model_id: str, user: Owner) -> RoutingEntry:
        """The entry for ``model_id`` if the caller may use it, else a 404."""
        entry = await self.table.find(model_id)
        if entry is None or not readable(self.policy, KIND, entry.identifier,
                                         entry.owned_by, user):
            raise _not_found(model_id)
        return entry

    def provider(self, provider_id: str) -> Any:
        return self.providers[provider_id]

    def hooks(self, provider_id: str) -> tuple[str, ...]:
        """The optional hooks the provider declares (e.g. ``tokenizer``)."""
        spec = self._specs.get(provider_id)
        return tuple(spec.hooks) if spec is not None else ()

    # --- the Models API ------------------------------------------------------------

    async def list_models(self, user: Owner) -> ModelList:
        entries = await self.table.all_entries()
        return ModelList(data=[to_model(e) for e in entries
                               if readable(self.policy, KIND, e.identifier, e.owned_by, user)])

    async def get_model(self, model_id: str, user: Owner) -> Model:
        return to_model(await self.resolve(model_id, user))

    async def register_model(self, request: RegisterModelRequest, user: Owner) -> Model:
        authorize(self.policy, "create", KIND, request.model_id, user, user)
        provider_id = request.provider_id or self._default_provider(request.model_id)
        if provider_id not in self.providers:
            raise InvalidRequestError(
                f"unknown provider {provider_id!r}; inference providers: "
                f"{', '.join(self.providers) or 'none'}",
                param="provider_id",
            )
        resource_id = request.provider_model_id or request.model_id
        metadata = dict(request.metadata)
        reported = {e.provider_resource_id: e for e in await self.table.reported(provider_id)}
        if resource_id in reported:
            metadata = {**reported[resource_id].metadata, **metadata}
        if request.model_type == "embedding" and "embedding_dimension" not in metadata:
            raise InvalidRequestError(
                "an embedding model needs metadata.embedding_dimension (the provider does not "
                "report one for this model)",
                param="metadata.embedding_dimension",
            )
        if await self.table.find(request.model_id) is not None:
            raise ConflictError(
                f"model {request.model_id!r} already exists; delete it first or pick another id",
                param="model_id",
            )
        entry = await self.table.register(
            RoutingEntry(
                identifier=request.model_id,
                provider_id=provider_id,
                provider_resource_id=resource_id,
                resource_type=request.model_type,
                metadata=metadata,
            ),
            user,
        )
        return to_model(entry)

    async def unregister_model(self, model_id: str, user: Owner) -> ModelDeleted:
        entry = await self.resolve(model_id, user)
        if entry.source != "api" or await self.table.stored(model_id) is None:
            origin = ("run config" if entry.source == "config"
                      else f"provider {entry.provider_id}")
            raise InvalidRequestError(
                f"model {model_id!r} comes from the {origin}; only models registered with "
                "POST /v1/models can be deleted",
                param="model_id",
                code="model_not_deletable",
            )
        authorize(self.policy, "delete", KIND, model_id, entry.owned_by, user)
        if not await self.table.unregister(model_id):
            raise _not_found(model_id)
        return ModelDeleted(id=model_id)

    def _default_provider(self, model_id: str) -> str:
        ids = list(self.providers)
        if len(ids) == 1:
            return ids[0]
        raise InvalidRequestError(
            f"model {model_id!r} needs a provider_id: {len(ids)} inference providers are "
            f"configured ({', '.join(ids) or 'none'})",
            param="provider_id",
        )


def _not_found(model_id: str) -> NotFoundError:
    return NotFoundError(
        f"model {model_id!r} not found; list the available models with GET /v1/models "
        "(`client.models.list()`), or register one with POST /v1/models",
        param="model",
        code="model_not_found",
    )


async def _build(ctx: ServiceContext) -> ModelsService:
    return ModelsService(ctx)


def _router() -> APIRouter:
    from fnstack.routes.models import router

    return router


spec = ServiceSpec(
    name="models",
    apis=(Api.models,),
    factory=_build,
    router=_router,
    stores=(StoreNeed("registry"),),
    provider_api=Api.inference,
    provider_protocol=InferenceProvider,
    description="the routing table of models: list, get, register, delete",
)
