"""Chat completions, completions, embeddings and the stored chat completion history.

Streaming answers are SSE: ``data: <chunk>`` per chunk, ``data: [DONE]`` at the end.
The first chunk is fetched before the response starts, so a failure before any output
(unknown model, upstream 429) is an ordinary HTTP error; a failure after it ends the
stream with an error event, never a hang.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionDeleted,
    ChatCompletionList,
    ChatCompletionMessageList,
    ChatCompletionRequest,
    ChatCompletionUpdate,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.errors import FnstackError, InternalError, InvalidRequestError
from fnstack.inference import InferenceService
from fnstack.logs import request_id_var
from fnstack.stack import Stack
from fnstack.storage import Owner

router = APIRouter(tags=["inference"])
log = logging.getLogger("fnstack.routes.inference")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _service(request: Request) -> InferenceService:
    stack: Stack = request.app.state.stack
    await stack.ensure_started()
    return stack.inference


def _owner(request: Request) -> Owner:
    # Authentication lands later; every caller is anonymous until then.
    return Owner()


def _chunk_json(chunk: BaseModel) -> bytes:
    # model_dump_json's bytes, without the round trip through str.
    return chunk.__pydantic_serializer__.to_json(chunk, exclude_none=True)


async def _sse(first: BaseModel, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    # Chunks that have already arrived go out together: one write, not one each.
    ready = getattr(rest, "ready", None)
    try:
        parts = [b"data: ", _chunk_json(first), b"\n\n"]
        while ready is not None and ready():
            parts += (b"data: ", _chunk_json(await anext(rest)), b"\n\n")
        yield b"".join(parts)
        async for chunk in rest:
            parts = [b"data: ", _chunk_json(chunk), b"\n\n"]
            while ready is not None and ready():
                parts += (b"data: ", _chunk_json(await anext(rest)), b"\n\n")
            yield b"".join(parts)
    except FnstackError as exc:
        yield b"data: " + json.dumps(exc.to_dict()).encode() + b"\n\n"
        return
    except Exception:
        log.error("stream failed", exc_info=True)
        rid = request_id_var.get()
        err = InternalError(f"the stream failed; quote request id {rid} when reporting it")
        yield b"data: " + json.dumps(err.to_dict()).encode() + b"\n\n"
        return
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
    yield b"data: [DONE]\n\n"


async def _stream_response(result: AsyncIterator[Any]) -> StreamingResponse:
    iterator = aiter(result)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise InternalError("the provider ended the stream without any output") from None
    return StreamingResponse(
        _sse(first, iterator), media_type="text/event-stream", headers=_SSE_HEADERS
    )


def _json(model: BaseModel) -> Response:
    # Straight to bytes in pydantic-core: no intermediate dict for json.dumps to walk.
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> Response:
    service = await _service(request)
    result = await service.chat_completion(body, _owner(request))
    if isinstance(result, ChatCompletion):
        return _json(result)
    return await _stream_response(result)


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request
) -> Response:
    service = await _service(request)
    result = await service.completion(body)
    if isinstance(result, Completion):
        return _json(result)
    return await _stream_response(result)


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    service = await _service(request)
    result: EmbeddingList = await service.embeddings(body)
    return _json(result)


# --- stored chat completions -------------------------------------------------------------


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
    service = await _service(request)
    result: ChatCompletionList = await service.list_chat_completions(
        _owner(request),
        after=after,
        limit=limit,
        order=order,
        model=model,
        metadata=_metadata_filter(request),
    )
    return _json(result)


@router.get("/v1/chat/completions/{completion_id}", response_model=None)
async def get_chat_completion(completion_id: str, request: Request) -> Response:
    service = await _service(request)
    return _json(await service.get_chat_completion(completion_id, _owner(request)))


@router.get("/v1/chat/completions/{completion_id}/messages", response_model=None)
async def get_chat_messages(
    completion_id: str,
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20),
    order: Literal["asc", "desc"] = "asc",
) -> Response:
    service = await _service(request)
    result: ChatCompletionMessageList = await service.get_messages(
        completion_id, _owner(request), after=after, limit=limit, order=order
    )
    return _json(result)


@router.post("/v1/chat/completions/{completion_id}", response_model=None)
async def update_chat_completion(
    completion_id: str, body: ChatCompletionUpdate, request: Request
) -> Response:
    service = await _service(request)
    if body.metadata is not None and len(body.metadata) > 16:
        raise InvalidRequestError("metadata holds at most 16 pairs", param="metadata")
    return _json(
        await service.update_chat_completion(completion_id, body.metadata, _owner(request))
    )


@router.delete("/v1/chat/completions/{completion_id}", response_model=None)
async def delete_chat_completion(completion_id: str, request: Request) -> Response:
    service = await _service(request)
    result: ChatCompletionDeleted = await service.delete_chat_completion(
        completion_id, _owner(request)
    )
    return _json(result)
