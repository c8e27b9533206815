"""Batches (OpenAI's /v1/batches): create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fnstack.api.batches import Batch, BatchList, CreateBatchRequest
from fnstack.routes import json_response, principal, service
from fnstack.services.batches import BatchesService

router = APIRouter(tags=["batches"])


async def _svc(request: Request) -> BatchesService:
    svc: BatchesService = await service(request, "batches")
    return svc


@router.post("/v1/batches", response_model=Batch)
async def create_batch(body: CreateBatchRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.create(body, principal(request)))


@router.get("/v1/batches", response_model=BatchList)
async def list_batches(request: Request, after: str | None = None,
                       limit: int = Query(default=20),
                       order: Literal["asc", "desc"] = "desc") -> Response:
    svc = await _svc(request)
    return json_response(await svc.list_batches(principal(request), after=after, limit=limit,
                                                order=order))


@router.get("/v1/batches/{batch_id}", response_model=Batch)
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.get(batch_id, principal(request)))


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.cancel(batch_id, principal(request)))
