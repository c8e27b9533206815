"""Completions and embeddings, and the SSE framing every streaming route shares.

Streaming answers are SSE: ``data: <chunk>`` per chunk, ``data: [DONE]`` at the end.
The first chunk is fetched before the response starts, so a failure before any output
(unknown model, upstream 429) is an ordinary HTTP error; a failure after it ends the
stream with an error event, never a hang.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from fnstack.api.inference import (
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.errors import FnstackError, InternalError
from fnstack.logs import request_id_var
from fnstack.routes import json_response, principal, service
from fnstack.services.inference import InferenceService

router = APIRouter(tags=["inference"])
log = logging.getLogger("fnstack.routes.inference")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _inference(request: Request) -> InferenceService:
    svc: InferenceService = await service(request, "inference")
    return svc


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


async def stream_response(result: AsyncIterator[Any]) -> StreamingResponse:
    iterator = aiter(result)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise InternalError("the provider ended the stream without any output") from None
    return StreamingResponse(
        _sse(first, iterator), media_type="text/event-stream", headers=_SSE_HEADERS
    )


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request
) -> Response:
    inference = await _inference(request)
    result = await inference.completion(body, principal(request))
    if isinstance(result, Completion):
        return json_response(result)
    return await stream_response(result)


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    inference = await _inference(request)
    result: EmbeddingList = await inference.embeddings(body, principal(request))
    return json_response(result)
