"""Models: list, get, register, delete. Model ids may contain '/'."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fnstack.api.models import Model, ModelDeleted, ModelList, RegisterModelRequest
from fnstack.registry import Registry
from fnstack.stack import Stack

router = APIRouter(tags=["models"])


async def _registry(request: Request) -> Registry:
    stack: Stack = request.app.state.stack
    await stack.ensure_started()
    return stack.registry


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return await (await _registry(request)).list_models()


@router.post("/v1/models")
async def register_model(body: RegisterModelRequest, request: Request) -> Model:
    return await (await _registry(request)).register_model(body)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Model:
    return await (await _registry(request)).get_model(model_id)


@router.delete("/v1/models/{model_id:path}")
async def delete_model(model_id: str, request: Request) -> ModelDeleted:
    return await (await _registry(request)).unregister_model(model_id)
