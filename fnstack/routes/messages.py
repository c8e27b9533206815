"""Anthropic's Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

These routes answer errors in Anthropic's shape, ``{"type": "error", "error": {"type",
"message"}}``, which the anthropic SDK reads; the rest of the server keeps OpenAI's. A
stream is SSE with named events (``event: content_block_delta``); a failure after the
first event ends it with an ``error`` event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from fnstack.api.messages import CountTokensRequest, Message, MessagesRequest, TokenCount
from fnstack.errors import FnstackError, InternalError
from fnstack.logs import request_id_var
from fnstack.routes import principal, service
from fnstack.services.messages import Event, MessagesService

log = logging.getLogger("fnstack.routes.messages")

# https://docs.anthropic.com/en/api/errors
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class AnthropicError(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    type: str = "error"
    error: AnthropicError


def _error_body(exc: FnstackError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.status, "api_error" if exc.status >= 500
                            else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def _error_response(exc: FnstackError) -> JSONResponse:
    headers = dict(exc.headers)
    rid = request_id_var.get()
    if rid:
        headers["x-request-id"] = rid
        headers["request-id"] = rid  # the header the anthropic SDK quotes in its errors
    return JSONResponse(_error_body(exc), status_code=exc.status, headers=headers)


class AnthropicRoute(APIRoute):
    """Renders this router's errors, validation included, in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            from fnstack.app import validation_error

            try:
                response = await handler(request)
                rid = request_id_var.get()
                if rid:
                    response.headers["request-id"] = rid  # the SDK's `_request_id`
                return response
            except RequestValidationError as exc:
                return _error_response(validation_error(exc))
            except FnstackError as exc:
                if exc.status >= 500:
                    log.error("request failed", extra={"status": exc.status}, exc_info=exc)
                return _error_response(exc)

        return run


def _documented() -> dict[int | str, dict[str, Any]]:
    from fnstack.app import ERROR_STATUSES

    return {status: {"model": AnthropicErrorResponse, "description": text}
            for status, text in ERROR_STATUSES.items()}


router = APIRouter(tags=["inference"], route_class=AnthropicRoute)
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _messages(request: Request) -> MessagesService:
    svc: MessagesService = await service(request, "messages")
    return svc


def _sse(name: str, body: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def _stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    try:
        async for name, body in events:
            yield _sse(name, body)
    except FnstackError as exc:
        yield _sse("error", _error_body(exc))
    except Exception:
        log.error("stream failed", exc_info=True)
        rid = request_id_var.get()
        err = InternalError(f"the stream failed; quote request id {rid} when reporting it")
        yield _sse("error", _error_body(err))


@router.post("/v1/messages", response_model=None, responses={
    200: {"model": Message, "description": "the message, or with `stream: true` its events",
          "content": {"text/event-stream": {}}},
    **_documented()})
async def create_message(body: MessagesRequest, request: Request) -> Response:
    result = await (await _messages(request)).create(body, principal(request))
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(_stream(result.events()), media_type="text/event-stream",
                             headers=_SSE_HEADERS)


@router.post("/v1/messages/count_tokens", responses=_documented())
async def count_tokens(body: CountTokensRequest, request: Request) -> TokenCount:
    return await (await _messages(request)).count_tokens(body, principal(request))
