"""The safety service: the routing table of kind ``shield``, run-shield and moderations.

Shields come from the run config (``registered_resources.shields``), from
``POST /v1/shields`` (owned; admin-only under the default policy) and from what the
providers report. A shield the caller may not read is a 404, as models are.

Providers that classify with an LLM (``inline::llm-judge``) declare the ``inference``
hook: they get a function that sends a chat completion through the inference service
as the caller whose request is being checked (their tokens count to the caller's
quota, and the judge model must be one the caller may use).
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from fastapi import APIRouter

from fnstack.api.inference import ChatCompletion, ChatCompletionRequest, Message
from fnstack.api.safety import (
    ModerationInput,
    ModerationRequest,
    ModerationResponse,
    ProviderShield,
    RegisterShieldRequest,
    RunShieldRequest,
    RunShieldResponse,
    SafetyProvider,
    SafetyViolation,
    Shield,
    ShieldDeleted,
    ShieldList,
)
from fnstack.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from fnstack.records import authorize, check_storable, readable
from fnstack.routing import RoutingEntry, RoutingTable
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.services.inference import ChatStream, InferenceService
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["SafetyService", "spec"]

KIND = "shield"

# OpenAI's moderation models: a client that names one (the SDK's examples do) gets the
# default shield unless a shield is registered under that name.
OPENAI_MODERATION_MODELS = frozenset({
    "omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
    "text-moderation-stable", "text-moderation-007",
})

# Whose request a judge call classifies: set around each provider call.
_caller: contextvars.ContextVar[Owner] = contextvars.ContextVar("fnstack_safety_caller")


def to_shield(entry: RoutingEntry) -> Shield:
    return Shield(
        identifier=entry.identifier,
        provider_id=entry.provider_id,
        provider_resource_id=entry.provider_resource_id,
        params=entry.metadata,
        created=entry.created,
        source=entry.source,
    )


class SafetyService(Service):
    def __init__(self, ctx: ServiceContext, inference: InferenceService | None) -> None:
        self.policy = ctx.policy
        self.providers: dict[str, SafetyProvider] = dict(ctx.providers)
        self.inference = inference
        started = int(time.time())
        self._started = started
        entries = []
        for i, s in enumerate(ctx.config.registered_resources.shields):
            provider_id = s.provider_id or self._default_provider(s.shield_id, config=True)
            if provider_id not in self.providers:
                raise ConfigError(
                    f"shield {s.shield_id!r} names provider {provider_id!r}, which is not a "
                    f"safety provider (configured: {', '.join(self.providers) or 'none'})",
                    path=f"registered_resources.shields[{i}].provider_id",
                )
            entries.append(RoutingEntry(
                identifier=s.shield_id,
                provider_id=provider_id,
                provider_resource_id=s.provider_shield_id or s.shield_id,
                metadata=s.params,
                source="config",
                created=started,
            ))
        # The first shield of the run config answers moderations that name none.
        self.default_shield = entries[0].identifier if entries else None
        cfg = ctx.config
        self.table = RoutingTable(
            KIND,
            ctx.stores.kv("registry"),
            config_entries=entries,
            provider_ids=list(self.providers),
            reporter=self._report,
            refresh_ttl_s=cfg.registry.refresh_ttl_s,
            lookup_ttl_s=cfg.registry.lookup_ttl_s,
        )
        for pid, pspec in ctx.provider_specs.items():
            if "inference" in pspec.hooks:
                ctx.providers[pid].bind_inference(self._judge_chat)

    async def _report(self, provider_id: str) -> tuple[list[RoutingEntry], bool]:
        shields: list[ProviderShield] = await self.providers[provider_id].list_shields()
        return [
            RoutingEntry(identifier=s.provider_resource_id, provider_id=provider_id,
                         provider_resource_id=s.provider_resource_id, metadata=s.params,
                         source="provider", created=self._started)
            for s in shields
        ], False

    async def _judge_chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        if self.inference is None:
            raise InvalidRequestError("this function serves no inference for a judge model")
        who = _caller.get(Owner())
        result = await self.inference.chat_completion(
            request.model_copy(update={"stream": False}), who
        )
        if isinstance(result, ChatStream):  # never: stream is off
            await result.aclose()
            raise InvalidRequestError("the judge model answered a stream")
        return result

    # --- the registry ----------------------------------------------------------------

    async def resolve(self, shield_id: str, user: Owner, param: str = "shield_id") -> Shield:
        entry = await self.table.find(shield_id)
        if entry is None or not readable(self.policy, KIND, entry.identifier,
                                         entry.owned_by, user):
            raise _not_found(shield_id, param)
        return to_shield(entry)

    async def list_shields(self, user: Owner) -> ShieldList:
        entries = await self.table.all_entries()
        return ShieldList(data=[to_shield(e) for e in entries
                                if readable(self.policy, KIND, e.identifier, e.owned_by, user)])

    async def get_shield(self, shield_id: str, user: Owner) -> Shield:
        return await self.resolve(shield_id, user)

    async def register_shield(self, request: RegisterShieldRequest, user: Owner) -> Shield:
        check_storable(request.shield_id, "shield_id")
        check_storable(request.provider_shield_id, "provider_shield_id")
        check_storable(request.params, "params")
        authorize(self.policy, "create", KIND, request.shield_id, user, user)
        provider_id = request.provider_id or self._default_provider(request.shield_id)
        if provider_id not in self.providers:
            raise InvalidRequestError(
                f"unknown provider {provider_id!r}; safety providers: "
                f"{', '.join(self.providers) or 'none'}",
                param="provider_id",
            )
        if await self.table.find(request.shield_id) is not None:
            raise ConflictError(
                f"shield {request.shield_id!r} already exists; delete it first or pick "
                "another id",
                param="shield_id",
            )
        entry = await self.table.register(
            RoutingEntry(
                identifier=request.shield_id,
                provider_id=provider_id,
                provider_resource_id=request.provider_shield_id or request.shield_id,
                metadata=dict(request.params or {}),
            ),
            user,
        )
        shield = to_shield(entry)
        # A shield whose params the provider rejects is refused now, not at first use.
        try:
            await self._run(shield, [], {})
        except InvalidRequestError:
            await self.table.unregister(shield.identifier)
            raise
        return shield

    async def unregister_shield(self, shield_id: str, user: Owner) -> ShieldDeleted:
        await self.resolve(shield_id, user)
        entry = await self.table.stored(shield_id)
        if entry is None:
            raise InvalidRequestError(
                f"shield {shield_id!r} comes from the run config or a provider; only shields "
                "registered with POST /v1/shields can be deleted",
                param="shield_id",
                code="shield_not_deletable",
            )
        authorize(self.policy, "delete", KIND, shield_id, entry.owned_by, user)
        if not await self.table.unregister(shield_id):
            raise _not_found(shield_id, "shield_id")
        return ShieldDeleted(id=shield_id)

    def _default_provider(self, shield_id: str, *, config: bool = False) -> str:
        ids = list(self.providers)
        if len(ids) == 1:
            return ids[0]
        message = (f"shield {shield_id!r} needs a provider_id: {len(ids)} safety providers are "
                   f"configured ({', '.join(ids) or 'none'})")
        if config:
            raise ConfigError(message, path="registered_resources.shields")
        raise InvalidRequestError(message, param="provider_id")

    # --- running shields -------------------------------------------------------------

    async def _run(self, shield: Shield, messages: list[Message],
                   params: dict[str, Any]) -> RunShieldResponse:
        # No messages: the provider only checks the params (registration does this).
        return await self._provider(shield).run_shield(shield, messages, params)

    def _provider(self, shield: Shield) -> SafetyProvider:
        provider = self.providers.get(shield.provider_id)
        if provider is None:
            # Registered when the run config had that provider; it has it no more.
            raise InvalidRequestError(
                f"shield {shield.identifier!r} runs on provider {shield.provider_id!r}, which "
                f"this deployment does not configure (safety providers: "
                f"{', '.join(self.providers) or 'none'}); delete the shield and register it "
                "again on one of them",
                param="shield_id",
                code="provider_not_configured",
            )
        return provider

    async def run_shield(self, request: RunShieldRequest, user: Owner) -> RunShieldResponse:
        check_storable(request.messages, "messages")
        check_storable(request.params, "params")
        shield = await self.resolve(request.shield_id, user)
        token = _caller.set(user)
        try:
            return await self._run(shield, list(request.messages), request.params)
        finally:
            _caller.reset(token)

    async def check(
        self, shield_ids: list[str], messages: list[Message], user: Owner
    ) -> tuple[Shield, SafetyViolation] | None:
        """The first blocking (``error``) violation of these shields, in order, or None."""
        token = _caller.set(user)
        try:
            for shield_id in shield_ids:
                shield = await self.resolve(shield_id, user, param="guardrails")
                result = await self._run(shield, messages, {})
                if result.violation is not None and result.violation.violation_level == "error":
                    return shield, result.violation
            return None
        finally:
            _caller.reset(token)

    async def moderate(self, request: ModerationRequest, user: Owner) -> ModerationResponse:
        check_storable(request.input, "input")
        name = request.model or self.default_shield
        if name is None:
            raise InvalidRequestError(
                "no shield answers moderations here: name one as `model` (see GET /v1/shields)",
                param="model",
            )
        shield = await self._moderation_shield(name, user)
        inputs = _inputs(request)
        token = _caller.set(user)
        try:
            results = await self._provider(shield).moderate(shield, inputs)
        finally:
            _caller.reset(token)
        return ModerationResponse(model=request.model or shield.identifier, results=results)

    async def _moderation_shield(self, name: str, user: Owner) -> Shield:
        entry = await self.table.find(name)
        if entry is None and name in OPENAI_MODERATION_MODELS and self.default_shield:
            entry = await self.table.find(self.default_shield)
        if entry is None:
            # OpenAI clients send a model name: a shield's provider id answers too.
            entry = next((e for e in await self.table.all_entries()
                          if e.provider_resource_id == name), None)
        if entry is None or not readable(self.policy, KIND, entry.identifier,
                                         entry.owned_by, user):
            raise _not_found(name, "model")
        return to_shield(entry)


def _inputs(request: ModerationRequest) -> list[ModerationInput]:
    raw = request.input
    if isinstance(raw, str):
        return [ModerationInput(text=raw)]
    if all(isinstance(x, str) for x in raw):
        return [ModerationInput(text=str(x)) for x in raw]
    # One content-part array is one input (one result), as OpenAI counts it.
    texts: list[str] = []
    images: list[str] = []
    for part in raw:
        if isinstance(part, str):
            raise InvalidRequestError("input mixes strings and content parts", param="input")
        if part.type == "text":
            texts.append(part.text)
        else:
            images.append(part.image_url.url)
    return [ModerationInput(text="\n".join(texts), image_urls=images)]


def _not_found(shield_id: str, param: str) -> NotFoundError:
    return NotFoundError(
        f"shield {shield_id!r} not found; list the shields with GET /v1/shields, or "
        "register one with POST /v1/shields",
        param=param,
        code="shield_not_found",
    )


async def _build(ctx: ServiceContext) -> SafetyService:
    inference = ctx.deps.get("inference")
    return SafetyService(ctx, inference if isinstance(inference, InferenceService) else None)


def _router() -> APIRouter:
    from fnstack.routes.safety import router

    return router


spec = ServiceSpec(
    name="safety",
    apis=(Api.safety,),
    factory=_build,
    router=_router,
    depends=("inference",),
    stores=(StoreNeed("registry"),),
    provider_api=Api.safety,
    provider_protocol=SafetyProvider,
    description="shields (register, list, get, delete), run-shield and moderations",
)
