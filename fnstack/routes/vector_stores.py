"""Vector stores, their files, file batches and search (OpenAI's /v1/vector_stores)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fnstack.api.common import ListPage
from fnstack.api.vector_stores import (
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    SearchRequest,
    UpdateVectorStoreFileRequest,
    UpdateVectorStoreRequest,
    VectorStore,
    VectorStoreFile,
)
from fnstack.errors import InvalidRequestError
from fnstack.records import RecordPage
from fnstack.routes import json_response, principal, service
from fnstack.services.vector_stores import VectorStoresService

router = APIRouter(tags=["vector_io"])

Order = Literal["asc", "desc"]
FileStatus = Literal["in_progress", "completed", "failed", "cancelled"]


async def _svc(request: Request) -> VectorStoresService:
    svc: VectorStoresService = await service(request, "vector_stores")
    return svc


def _limit(limit: int) -> int:
    # OpenAI's bound for these listings.
    if not 1 <= limit <= 100:
        raise InvalidRequestError("limit must be between 1 and 100", param="limit")
    return limit


def _page(data: list[Any], page: RecordPage) -> Response:
    listing: ListPage[Any] = ListPage(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )
    return json_response(listing)


@router.post("/v1/vector_stores", response_model=VectorStore)
async def create_vector_store(body: CreateVectorStoreRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.create(body, principal(request)))


@router.get("/v1/vector_stores")
async def list_vector_stores(
    request: Request, after: str | None = None, before: str | None = None,
    limit: int = Query(default=20), order: Order = "desc",
) -> Response:
    svc = await _svc(request)
    data, page = await svc.list_stores(principal(request), after=after, before=before,
                                       limit=_limit(limit), order=order)
    return _page(data, page)


@router.get("/v1/vector_stores/{vector_store_id}", response_model=VectorStore)
async def get_vector_store(vector_store_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.get(vector_store_id, principal(request)))


@router.post("/v1/vector_stores/{vector_store_id}", response_model=VectorStore)
async def update_vector_store(vector_store_id: str, body: UpdateVectorStoreRequest,
                              request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.update(vector_store_id, body, principal(request)))


@router.delete("/v1/vector_stores/{vector_store_id}")
async def delete_vector_store(vector_store_id: str, request: Request) -> dict[str, Any]:
    svc = await _svc(request)
    return await svc.delete(vector_store_id, principal(request))


# --- files of a store -----------------------------------------------------------------------


@router.post("/v1/vector_stores/{vector_store_id}/files", response_model=VectorStoreFile)
async def attach_file(vector_store_id: str, body: CreateVectorStoreFileRequest,
                      request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.attach(vector_store_id, body, principal(request)))


@router.get("/v1/vector_stores/{vector_store_id}/files")
async def list_files(
    vector_store_id: str, request: Request, after: str | None = None,
    before: str | None = None, limit: int = Query(default=20), order: Order = "desc",
    filter: FileStatus | None = None,  # OpenAI names it so
) -> Response:
    svc = await _svc(request)
    data, page = await svc.list_files(vector_store_id, principal(request), after=after,
                                      before=before, limit=_limit(limit), order=order,
                                      status=filter)
    return _page(data, page)


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}",
            response_model=VectorStoreFile)
async def get_file(vector_store_id: str, file_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.get_file(vector_store_id, file_id, principal(request)))


@router.post("/v1/vector_stores/{vector_store_id}/files/{file_id}",
             response_model=VectorStoreFile)
async def update_file(vector_store_id: str, file_id: str, body: UpdateVectorStoreFileRequest,
                      request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.update_file(vector_store_id, file_id, body.attributes,
                                               principal(request)))


@router.delete("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def detach_file(vector_store_id: str, file_id: str, request: Request) -> dict[str, Any]:
    svc = await _svc(request)
    return await svc.detach(vector_store_id, file_id, principal(request))


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}/content")
async def file_content(vector_store_id: str, file_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.file_content(vector_store_id, file_id, principal(request)))


# --- file batches ---------------------------------------------------------------------------


@router.post("/v1/vector_stores/{vector_store_id}/file_batches")
async def create_file_batch(vector_store_id: str, body: CreateVectorStoreFileBatchRequest,
                            request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.create_batch(vector_store_id, body, principal(request)))


@router.get("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}")
async def get_file_batch(vector_store_id: str, batch_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.get_batch(vector_store_id, batch_id, principal(request)))


@router.post("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(vector_store_id: str, batch_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.cancel_batch(vector_store_id, batch_id, principal(request)))


@router.get("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
async def list_batch_files(
    vector_store_id: str, batch_id: str, request: Request, after: str | None = None,
    before: str | None = None, limit: int = Query(default=20), order: Order = "desc",
    filter: FileStatus | None = None,  # OpenAI names it so
) -> Response:
    svc = await _svc(request)
    data, page = await svc.list_batch_files(
        vector_store_id, batch_id, principal(request), after=after, before=before,
        limit=_limit(limit), order=order, status=filter)
    return _page(data, page)


# --- search ----------------------------------------------------------------------------------


@router.post("/v1/vector_stores/{vector_store_id}/search")
async def search(vector_store_id: str, body: SearchRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.search(vector_store_id, body, principal(request)))
