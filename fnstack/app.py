"""The app factory: the whole server, or one API group for one Lambda function.

Errors are translated here, at the HTTP boundary, into OpenAI's shape. Middleware is
pure ASGI (no BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fnstack import __version__
from fnstack.api.common import ErrorResponse
from fnstack.config import RunConfig
from fnstack.errors import FnstackError, InternalError, InvalidRequestError, PayloadTooLargeError
from fnstack.logs import (
    configure_logging,
    lambda_context_var,
    new_request_id,
    request_id_var,
    web_adapter_fields,
)
from fnstack.quotas import Quotas
from fnstack.services import ServiceSpec
from fnstack.spec import Api
from fnstack.stack import Stack, plan_services, served_apis

__all__ = ["create_app"]

log = logging.getLogger("fnstack.app")

REQUEST_ID_HEADER = "x-request-id"

def create_app(
    config: RunConfig,
    apis: Iterable[Api | str] | None = None,
    *,
    stack: Stack | None = None,
    lifespan: bool = True,
    warmup: bool = False,
) -> FastAPI:
    """Build the ASGI app serving ``apis`` (default: all that the config enables).

    ``lifespan=False`` is for Lambda (Mangum would run it on every invocation): the
    stack then starts on the first request instead.
    """
    configure_logging(config.logging.level)
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        from fnstack.auth import check_exposure

        # A function refuses to start open unless the config says `auth: {type: none}`.
        check_exposure(config.auth, host=None, on_lambda=True)
    stack = stack or Stack(config, apis)
    served = stack.apis

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        await stack.start(warmup=warmup)
        try:
            yield
        finally:
            await stack.shutdown()

    app = FastAPI(
        title="fnstack",
        version=__version__,
        lifespan=run if lifespan else None,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.stack = stack
    app.state.apis = served

    _install_error_handlers(app)
    _include_routers(app, stack.routed)
    _openapi_without_422(app, stack)

    # Outermost first: request id, then authentication (an unauthenticated caller
    # never makes the server read its body), then the body limit.
    streamed = tuple(p for spec in stack.routed for p in spec.streamed_bodies)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.server.max_body_bytes,
                       streamed=streamed)
    _install_auth(app, config, stack)
    app.add_middleware(RequestIdMiddleware)
    return app


def _install_auth(app: FastAPI, config: RunConfig, stack: Stack) -> None:
    from fnstack.auth import AuthMiddleware, build_authenticator

    # Inside authentication: quotas count per principal, which auth has just set.
    if stack.quotas is not None:
        app.add_middleware(QuotaMiddleware, quotas=stack.quotas,
                           exempt=frozenset(config.auth.exempt_paths))
    authenticator = build_authenticator(config.auth, stack.stores)
    if authenticator is not None:
        app.add_middleware(AuthMiddleware, authenticator=authenticator,
                           exempt_paths=config.auth.exempt_paths)
        stack.add_closer(authenticator.close)


# What any route may answer besides its 200, all in OpenAI's error shape. Documented on
# every operation so generated clients and schemathesis agree with the server (which
# never answers FastAPI's 422: validation errors are 400s).
ERROR_STATUSES = {
    400: "invalid request: malformed JSON, wrong types, values out of range",
    401: "missing or invalid credentials",
    403: "the access policy forbids this action",
    404: "unknown route or id (another principal's records are 404 too)",
    405: "method not allowed (the Allow header lists the allowed ones)",
    408: "the request was sent too slowly (fnstack run)",
    409: "conflict: the id exists, or a concurrent update won",
    413: "the body or a file is over its limit",
    421: "Host header not allowed (fnstack run)",
    429: "rate limit, quota or admission limit reached (see retry-after)",
    500: "unexpected error (quote the x-request-id)",
    502: "the upstream provider failed",
    503: "temporarily unavailable (store down, shutting down); retry",
    504: "the upstream provider timed out",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ERROR_STATUSES.items()
}


def _include_routers(app: FastAPI, specs: Iterable[ServiceSpec]) -> None:
    """Health and version, then the router of each service whose API group is served."""
    from fnstack.routes import admin

    app.include_router(admin.health_router, responses=ERROR_RESPONSES)
    for spec in specs:
        if spec.router is not None:
            app.include_router(spec.router(), responses=ERROR_RESPONSES)


def _deployment_routes(stack: Stack) -> list[Any]:
    """The routes of every API the config enables (on Lambda one function serves one API
    group, yet /openapi.json and /v1/inspect/routes describe the whole deployment): the
    services' routers only, no service is built."""
    full = FastAPI()
    _, routed = plan_services(served_apis(stack.config), stack.specs)
    _include_routers(full, routed)
    return list(full.routes)


