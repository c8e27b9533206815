"""Responses (OpenAI's /v1/responses): create (plain, streamed, background), retrieve
(and re-stream a background one), delete, input items, cancel.

Streams are SSE with OpenAI's framing: ``event: <type>`` and ``data: <event JSON>`` per
event, no ``[DONE]``; every event carries its ``sequence_number``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from fnstack.api.responses import (
    CreateResponseRequest,
    InputItemList,
    InputTokens,
    ResponseDeleted,
    ResponseList,
)
from fnstack.routes import json_response, principal, service
from fnstack.services.responses import ResponsesService
from fnstack.services.responses_stream import sse

router = APIRouter(tags=["responses"])

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _svc(request: Request) -> ResponsesService:
    svc: ResponsesService = await service(request, "responses")
    return svc


def _response_json(model: Any) -> Response:
    # OpenAI sends a response's unset fields as null: no exclude_none here.
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


def _include(request: Request) -> list[str] | None:
    values = request.query_params.getlist("include") + request.query_params.getlist(
        "include[]")
    return values or None


@router.post("/v1/responses", response_model=None)
async def create_response(body: CreateResponseRequest, request: Request) -> Response:
    svc = await _svc(request)
    result = await svc.create(body, principal(request))
    if hasattr(result, "model_dump_json"):
        return _response_json(result)
    return StreamingResponse(sse(result), media_type="text/event-stream",
                             headers=_SSE_HEADERS)


@router.post("/v1/responses/input_tokens", response_model=InputTokens)
async def count_input_tokens(body: CreateResponseRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.count_input_tokens(body, principal(request)))


@router.get("/v1/responses", response_model=ResponseList)
async def list_responses(request: Request, after: str | None = None,
                         limit: int = Query(default=50), model: str | None = None,
                         order: Literal["asc", "desc"] = "desc") -> Response:
    """Llama Stack's listing of the caller's stored responses (not in OpenAI's API)."""
    svc = await _svc(request)
    return _response_json(await svc.list_responses(principal(request), after=after,
                                                    limit=limit, order=order, model=model))


@router.get("/v1/responses/{response_id}", response_model=None)
async def retrieve_response(response_id: str, request: Request, stream: bool = False,
                            starting_after: int | None = None) -> Response:
    svc = await _svc(request)
    if stream:
        events = await svc.stream_stored(response_id, principal(request), starting_after)
        return StreamingResponse(sse(events), media_type="text/event-stream",
                                 headers=_SSE_HEADERS)
    return _response_json(await svc.get(response_id, principal(request), _include(request)))


@router.delete("/v1/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.delete(response_id, principal(request)))


@router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(response_id: str, request: Request, after: str | None = None,
                           before: str | None = None, limit: int = Query(default=20),
                           order: Literal["asc", "desc"] = "desc") -> Response:
    svc = await _svc(request)
    return json_response(await svc.input_items(response_id, principal(request), after=after,
                                               before=before, limit=limit, order=order))


@router.post("/v1/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return _response_json(await svc.cancel(response_id, principal(request)))
