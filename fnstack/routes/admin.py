"""Health, version, route inspection and providers.

The same answers also sit under ``/v1alpha/admin/*`` as Llama Stack (OGX) serves them
(llama-stack-client's ``client.alpha.admin``): providers with their health, routes with
their provider types, health, version.
"""

from __future__ import annotations

from typing import Any, Literal

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


ApiFilter = Literal["v1", "v1alpha", "v1beta", "deprecated"]


def _routes(request: Request, api_filter: ApiFilter | None) -> dict[str, Any]:
    from fnstack.app import route_table

    rows = route_table(request.app)
    if api_filter == "deprecated":
        rows = []  # fnstack deprecates no route
    elif api_filter is not None:
        rows = [r for r in rows if r["route"].startswith(f"/{api_filter}/")]
    return {"data": rows}


@router.get("/v1/inspect/routes", tags=["inspect"])
async def routes(request: Request, api_filter: ApiFilter | None = None) -> dict[str, Any]:
    return _routes(request, api_filter)


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
        # Llama Stack's shape: a provider without a health check says so.
        "health": {"status": "Not Implemented",
                   "message": "Provider does not implement health check"},
    }


@router.get("/v1/providers", tags=["providers"])
async def list_providers(request: Request) -> dict[str, Any]:
    providers = _configured(_stack(request))
    return {"object": "list", "data": [_info(api, p) for api, p in providers.values()]}


@router.get("/v1/providers/{provider_id}", tags=["providers"])
async def get_provider(provider_id: str, request: Request) -> dict[str, Any]:
    return _provider(provider_id, request)


def _provider(provider_id: str, request: Request) -> dict[str, Any]:
    providers = _configured(_stack(request))
    if provider_id not in providers:
        raise NotFoundError(
            f"provider {provider_id!r} not found; configured: "
            f"{', '.join(providers) or 'none'} (GET /v1/providers)",
            param="provider_id",
        )
    return _info(*providers[provider_id])


# --- Llama Stack's admin API (v1alpha) ---------------------------------------------------


@router.get("/v1alpha/admin/providers", tags=["admin"])
async def admin_list_providers(request: Request) -> dict[str, Any]:
    return await list_providers(request)


@router.get("/v1alpha/admin/providers/{provider_id}", tags=["admin"])
async def admin_inspect_provider(provider_id: str, request: Request) -> dict[str, Any]:
    return _provider(provider_id, request)


@router.get("/v1alpha/admin/inspect/routes", tags=["admin"])
async def admin_list_routes(
    request: Request, api_filter: ApiFilter | None = None
) -> dict[str, Any]:
    return _routes(request, api_filter)


@router.get("/v1alpha/admin/health", tags=["admin"])
async def admin_health() -> dict[str, str]:
    return await health()


@router.get("/v1alpha/admin/version", tags=["admin"])
async def admin_version() -> dict[str, str]:
    return await version()
