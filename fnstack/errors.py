"""The one error hierarchy of fnstack.

Everything that can go wrong in a request is one of these. The HTTP boundary
(`fnstack.app`) renders them as OpenAI's error shape::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Providers translate the errors of the library underneath (httpx, botocore, torch)
into these at their own boundary, re-raising ``from exc`` so the cause is logged.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "FnstackError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class FnstackError(Exception):
    """Base of every error fnstack raises on purpose.

    ``status`` is the HTTP status it maps to, ``type`` the OpenAI error type,
    ``param`` the request field at fault (if any) and ``code`` a stable
    machine-readable code.
    """

    # A class default; an instance may carry another (e.g. a relayed upstream status).
    status: int = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(FnstackError):
    """Malformed JSON, wrong types, values out of range: the caller must change the request."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(FnstackError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(FnstackError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFoundError(FnstackError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ConflictError(FnstackError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PreconditionFailedError(ConflictError):
    """A conditional write lost: the record exists already, or its version moved on."""

    default_code = "condition_failed"


class PayloadTooLargeError(FnstackError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class UnprocessableError(FnstackError):
    status = 422
    type = "invalid_request_error"


class RateLimitError(FnstackError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InternalError(FnstackError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


class ServiceUnavailableError(FnstackError):
    """fnstack itself cannot serve the request now (its store is down); retry later."""

    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class UpstreamError(FnstackError):
    """A remote provider failed (5xx, a broken connection, a malformed answer)."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class ConfigError(Exception):
    """The run configuration is invalid. Raised at start-up, never during a request.

    ``path`` is the key path at fault, e.g. ``providers.inference[0].config.base_url``.
    """

    def __init__(self, message: str, *, path: str | None = None, source: str | None = None):
        self.detail = message
        self.path = path
        self.source = source
        where = f" at {path}" if path else ""
        origin = f" in {source}" if source else ""
        super().__init__(f"invalid run config{origin}{where}: {message}")
