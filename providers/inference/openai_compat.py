"""``remote::openai``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI, OpenAI, Groq).

The provider is a relay. Requests go upstream as the JSON the client sent (vendor
extensions included); answers come back parsed into our wire models. What it adds:

- one pooled ``httpx.AsyncClient`` per provider instance (made in the factory, closed
  in ``shutdown()``), with connect and read timeouts, on the lean keep-alive transport
  of ``_http.py`` where httptools is installed (requests then go straight to it: see
  docs/gateway_performance.md);
- retries with exponential backoff and jitter on 429/5xx and connection failures,
  honouring ``retry-after`` - but only before the first byte reaches the caller: once a
  stream has started, a failure surfaces, it is never replayed;
- one error boundary (`_map_transport_errors`, as httpx's ``map_httpcore_exceptions``)
  where httpx exceptions and upstream statuses become `fnstack.errors` types.

Example run config::

    providers:
      inference:
        - provider_id: vllm
          provider_type: remote::openai
          config:
            base_url: ${env.VLLM_URL:=http://127.0.0.1:8000/v1}
            api_key: ${env.VLLM_API_KEY:=}
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from fnstack.api.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
)
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UnprocessableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.redact import scrub_url
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference._http import transport_for
from providers.inference._sse import QUOTE, SSEEvents, error_fields, finishes, parse_chunk

__all__ = ["OpenAICompatConfig", "OpenAICompatProvider", "spec"]

logger = logging.getLogger(__name__)

# Statuses worth another try: the upstream is overloaded or restarting, not refusing us.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Failures before the response headers: nothing has been relayed yet, so another try is
# safe. Read/write *timeouts* are not here: a slow upstream may still be generating, and
# a second request would double its load.
_RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    # Connect, read and write errors: a refused connection, or a pooled keep-alive one
    # the server (or a thawed Lambda's NAT) dropped while it sat idle.
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
_JSON_HEADERS = {"content-type": "application/json"}
# How long to wait for the end of a stream's body once [DONE] has arrived.
_DRAIN_SECONDS = 1.0


class OpenAICompatConfig(BaseModel):
    """Config of one OpenAI-compatible upstream."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="Root of the OpenAI API, e.g. http://127.0.0.1:8080/v1")
    api_key: SecretStr | None = Field(default=None, description="Sent as a Bearer token")
    timeout: float = Field(
        default=120.0, gt=0, description="Read/write seconds; between chunks when streaming"
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff: float = Field(default=0.5, ge=0, description="Base seconds of exponential backoff")
    max_backoff: float = Field(
        default=20.0,
        ge=0,
        description="Longest wait before a retry; a longer retry-after is passed to the caller",
    )
    max_connections: int = Field(default=100, ge=1)
    refresh_models: bool = Field(
        default=True, description="Whether the registry should re-list /models on its TTL"
    )
    model_type_overrides: dict[str, Literal["llm", "embedding"]] = Field(
        default_factory=dict,
        description="Model type by upstream model id, for upstreams that do not say",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                "base_url must be an http(s) URL like http://host:8000/v1, "
                f"got {scrub_url(value)!r}"
            )
        return value.rstrip("/")


# --- the error boundary ------------------------------------------------------------


@contextmanager
def _map_transport_errors(base_url: str) -> Iterator[None]:
    """Translate httpx's exceptions into ours, re-raised ``from`` the original."""
    try:
        yield
    except httpx.TimeoutException as exc:
        phase = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
        raise UpstreamTimeoutError(
            f"upstream timed out {phase} {base_url} ({type(exc).__name__}); "
            "the server may be overloaded, or raise `timeout` in the provider config"
        ) from exc
    except httpx.ConnectError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {base_url}: {exc or type(exc).__name__}; "
            "is the server running and is base_url right?"
        ) from exc
    except httpx.HTTPError as exc:
        # RemoteProtocolError, ReadError, ...: the connection broke under us.
        raise UpstreamError(
            f"connection to upstream {base_url} broke: {exc or type(exc).__name__}"
        ) from exc


