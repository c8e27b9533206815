"""Health, version, route inspection and providers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from fnstack import __version__
from fnstack.errors import NotFoundError
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


def _info(stack: Stack, provider_id: str) -> dict[str, Any]:
    handle = stack.providers[provider_id]
    return {
        "api": handle.api.value,
        "provider_id": provider_id,
        "provider_type": handle.spec.provider_type,
        "config": _redact(handle.config.config),
        "description": handle.spec.description,
    }


@router.get("/v1/providers", tags=["providers"])
async def list_providers(request: Request) -> dict[str, Any]:
    stack = _stack(request)
    return {"object": "list", "data": [_info(stack, pid) for pid in stack.providers]}


@router.get("/v1/providers/{provider_id}", tags=["providers"])
async def get_provider(provider_id: str, request: Request) -> dict[str, Any]:
    stack = _stack(request)
    if provider_id not in stack.providers:
        raise NotFoundError(
            f"provider {provider_id!r} not found; configured: "
            f"{', '.join(stack.providers) or 'none'} (GET /v1/providers)",
            param="provider_id",
        )
    return _info(stack, provider_id)
