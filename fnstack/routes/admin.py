"""Health, version, route inspection and providers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fnstack import __version__
from fnstack.config import ProviderConfig
from fnstack.errors import NotFoundError
from fnstack.spec import Api, load_spec
from fnstack.stack import Stack

health_router = APIRouter(tags=["core"])
router = APIRouter()


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


@health_router.get("/v1/health")
async def health() -> dict[str, str]:
    return {"status": "OK"}


@health_router.get("/v1/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/v1/inspect/routes", tags=["inspect"])
async def routes(request: Request) -> dict[str, Any]:
    from fnstack.app import route_table

    return {"data": route_table(request.app)}


def _redact(value: Any) -> Any:
    """Secrets masked by type: secret-named fields, header values, URL credentials."""
    from fnstack.redact import redact

    return redact(value)


def _configured(stack: Stack) -> dict[str, tuple[Api, ProviderConfig]]:
    # Every provider of the deployment, from the config: this function may build none.
    return {p.provider_id: (api, p) for api, _, p in stack.config.all_providers()}


def _info(api: Api, p: ProviderConfig) -> dict[str, Any]:
    spec = load_spec(p.provider_type)
    return {
        "api": api.value,
        "provider_id": p.provider_id,
        "provider_type": p.provider_type,
        "config": _redact(p.config),
        "description": spec.description,
    }


@router.get("/v1/providers", tags=["providers"])
async def list_providers(request: Request) -> dict[str, Any]:
    providers = _configured(_stack(request))
    return {"object": "list", "data": [_info(api, p) for api, p in providers.values()]}


@router.get("/v1/providers/{provider_id}", tags=["providers"])
async def get_provider(provider_id: str, request: Request) -> dict[str, Any]:
    providers = _configured(_stack(request))
    if provider_id not in providers:
        raise NotFoundError(
            f"provider {provider_id!r} not found; configured: "
            f"{', '.join(providers) or 'none'} (GET /v1/providers)",
            param="provider_id",
        )
    return _info(*providers[provider_id])