def _status_error(status: int, body: bytes, headers: httpx.Headers | None = None) -> FnstackError:
    """The error for an upstream answer with an HTTP error status (or an in-stream error)."""
    message, param, code = error_fields(body)
    keep: dict[str, str] = {}
    if headers is not None:
        keep = {k: headers[k] for k in ("retry-after", "retry-after-ms") if k in headers}
    if status == 429:
        return RateLimitError(f"upstream rate limit: {message}", code=code, headers=keep)
    if status in (401, 403):
        # The caller authenticated with us fine; it is our key the upstream refused.
        return UpstreamError(
            f"upstream refused our credentials ({status}): {message}; "
            "check api_key in the provider config"
        )
    if status == 408:
        return UpstreamTimeoutError(f"upstream timed out: {message}")
    cls: type[FnstackError] | None = {
        400: InvalidRequestError,
        404: NotFoundError,
        409: ConflictError,
        413: PayloadTooLargeError,
        422: UnprocessableError,
    }.get(status)
    if cls is not None:
        return cls(message, param=param, code=code)
    if 400 <= status < 500:
        return InvalidRequestError(f"upstream answered {status}: {message}", param=param, code=code)
    return UpstreamError(f"upstream answered {status}: {message}")


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the upstream asked us to wait, from retry-after-ms or retry-after."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


# --- streaming ------------------------------------------------------------------------

T = TypeVar("T", bound=BaseModel)


class _SSEStream(Generic[T]):
    """Upstream server-sent events as parsed chunks, one as each arrives.

    Not a bare async generator on purpose: ``aclose()`` must release the upstream
    response even when iteration never started (an async generator's ``finally``
    would not run then), so a client that disconnects always closes the upstream
    request and frees its pooled connection.
    """

    def __init__(self, response: httpx.Response, model: type[T], base_url: str) -> None:
        self._response = response
        self._model = model
        self._base_url = base_url
        self._events = self._parse()
        # Chunks parsed from what has already arrived, not yet handed out.
        self._ready: collections.deque[T] = collections.deque()

    def __aiter__(self) -> _SSEStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._ready:
            return self._ready.popleft()
        try:
            await self._events.__anext__()
        except BaseException:
            # Ended, broken, or cancelled: the upstream response is of no further use.
            await self.aclose()
            raise
        return self._ready.popleft()

    def buffered(self) -> T | None:
        """The next chunk if it has already arrived (taking it needs no I/O), else None.

        Lets a relay write every chunk that is already here in one go, without ever
        holding one back to wait for the next.
        """
        return self._ready[0] if self._ready else None

    async def peek(self) -> None:
        """Read the first event, so an error the upstream sends first surfaces with its
        status before the caller starts its own stream (then there is no status left)."""
        try:
            await self._events.__anext__()
        except StopAsyncIteration:
            pass
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._response.aclose()

    async def _parse(self) -> AsyncGenerator[None, None]:
        """Reads the body as it comes; yields (nothing) each time it has put at least one
        chunk in ``_ready``: everything one read completed, parsed at once."""
        finished = False  # a finish_reason was seen: the answer is complete
        events = SSEEvents()
        ready = self._ready
        parts = self._response.aiter_bytes()
        with _map_transport_errors(self._base_url):
            async for part in parts:
                done = False
                for kind, payload in events.feed(part):
                    if payload.strip() == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = parse_chunk(self._model, kind, payload, "upstream")
                    except UpstreamError:
                        if ready:
                            yield  # what came before the error goes out first
                        raise
                    finished = finished or finishes(chunk)
                    ready.append(chunk)
                if ready:
                    yield
                if done:
                    await _drain(parts)
                    return
        for kind, payload in events.finish():
            if payload.strip() == "[DONE]":
                return  # no blank line after the last event: lenient, as browsers are
            chunk = parse_chunk(self._model, kind, payload, "upstream")
            finished = finished or finishes(chunk)
            ready.append(chunk)
            yield
        if not finished:
            raise UpstreamError(
                f"upstream {self._base_url} ended the stream before it was complete "
                "(no finish_reason, no [DONE])"
            )


