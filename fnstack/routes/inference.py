"""Completions and embeddings, and the SSE framing every streaming route shares.

Streaming answers are SSE: ``data: <chunk>`` per chunk, ``data: [DONE]`` at the end.
The first chunk is fetched before the response starts, so a failure before any output
(unknown model, upstream 429) is an ordinary HTTP error; a failure after it ends the
stream with an error event, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

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
# A stream's last event: the response sends it with the end of the body, in one write.
DONE = b"data: [DONE]\n\n"


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
    yield DONE


class SSEResponse(Response):
    """Starlette's StreamingResponse for event streams, with plain asyncio where it
    uses anyio.

    Under uvicorn (ASGI spec 2.3) StreamingResponse watches for the client hanging up
    with an anyio task group, a cancel scope and an event per response: a tenth of a
    relayed stream's CPU. Here the watcher is one asyncio task that cancels the request
    task on ``http.disconnect`` (the stream's ``finally`` blocks then close the upstream
    request, as before), and the cancellation it caused ends the response quietly.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(_SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.create_task(listen())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            last = b""
            async for part in self.events:
                if part is DONE:  # nothing follows it: end the body with it
                    last = part
                    break
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": last, "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # ours: the client left, nothing is left to answer
        finally:
            watcher.cancel()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()


async def stream_response(result: AsyncIterator[Any]) -> Response:
    iterator = aiter(result)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise InternalError("the provider ended the stream without any output") from None
    return SSEResponse(_sse(first, iterator))


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
