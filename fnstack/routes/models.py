"""Models: list, get, register, delete. Model ids may contain '/'."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fnstack.api.models import Model, ModelDeleted, ModelList, RegisterModelRequest
from fnstack.routes import principal, service
from fnstack.services.models import ModelsService

router = APIRouter(tags=["models"])


async def _models(request: Request) -> ModelsService:
    svc: ModelsService = await service(request, "models")
    return svc


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return await (await _models(request)).list_models(principal(request))


@router.post("/v1/models")
async def register_model(body: RegisterModelRequest, request: Request) -> Model:
    return await (await _models(request)).register_model(body, principal(request))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Model:
    return await (await _models(request)).get_model(model_id, principal(request))


@router.delete("/v1/models/{model_id:path}")
async def delete_model(model_id: str, request: Request) -> ModelDeleted:
    return await (await _models(request)).unregister_model(model_id, principal(request))
