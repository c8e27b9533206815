"""Conversations (OpenAI's /v1/conversations): the conversation and its items."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from fnstack.api.conversations import (
    Conversation,
    ConversationDeleted,
    ConversationItemList,
    CreateConversationRequest,
    CreateItemsRequest,
    UpdateConversationRequest,
)
from fnstack.routes import json_response, principal, service
from fnstack.services.conversations import ConversationsService, check_include

router = APIRouter(tags=["conversations"])


async def _svc(request: Request) -> ConversationsService:
    svc: ConversationsService = await service(request, "conversations")
    return svc


def _include(request: Request) -> None:
    # The openai SDK sends arrays as `include[]=a&include[]=b`, llama-stack-client as
    # `include=a,b`, curl users `include=a&include=b`.
    q = request.query_params
    check_include([v for raw in (*q.getlist("include"), *q.getlist("include[]"))
                   for v in raw.split(",")])


@router.post("/v1/conversations", response_model=Conversation)
async def create_conversation(body: CreateConversationRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.create(body, principal(request)))


@router.get("/v1/conversations/{conversation_id}", response_model=Conversation)
async def retrieve_conversation(conversation_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.retrieve(conversation_id, principal(request)))


@router.post("/v1/conversations/{conversation_id}", response_model=Conversation)
async def update_conversation(conversation_id: str, body: UpdateConversationRequest,
                              request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.update(conversation_id, body, principal(request)))


@router.delete("/v1/conversations/{conversation_id}", response_model=ConversationDeleted)
async def delete_conversation(conversation_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.delete(conversation_id, principal(request)))


@router.post("/v1/conversations/{conversation_id}/items", response_model=ConversationItemList)
async def create_items(conversation_id: str, body: CreateItemsRequest,
                       request: Request) -> Response:
    _include(request)
    svc = await _svc(request)
    return json_response(await svc.create_items(conversation_id, body.items,
                                                principal(request)))


@router.get("/v1/conversations/{conversation_id}/items", response_model=ConversationItemList)
async def list_items(conversation_id: str, request: Request, after: str | None = None,
                     limit: int = Query(default=20),
                     order: Literal["asc", "desc"] = "desc") -> Response:
    _include(request)
    svc = await _svc(request)
    return json_response(await svc.list_items(conversation_id, principal(request),
                                              after=after, limit=limit, order=order))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}",
            response_model=dict[str, Any])
async def retrieve_item(conversation_id: str, item_id: str, request: Request) -> Response:
    _include(request)
    svc = await _svc(request)
    return JSONResponse(await svc.get_item(conversation_id, item_id, principal(request)))


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}",
               response_model=Conversation)
async def delete_item(conversation_id: str, item_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.delete_item(conversation_id, item_id, principal(request)))

