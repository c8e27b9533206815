"""Structured logs: one JSON object per line, carrying the request id."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

__all__ = ["JsonFormatter", "configure_logging", "new_request_id", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("fnstack_request_id", default=None)

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
