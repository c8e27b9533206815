"""fnstack's inference image in SageMaker mode: the container contract of a real-time endpoint.

SageMaker talks to a container on port 8080 through two routes:

- ``GET /ping``: 200 once the stack has started (models loaded), 503 before;
- ``POST /invocations``: the body InvokeEndpoint was given, here an OpenAI request.
  Its shape picks the API: ``messages`` -> chat completions, ``prompt`` ->
  completions, ``input`` -> embeddings. ``"stream": true`` answers server-sent events,
  which InvokeEndpointWithResponseStream relays as PayloadPart bytes.

Errors are OpenAI's error JSON with the right status; SageMaker hands both to the
caller as a ModelError (``OriginalStatusCode``, ``OriginalMessage``), which
``remote::sagemaker`` turns back into the same error.

Providers are called directly (registry -> provider), not through the HTTP routes, so
the container needs no more than the inference providers of its run config::

    python -m fnstack_dev.sagemaker_server --config /opt/ml/fnstack.yaml   # port 8080
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fnstack.api.inference import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from fnstack.config import RunConfig
from fnstack.errors import FnstackError, InternalError, InvalidRequestError
from fnstack.spec import Api
from fnstack.stack import Stack
from fnstack.storage import Owner

__all__ = ["create_sagemaker_app", "main"]

log = logging.getLogger("fnstack.sagemaker")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

R = TypeVar("R", bound=BaseModel)


def create_sagemaker_app(
    config: RunConfig, *, stack: Stack | None = None, warmup: bool = True
) -> Starlette:
    """The ASGI app of the container. Its lifespan starts the stack (loading the models
    when ``warmup``), so /ping turns 200 only once the endpoint can answer."""
    stack = stack or Stack(config, [Api.inference])
    ready = False

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal ready
        await stack.start(warmup=warmup)
        ready = True
        try:
            yield
        finally:
            ready = False
            await stack.shutdown()

    async def ping(request: Request) -> Response:
        return Response(status_code=200 if ready else 503)

    async def invocations(request: Request) -> Response:
        try:
            return await _invoke(stack, await request.body())
        except FnstackError as exc:
            if exc.status >= 500:
                log.error("invocation failed", exc_info=exc)
            return _error(exc)
        except Exception as exc:
            log.error("unhandled error in invocation", exc_info=exc)
            return _error(InternalError("internal error in the inference container"))

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _error(exc: FnstackError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


async def _invoke(stack: Stack, raw: bytes) -> Response:
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequestError(
            "the invocation body is not valid JSON; send an OpenAI request as "
            "ContentType application/json",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the invocation body must be a JSON object")
    if "messages" in body:
        chat = await _resolve(stack, body, ChatCompletionRequest, "llm")
        return await _call(chat, lambda p, r: p.chat_completion(r))
    if "prompt" in body:
        completion = await _resolve(stack, body, CompletionRequest, "llm")
        return await _call(completion, lambda p, r: p.completion(r))
    if "input" in body:
        embedding = await _resolve(stack, body, EmbeddingRequest, "embedding")
        return await _call(embedding, lambda p, r: p.embeddings(r))
    raise InvalidRequestError(
        "cannot tell the API from the body: send `messages` (chat completions), "
        "`prompt` (completions) or `input` (embeddings)"
    )


class _Resolved:
    def __init__(self, request: BaseModel, provider: Any, public_model: str) -> None:
        self.request = request
        self.provider = provider
        self.public_model = public_model


async def _resolve(
    stack: Stack, body: dict[str, Any], model: type[R], kind: Literal["llm", "embedding"]
) -> _Resolved:
    if "model" not in body:
        # An endpoint usually serves one model: let callers leave it out.
        # The container is the operator's own endpoint: it routes as the anonymous
        # principal (auth, if any, sits in front of SageMaker).
        models = await stack.service("models")
        entries = [e for e in await models.table.all_entries()
                   if ("embedding" if e.resource_type == "embedding" else "llm") == kind]
        if len(entries) != 1:
            raise InvalidRequestError(
                f"missing `model`: this endpoint serves {len(entries)} {kind} models "
                f"({', '.join(e.identifier for e in entries) or 'none'})",
                param="model",
            )
        body = {**body, "model": entries[0].identifier}
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(
            f"invalid value for {param!r}: {first['msg']}" if param else first["msg"],
            param=param,
            code="invalid_value",
        ) from None
    public = str(body["model"])
    entry = await (await stack.service("models")).resolve(public, Owner())
    # Only this direction is checked: OpenAI-compatible upstreams often do not say which
    # of their models embed, so those are listed as llm and must still embed.
    if kind == "llm" and entry.resource_type == "embedding":
        raise InvalidRequestError(
            f"model {public!r} is an embedding model; "
            f"this request needs an {kind} model",
            param="model",
        )
    provider = await stack.provider(entry.provider_id)
    # Providers get their own model id; the caller sees the public one in the answer.
    rewritten = request.model_copy(update={"model": entry.provider_resource_id})
    return _Resolved(rewritten, provider, public)


async def _call(
    resolved: _Resolved, method: Callable[[Any, Any], Awaitable[Any]]
) -> Response:
    result = await method(resolved.provider, resolved.request)
    if isinstance(result, BaseModel):
        return Response(_dump(result, resolved.public_model), media_type="application/json")
    return await _sse(result, resolved.public_model)


def _dump(item: BaseModel, model: str) -> bytes:
    # Nulls stay: OpenAI's wire has them (a chunk's "finish_reason": null is required).
    data = item.model_dump(mode="json", by_alias=True)
    if "model" in data:
        data["model"] = model
    return json.dumps(data, separators=(",", ":")).encode()


async def _sse(chunks: AsyncIterator[BaseModel], model: str) -> Response:
    # The first chunk is awaited before the status line goes out: an upstream error
    # that comes first is still answered with its own status.
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _aclose(chunks)
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield b"data: " + _dump(first, model) + b"\n\n"
                async for chunk in chunks:
                    yield b"data: " + _dump(chunk, model) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except FnstackError as exc:
            # Too late for a status: an error event, which the relaying side raises.
            log.error("stream failed", exc_info=exc)
            yield b"event: error\ndata: " + json.dumps(exc.to_dict()).encode() + b"\n\n"
        finally:
            await _aclose(chunks)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _aclose(chunks: AsyncIterator[BaseModel]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def main(argv: list[str] | None = None) -> None:
    """Serve the container on 0.0.0.0:8080, as SageMaker expects."""
    import uvicorn

    from fnstack.config import load_config

    parser = argparse.ArgumentParser(description="fnstack inference container (SageMaker)")
    parser.add_argument("--config", default="local", help="run config: a distribution or YAML")
    # All interfaces: SageMaker reaches the container from outside its network namespace.
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    app = create_sagemaker_app(load_config(args.config))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
