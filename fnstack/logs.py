"""Structured logs: one JSON object per line, carrying the request id.

On Lambda each line also carries the invocation's context under the names Powertools
for AWS Lambda's Logger uses (``function_name``, ``function_request_id``, ``cold_start``,
``xray_trace_id``, ...), so its CloudWatch Logs Insights queries work unchanged; the
handler (Mangum, the worker) or, under the Web Adapter, its ``x-amzn-lambda-context``
header sets them per invocation (:func:`lambda_fields`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "lambda_context_var",
    "lambda_fields",
    "new_request_id",
    "request_id_var",
    "web_adapter_fields",
]

request_id_var: ContextVar[str | None] = ContextVar("fnstack_request_id", default=None)
# The Lambda invocation a line belongs to (None outside Lambda).
lambda_context_var: ContextVar[dict[str, Any] | None] = ContextVar(
    "fnstack_lambda_context", default=None
)
_cold_start = True


def lambda_fields(
    request_id: str | None, function_arn: str | None = None, trace_id: str | None = None
) -> dict[str, Any]:
    """The log fields of one invocation (the first of the process is the cold start)."""
    global _cold_start
    env = os.environ
    trace = trace_id or env.get("_X_AMZN_TRACE_ID") or ""
    fields: dict[str, Any] = {
        "service": env.get("POWERTOOLS_SERVICE_NAME"),
        "function_name": env.get("AWS_LAMBDA_FUNCTION_NAME"),
        "function_version": env.get("AWS_LAMBDA_FUNCTION_VERSION"),
        "function_memory_size": int(memory) if (
            memory := env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")).isdigit() else None,
        "function_arn": function_arn,
        "function_request_id": request_id,
        "cold_start": _cold_start,
        # "Root=1-...;Parent=...;Sampled=1": the trace id is the Root.
        "xray_trace_id": next((p[5:] for p in trace.split(";") if p.startswith("Root=")),
                              trace or None),
    }
    _cold_start = False
    return {k: v for k, v in fields.items() if v is not None}


def web_adapter_fields(header: bytes) -> dict[str, Any] | None:
    """:func:`lambda_fields` from the Lambda Web Adapter's ``x-amzn-lambda-context``
    header (its JSON of the invocation: request_id, invoked_function_arn, xray_trace_id)."""
    try:
        ctx = json.loads(header)
    except ValueError:
        return None
    if not isinstance(ctx, dict):
        return None
    return lambda_fields(ctx.get("request_id"), ctx.get("invoked_function_arn"),
                         ctx.get("xray_trace_id"))

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        invocation = lambda_context_var.get()
        if invocation:
            out.update(invocation)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_configured = False


def configure_logging(level: str = "INFO") -> None:
    """Route fnstack's logs to stderr as JSON lines (once per process)."""
    global _configured
    logger = logging.getLogger("fnstack")
    logger.setLevel(level)
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    _configured = True
