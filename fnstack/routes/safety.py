"""Safety: moderations (OpenAI), shields and run-shield (Llama Stack). Shield ids may
contain '/'."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fnstack.api.safety import (
    ModerationRequest,
    ModerationResponse,
    RegisterShieldRequest,
    RunShieldRequest,
    RunShieldResponse,
    Shield,
    ShieldDeleted,
    ShieldList,
)
from fnstack.routes import principal, service
from fnstack.services.safety import SafetyService

router = APIRouter(tags=["safety"])


async def _safety(request: Request) -> SafetyService:
    svc: SafetyService = await service(request, "safety")
    return svc


@router.post("/v1/moderations")
async def create_moderation(body: ModerationRequest, request: Request) -> ModerationResponse:
    return await (await _safety(request)).moderate(body, principal(request))


@router.post("/v1/safety/run-shield")
async def run_shield(body: RunShieldRequest, request: Request) -> RunShieldResponse:
    return await (await _safety(request)).run_shield(body, principal(request))


@router.get("/v1/shields")
async def list_shields(request: Request) -> ShieldList:
    return await (await _safety(request)).list_shields(principal(request))


@router.post("/v1/shields")
async def register_shield(body: RegisterShieldRequest, request: Request) -> Shield:
    return await (await _safety(request)).register_shield(body, principal(request))


@router.get("/v1/shields/{shield_id:path}")
async def get_shield(shield_id: str, request: Request) -> Shield:
    return await (await _safety(request)).get_shield(shield_id, principal(request))


@router.delete("/v1/shields/{shield_id:path}")
async def delete_shield(shield_id: str, request: Request) -> ShieldDeleted:
    return await (await _safety(request)).unregister_shield(shield_id, principal(request))