def _openapi_without_422(app: FastAPI, stack: Stack) -> None:
    """The document of the whole deployment, built on its first request (cold starts).

    FastAPI documents a 422 on every operation with a body or parameters; fnstack
    answers validation errors with 400 in OpenAI's shape, so the 422 goes."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 routes=_deployment_routes(stack))
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


# --- errors -----------------------------------------------------------------------------


def _error_response(exc: FnstackError) -> JSONResponse:
    headers = dict(exc.headers)
    rid = request_id_var.get()
    if rid:
        headers[REQUEST_ID_HEADER] = rid
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def _param(loc: Iterable[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "the request body is not valid JSON: "
            f"{first.get('ctx', {}).get('error', first['msg'])}",
            code="invalid_json",
        )
    param = _param(first.get("loc", ()))
    msg = first["msg"]
    if first.get("type") == "missing":
        msg = f"missing required parameter: {param!r}"
    elif param:
        msg = f"invalid value for {param!r}: {msg}"
    more = len(errors) - 1
    if more > 0:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    return InvalidRequestError(msg, param=param, code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    async def on_fnstack(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FnstackError)
        if exc.status >= 500:
            log.error("request failed", extra={"status": exc.status}, exc_info=exc)
        return _error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: FnstackError = _Generic(
                404, f"no route for {request.method} {request.url.path}; "
                "see GET /v1/inspect/routes", "not_found"
            )
        elif exc.status_code == 405:
            err = _Generic(405, f"method {request.method} not allowed on {request.url.path}",
                           "method_not_allowed")
            # RFC 9110: a 405 names the methods the resource allows.
            err.headers.update(exc.headers or {})
        else:
            err = _Generic(exc.status_code, str(exc.detail), None)
        return _error_response(err)

    app.add_exception_handler(FnstackError, on_fnstack)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


class _Generic(FnstackError):
    type = "invalid_request_error"

    def __init__(self, status: int, message: str, code: str | None) -> None:
        super().__init__(message, code=code)
        self.status = status


# --- middleware -------------------------------------------------------------------------


class RequestIdMiddleware:
    """Gives every request an id (kept from ``x-request-id`` when sane) and logs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else new_request_id()
        token = request_id_var.set(rid)
        # Under the Lambda Web Adapter (no handler saw the invocation) the Lambda context
        # arrives as a header; trusted on Lambda only, where the adapter sets it.
        invocation = None
        if (lambda_context_var.get() is None and b"x-amzn-lambda-context" in headers
                and os.environ.get("AWS_LAMBDA_FUNCTION_NAME")):
            invocation = lambda_context_var.set(
                web_adapter_fields(headers[b"x-amzn-lambda-context"]))
        start = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Handled here rather than by Starlette's ServerErrorMiddleware, which sits
            # outside this middleware: the 500 must carry the request id.
            log.error("unhandled error", exc_info=exc)
            if status == 0:
                await _error_response(InternalError(
                    f"internal error; quote request id {rid} when reporting it"
                ))({"type": "http"}, _empty_receive, send_with_id)
            status = status or 500
        finally:
            log.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                },
            )
            request_id_var.reset(token)
            if invocation is not None:
                lambda_context_var.reset(invocation)


class QuotaMiddleware:
    """Counts each request against the caller's request quotas: 429 once spent."""

    def __init__(self, app: ASGIApp, quotas: Quotas, exempt: frozenset[str]) -> None:
        self.app = app
        self.quotas = quotas
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        from fnstack.routes import caller

        try:
            await self.quotas.check_request(caller(scope))
        except FnstackError as exc:
            await _error_response(exc)({"type": "http"}, _empty_receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Routes that stream their body and check their own limit (uploads): neither
        # buffered here nor held to the server-wide limit. Patterns as routes write
        # them: a ``{name}`` matches one path segment.
        self.streamed = (
            re.compile("|".join(
                re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(p)) for p in streamed
            )) if streamed else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.streamed is not None and self.streamed.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        if length is not None:
            # Declared length within the limit: the server enforces it, pass through.
            await self.app(scope, receive, send)
            return
        # A chunked body has no declared length: read it (up to the limit) before the
        # app sees it, then replay it. Counting inside the app's receive would not do:
        # FastAPI turns any error while reading the body into its own 400.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replay_receive() -> Message:
            nxt = next(replay, None)
            return nxt if nxt is not None else await receive()

        await self.app(scope, replay_receive, send)

    async def _reject(self, send: Send) -> None:
        err = PayloadTooLargeError(
            f"request body exceeds the limit of {self.max_bytes} bytes "
            "(server.max_body_bytes); upload large files through the files API"
        )
        response = _error_response(err)
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _walk(routes: Iterable[Any]) -> Iterable[Any]:
    for r in routes:
        # FastAPI keeps included routers as wrappers (no prefixes are used here).
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield r


def served_routes(app: FastAPI) -> list[dict[str, Any]]:
    """This app's own /v1 routes as {route, method, api}."""
    return served_routes_of(app.routes)


def served_routes_of(routes: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for r in _walk(routes):
        path = getattr(r, "path", None)
        methods = getattr(r, "methods", None)
        if not path or not methods or not path.startswith("/v1"):
            continue
        tags = getattr(r, "tags", None) or ["core"]
        for m in sorted(methods):
            if m != "HEAD":
                out.append({"route": path, "method": m, "api": tags[0]})
    return out


def route_table(app: FastAPI) -> list[dict[str, Any]]:
    """Every route of the deployment, for /v1/inspect/routes.

    On Lambda each function serves one API group, yet the answer must cover them all:
    the table comes from every API the config enables, not only this app's own routes.
    """
    stack: Stack = app.state.stack
    # Llama Stack's provider_types: the configured providers of the route's API group
    # (none for the core groups, which have no providers).
    kinds: dict[str, list[str]] = {}
    for api, _, p in stack.config.all_providers():
        kinds.setdefault(api.value, []).append(p.provider_type)
    rows = served_routes_of(_deployment_routes(stack))
    for row in rows:
        row["provider_types"] = kinds.get(row["api"], [])
    return rows
