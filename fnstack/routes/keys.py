"""API keys: ``/v1/keys`` (a fnstack extension; `fnstack keys` does the same offline)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from fnstack.keys import KeyInfo
from fnstack.routes import principal, service
from fnstack.services.keys import KeysService

router = APIRouter(tags=["keys"])


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    principal: str | None = Field(default=None, min_length=1, max_length=256)
    attributes: dict[str, list[str]] | None = None
    roles: list[str] | None = None


class CreatedKey(KeyInfo):
    # The key itself: answered once, here, and never again.
    value: str


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyInfo]


async def _keys(request: Request) -> KeysService:
    svc: KeysService = await service(request, "keys")
    return svc


@router.post("/v1/keys")
async def create_key(body: CreateKeyRequest, request: Request) -> CreatedKey:
    info, value = await (await _keys(request)).create(
        principal(request), body.name, body.principal, body.attributes, body.roles
    )
    return CreatedKey(**info.model_dump(), value=value)


@router.get("/v1/keys")
async def list_keys(request: Request) -> KeyList:
    return KeyList(data=await (await _keys(request)).list(principal(request)))


@router.get("/v1/keys/{key_id}")
async def get_key(key_id: str, request: Request) -> KeyInfo:
    return await (await _keys(request)).get(key_id, principal(request))


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    info = await (await _keys(request)).revoke(key_id, principal(request))
    return {"id": info.id, "object": "api_key.deleted", "deleted": True}