async def _drain(parts: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (normally just the end of the chunked body).

    A response closed before its body ends takes its connection down with it; read to
    the end and the connection goes back to the pool for the next request. Bounded, so
    an upstream that holds the body open after [DONE] cannot hold the caller.
    """
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in parts:
                pass


# --- the provider ------------------------------------------------------------------------


class OpenAICompatProvider:
    """Inference through an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        config: OpenAICompatConfig,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._client = client
        # With the client's own transport in hand, requests go straight to it: what
        # AsyncClient.send adds per request (URL merging, a cookie jar, auth and redirect
        # flows, none of which a relay uses) cost more than the lean transport itself.
        # Without (httpx's default transport, e.g. behind an environment proxy), the
        # client sends as usual.
        self._transport = transport
        self._urls: dict[str, httpx.URL] = {}
        self._headers = httpx.Headers(client.headers)
        self._json_headers = httpx.Headers(client.headers)
        self._json_headers.update(_JSON_HEADERS)
        self._extensions = {"timeout": client.timeout.as_dict()}
        # For messages and logs only (the client keeps the real one): no credentials.
        self._base_url = scrub_url(config.base_url)

    def should_refresh_models(self) -> bool:
        return self.config.refresh_models

    async def chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        body = _body(request)
        if request.stream:
            return await self._stream("/chat/completions", body, ChatCompletionChunk)
        return await self._call("POST", "/chat/completions", body, ChatCompletion)

    async def completion(
        self, request: CompletionRequest
    ) -> Completion | AsyncIterator[Completion]:
        body = _body(request)
        if request.stream:
            return await self._stream("/completions", body, Completion)
        return await self._call("POST", "/completions", body, Completion)

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        return await self._call("POST", "/embeddings", _body(request), EmbeddingList)

    async def list_models(self) -> list[ProviderModel]:
        # Called by the registry on its TTL, not per request: a down upstream must not
        # break start-up or the other providers' listings, so failures are only logged.
        try:
            response = await self._send("GET", "/models", None)
            payload = json.loads(await _read(response, self._base_url))
            entries = payload.get("data", []) if isinstance(payload, dict) else payload
            return [self._provider_model(e) for e in entries if isinstance(e, dict) and "id" in e]
        except (FnstackError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("listing models of %s failed: %s", self._base_url, exc)
            return []

    async def shutdown(self) -> None:
        await self._client.aclose()

    # --- internals ---

    def _provider_model(self, entry: dict[str, Any]) -> ProviderModel:
        model_id = str(entry["id"])
        declared = entry.get("model_type") or entry.get("type")  # LM Studio, Llama Stack
        kind: Literal["llm", "embedding"] = self.config.model_type_overrides.get(model_id) or (
            "embedding" if declared in ("embedding", "embeddings") else "llm"
        )
        metadata = {
            k: entry[k]
            for k in ("owned_by", "created", "max_model_len", "context_length")
            if entry.get(k) is not None
        }
        return ProviderModel(provider_resource_id=model_id, model_type=kind, metadata=metadata)

    async def _call(self, method: str, path: str, body: bytes, model: type[T]) -> T:
        response = await self._send(method, path, body)
        content = await _read(response, self._base_url)
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            raise UpstreamError(
                f"upstream {self._base_url}{path} answered something that is not an OpenAI "
                f"{model.__name__}: {content[:QUOTE].decode('utf-8', 'replace')!r}"
            ) from exc

    async def _stream(self, path: str, body: bytes, model: type[T]) -> _SSEStream[T]:
        response = await self._send("POST", path, body)
        if response.headers.get("content-type", "").startswith("application/json"):
            # The upstream ignored stream=true, or reports an error with a 200.
            content = await _read(response, self._base_url)
            if b'"error"' in content:
                raise _status_error(502, content)
            raise UpstreamError(
                f"upstream {self._base_url}{path} answered JSON to a streaming request"
            )
        stream = _SSEStream(response, model, self._base_url)
        await stream.peek()
        return stream

    async def _send(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        """Send with retries; return a streaming response with a success status.

        The body is not read here, so retries end at the response headers: a caller
        reading a stream has had bytes relayed, and nothing is ever sent twice then.
        """
        request = self._request(method, path, body)
        attempt = 0
        with _map_transport_errors(self._base_url):
            while True:
                try:
                    response = await self._send_once(request)
                except _RETRY_EXCEPTIONS as exc:
                    delay = self._delay(attempt, None)
                    if delay is None:
                        raise
                    logger.info("retrying %s %s in %.2fs: %r", method, path, delay, exc)
                else:
                    if response.status_code < 400:
                        return response
                    content = await _read(response, self._base_url)
                    status = response.status_code
                    delay = (
                        self._delay(attempt, _retry_after(response.headers))
                        if status in _RETRY_STATUSES
                        else None
                    )
                    if delay is None:
                        raise _status_error(status, content, response.headers)
                    logger.info("retrying %s %s in %.2fs: status %d", method, path, delay, status)
                await asyncio.sleep(delay)
                attempt += 1

    def _request(self, method: str, path: str, body: bytes | None) -> httpx.Request:
        if self._transport is None:
            return self._client.build_request(
                method, path, content=body, headers=_JSON_HEADERS if body is not None else None
            )
        url = self._urls.get(path)
        if url is None:
            # As the client merges: relative to base_url's path, a leading "/" included.
            url = self._urls[path] = self._client.base_url.join(path.lstrip("/"))
        return httpx.Request(
            method, url, content=body, extensions=self._extensions,
            headers=self._json_headers if body is not None else self._headers,
        )

    async def _send_once(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            return await self._client.send(request, stream=True)
        if self._client.is_closed:
            raise RuntimeError("the provider is shut down")
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next try, or None when we should give up now."""
        if attempt >= self.config.max_retries:
            return None
        if retry_after is not None:
            # The upstream knows best, unless it asks for longer than we may hold the
            # caller: then the 429/503 goes back with its retry-after for the caller.
            return retry_after if retry_after <= self.config.max_backoff else None
        # Exponential backoff with "equal jitter": at least half the step, so retries
        # from many clients spread out but never collapse to zero.
        step = min(self.config.backoff * 2.0**attempt, self.config.max_backoff)
        return step / 2 + random.uniform(0, step / 2)


def _body(request: BaseModel) -> bytes:
    # Relay what the client sent: exclude_unset keeps an explicit `"content": null` on an
    # assistant tool-call message (some servers' chat templates need it) and drops the
    # fields the client never gave. by_alias: JSONSchema's "schema_" is "schema" on the
    # wire; extras are kept. Straight to JSON bytes in pydantic-core: no dict for
    # json.dumps to walk a second time.
    return request.model_dump_json(exclude_unset=True, by_alias=True).encode()


async def _read(response: httpx.Response, base_url: str) -> bytes:
    """The whole body, closing the response; read errors map like send errors."""
    try:
        with _map_transport_errors(base_url):
            return await response.aread()
    finally:
        await response.aclose()


# --- registration -----------------------------------------------------------------------


async def _create(config: OpenAICompatConfig, context: ProviderContext) -> OpenAICompatProvider:
    headers = {"User-Agent": "fnstack", **config.headers}
    if config.api_key is not None and config.api_key.get_secret_value():
        headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    limits = httpx.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_connections,
    )
    # A fraction of httpcore's CPU per request under concurrency (see _http.py); None
    # (no httptools, or a proxy in the environment): httpx's own transport.
    transport = transport_for(limits)
    client = httpx.AsyncClient(
        base_url=config.base_url + "/",
        headers=headers,
        timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
        limits=limits,
        transport=transport,
    )
    return OpenAICompatProvider(config, client, transport)


spec = ProviderSpec(
    api=Api.inference,
    provider_type="remote::openai",
    config_class=OpenAICompatConfig,
    factory=_create,
    description="Any OpenAI-compatible server: vLLM, Ollama, llama.cpp, TGI, OpenAI, Groq",
)
