"""Chat completions and their stored history.

``POST /v1/chat/completions`` answers once the completion is stored (unless
``store: false``); a stream is stored when it has ended, before ``[DONE]``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessageList,
    ChatCompletionRequest,
    ChatCompletionUpdate,
)
from fnstack.routes import json_response, principal, service
from fnstack.routes.inference import stream_response
from fnstack.services.chat_completions import ChatCompletionsService

router = APIRouter(tags=["inference"])


async def _chats(request: Request) -> ChatCompletionsService:
    svc: ChatCompletionsService = await service(request, "chat_completions")
    return svc


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> Response:
    chats = await _chats(request)
    result = await chats.create(body, principal(request))
    if isinstance(result, ChatCompletion):
        return json_response(result)
    return await stream_response(result)


# --- the stored history -------------------------------------------------------------


def _metadata_filter(request: Request) -> dict[str, str] | None:
    # OpenAI's filter syntax: ?metadata[key]=value
    out = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return out or None


@router.get("/v1/chat/completions", response_model=None)
async def list_chat_completions(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20),
    order: Literal["asc", "desc"] = "asc",
    model: str | None = None,
) -> Response:
    chats = await _chats(request)
    result: ChatCompletionList = await chats.list(
        principal(request),
        after=after,
        limit=limit,
        order=order,
        model=model,
        metadata=_metadata_filter(request),
    )
    return json_response(result)


@router.get("/v1/chat/completions/{completion_id}", response_model=None)
async def get_chat_completion(completion_id: str, request: Request) -> Response:
    chats = await _chats(request)
    return json_response(await chats.get(completion_id, principal(request)))


@router.get("/v1/chat/completions/{completion_id}/messages", response_model=None)
async def get_chat_messages(
    completion_id: str,
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20),
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    chats = await _chats(request)
    result: ChatCompletionMessageList = await chats.messages(
        completion_id, principal(request), after=after, limit=limit, order=order
    )
    return json_response(result)


@router.post("/v1/chat/completions/{completion_id}", response_model=None)
async def update_chat_completion(
    completion_id: str, body: ChatCompletionUpdate, request: Request
) -> Response:
    chats = await _chats(request)
    return json_response(await chats.update(completion_id, body.metadata, principal(request)))


@router.delete("/v1/chat/completions/{completion_id}", response_model=None)
async def delete_chat_completion(completion_id: str, request: Request) -> Response:
    chats = await _chats(request)
    result: ChatCompletionDeleted = await chats.delete(completion_id, principal(request))
    return json_response(result)
