"""AWS plumbing shared by the Bedrock and SageMaker providers.

One error boundary (`map_aws_errors`) turning botocore errors into `fnstack.errors`, the
boto3 client a provider config describes (`create_client`), and the thread that relays
a boto3 EventStream to the event loop (`ThreadedEventStream`) so chunks reach the caller
as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from fnstack.errors import (
    ConfigError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)

__all__ = [
    "ClientSettings",
    "RelayedStream",
    "ThreadedEventStream",
    "aws_client_config",
    "create_client",
    "map_aws_errors",
]

logger = logging.getLogger(__name__)

_INVALID = frozenset({"ValidationException", "ServiceQuotaExceededException"})
_THROTTLED = frozenset({"ThrottlingException", "TooManyRequestsException"})
_UPSTREAM = frozenset(
    {
        "InternalServerException",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "ModelErrorException",
        "ModelNotReadyException",
        "InternalFailure",
    }
)


@contextmanager
def map_aws_errors(
    what: str, classify: Callable[[str, str, dict[str, Any]], FnstackError | None] | None = None
) -> Iterator[None]:
    """Translate botocore's exceptions into ours, re-raised ``from`` the original.

    ``what`` names the call for messages ("Bedrock model amazon.nova-lite-v1:0");
    ``classify(code, message, response)`` may claim a service's own codes first.
    An error *event* in a stream (``EventStreamError``) is always an `UpstreamError`:
    the caller's status line went out long ago.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        EventStreamError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except EventStreamError as exc:
        code, message = _code_message(exc)
        raise UpstreamError(f"{what} failed mid-stream ({code}): {message}") from exc
    except ClientError as exc:
        code, message = _code_message(exc)
        response: dict[str, Any] = dict(exc.response)
        claimed = classify(code, message, response) if classify else None
        raise (claimed or _client_error(what, code, message, response)) from exc
    except (ReadTimeoutError, ConnectTimeoutError) as exc:
        raise UpstreamTimeoutError(
            f"{what} timed out ({type(exc).__name__}); raise read_timeout in the provider "
            "config or retry later"
        ) from exc
    except EndpointConnectionError as exc:
        raise UpstreamError(f"cannot reach {what}: {exc}; check region/endpoint_url") from exc
    except NoCredentialsError as exc:
        raise UpstreamError(
            f"no AWS credentials to call {what}; configure them (env, profile or role)"
        ) from exc
    except BotoCoreError as exc:
        raise UpstreamError(f"calling {what} failed: {exc}") from exc


def _code_message(exc: Any) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", "") or exc)


def _client_error(what: str, code: str, message: str, response: dict[str, Any]) -> FnstackError:
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _INVALID:
        return InvalidRequestError(f"{what} rejected the request: {message}")
    if code == "ResourceNotFoundException":
        return NotFoundError(f"{what} not found: {message}", param="model")
    if code in _THROTTLED:
        return RateLimitError(f"{what} is throttling requests: {message}; retry later")
    if code == "ModelTimeoutException":
        return UpstreamTimeoutError(f"{what} timed out: {message}")
    if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
        return PermissionDeniedError(
            f"access to {what} denied: {message}; grant model access in the Bedrock console "
            "and bedrock:InvokeModel to the function's role"
        )
    if code == "ModelNotReadyException":
        return UpstreamError(
            f"{what} is not ready: {message}; retry shortly",
            code="model_not_ready",
            headers={"retry-after": "5"},
        )
    if code in _UPSTREAM or status >= 500:
        return UpstreamError(f"{what} failed ({code}): {message}")
    if 400 <= status < 500:
        return InvalidRequestError(f"{what} answered {status} ({code}): {message}")
    return UpstreamError(f"{what} failed ({code or status}): {message}")


def aws_client_config(
    connect_timeout: float, read_timeout: float, max_attempts: int, max_connections: int
) -> Any:
    """A botocore ``Config``: timeouts, standard-mode retries, a pool size."""
    from botocore.config import Config

    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_connections,
        user_agent_extra="fnstack",
    )


class ClientSettings(Protocol):
    """What a provider config says about its boto3 client."""

    region: str | None
    endpoint_url: str | None
    connect_timeout: float
    read_timeout: float
    max_attempts: int
    max_connections: int


async def create_client(service: str, config: ClientSettings) -> Any:
    """A boto3 client for ``service`` (e.g. "bedrock-runtime") as ``config`` says.

    boto3 is imported here, not at the top: cold starts of functions that never call
    AWS. Client creation reads the service model from disk: it runs in a worker
    thread, off the event loop.
    """
    import boto3
    from botocore.exceptions import NoRegionError

    def build() -> Any:
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=aws_client_config(
                config.connect_timeout, config.read_timeout, config.max_attempts,
                config.max_connections,
            ),
        )

    try:
        return await asyncio.to_thread(build)
    except NoRegionError:
        raise ConfigError(
            "no AWS region: set `region` in the provider config, or AWS_REGION",
            path="config.region",
        ) from None


# --- relaying a blocking event stream -------------------------------------------------

_END = object()


class ThreadedEventStream:
    """A botocore ``EventStream`` read in a worker thread, relayed to asyncio as it arrives.

    Each event crosses to the loop with ``call_soon_threadsafe``; the consumer awaits an
    ``asyncio.Queue``. ``aclose()`` closes the HTTP response, which ends the worker's
    blocking read, so a client that goes away frees the connection at once.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="bedrock-stream", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        item: Any = _END
        try:
            for event in self._stream:
                if self._closed:
                    return
                self._post(event)
        except BaseException as exc:  # handed to the consumer, raised there
            item = exc
        self._post(item)

    def _post(self, item: Any) -> None:
        # RuntimeError: the loop is gone, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def __aiter__(self) -> ThreadedEventStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            if self._closed:
                raise StopAsyncIteration  # the read failed because we closed it
            self._closed = True
            raise item
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Closing the urllib3 response unblocks the worker's read.
            await asyncio.to_thread(self._stream.close)


class RelayedStream:
    """Parsed chunks over a `ThreadedEventStream`; ``aclose()`` always closes upstream
    (an async generator's ``finally`` would not run if iteration never started).
    Not a bare async generator for that reason; remote::sagemaker uses it too."""

    def __init__(self, events: ThreadedEventStream, chunks: AsyncGenerator[Any, None]) -> None:
        self._events = events
        self._chunks = chunks

    def __aiter__(self) -> RelayedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._events.aclose()


# --- request mapping ------------------------------------------------------------------
