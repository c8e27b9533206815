"""What the DynamoDB and S3 backends share: one boto3 client per service, region and
endpoint for the whole process, and the boundary that turns botocore's errors into
fnstack's.

boto3 and botocore are imported on first use, not with this module, so that naming a
backend costs nothing at a Lambda cold start until a store on it is opened.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from fnstack.errors import ConfigError, FnstackError, InternalError, RateLimitError, UpstreamError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_s3.client import S3Client

__all__ = ["call", "shared_client", "translate_client_error"]

P = ParamSpec("P")
R = TypeVar("R")

Service = Literal["dynamodb", "s3"]
Translate = Callable[["ClientError"], Exception]
Claim = Callable[[str, str, str], FnstackError | None]

_clients: dict[tuple[Service, str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


@overload
def shared_client(
    service: Literal["dynamodb"],
    region: str | None,
    endpoint_url: str | None,
    *,
    resource: str,
    read_timeout: float,
    s3_addressing: None = None,
) -> DynamoDBClient: ...


@overload
def shared_client(
    service: Literal["s3"],
    region: str | None,
    endpoint_url: str | None,
    *,
    resource: str,
    read_timeout: float,
    s3_addressing: Literal["path", "auto"],
) -> S3Client: ...


def shared_client(
    service: Service,
    region: str | None,
    endpoint_url: str | None,
    *,
    resource: str,
    read_timeout: float,
    s3_addressing: Literal["path", "auto"] | None = None,
) -> DynamoDBClient | S3Client:
    """One client per service, region and endpoint for the whole process, never closed.

    Creating a client costs 0.1-0.2 s (service model, endpoint rules), and every
    namespace or prefix opens a store: sharing keeps cold starts short, and a warm
    Lambda reuses the client and its connection pool across invocations. Clients are
    thread-safe; sessions are not, so each client gets its own session, created under
    the lock. ``resource`` names what the store reaches, for the error message.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    where = (service, region, endpoint_url)
    with _clients_lock:
        if where not in _clients:
            config = Config(
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=read_timeout,
                s3={"addressing_style": s3_addressing} if s3_addressing else None,
            )
            try:
                _clients[where] = boto3.session.Session().client(
                    service, region_name=region, endpoint_url=endpoint_url, config=config
                )
            except NoRegionError as exc:
                raise ConfigError(
                    f"no AWS region for {resource}: set the backend's `region` or AWS_REGION",
                    path="storage.backends",
                ) from exc
        return cast("DynamoDBClient | S3Client", _clients[where])


async def call(
    resource: str, translate: Translate, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run one blocking boto3 call in a worker thread, translating its errors.

    ``translate`` turns a ``ClientError`` (the service answered with an error) into
    the exception to raise; ``resource`` ("S3 bucket 'files'") names what could not be
    reached for the other botocore errors.
    """
    with _errors(resource, translate):
        return await asyncio.to_thread(fn, *args, **kwargs)


@contextmanager
def _errors(resource: str, translate: Translate) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        raise translate(exc) from exc
    except NoCredentialsError as exc:
        raise InternalError(
            f"no AWS credentials to reach {resource}; configure the function's role or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            code="aws_no_credentials",
        ) from exc
    except BotoCoreError as exc:  # connection refused, timeouts, a body cut short
        raise UpstreamError(f"cannot reach {resource}: {exc}", code="aws_unreachable") from exc


def translate_client_error(
    exc: ClientError, what: str, *, throttled: frozenset[str], claim: Claim
) -> FnstackError:
    """The fnstack error for a service's error answer to the call ``what`` names.

    ``claim(code, message, what)`` maps the service's own codes first; then a code in
    ``throttled`` is a `RateLimitError`, a 5xx an `UpstreamError`, and anything else an
    `InternalError` (a request fnstack built wrong, or a deployment that is off).
    """
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    message = error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    claimed = claim(code, message, what)
    if claimed is not None:
        return claimed
    if code in throttled:
        return RateLimitError(f"{what} was throttled ({code}); retry shortly")
    if status >= 500:
        return UpstreamError(f"{what} failed: {code}: {message}", code=code)
    return InternalError(f"{what} failed: {code}: {message}", code=code)
