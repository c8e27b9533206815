"""AWS wire helpers shared by the fake Bedrock and SageMaker runtimes.

- The ``application/vnd.amazon.eventstream`` framing (what ConverseStream and
  InvokeEndpointWithResponseStream answer), byte for byte as AWS sends it, so botocore's
  own ``EventStreamBuffer`` decodes it and checks both CRCs::

      +-------------+---------------+------------+---------+---------+-------------+
      | total len 4 | headers len 4 | prelude    | headers | payload | message     |
      | (big endian)| (big endian)  | CRC32 4    |         |         | CRC32 4     |
      +-------------+---------------+------------+---------+---------+-------------+
                                     ^ of the 8 bytes before   ^ of everything before

  Each header: name length (1 byte), name, value type (1 byte; 7 = string),
  value length (2 bytes), value.
- rest-json error responses: the status, ``x-amzn-ErrorType`` and ``{"message": ...}``.
- A uvicorn server on a free 127.0.0.1 port in its own thread, and on it the fakes'
  common part (`ScriptedFake`): replies scripted in order, requests recorded, and
  `Fault`, an error answer before any byte of a body.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import uvicorn
from starlette.responses import Response

from tests.support.fake_openai import free_port

__all__ = [
    "Fault",
    "ScriptedFake",
    "ThreadedServer",
    "aws_error",
    "encode_message",
    "error_message",
    "event_message",
    "exception_message",
    "free_port",
]

EVENTSTREAM = "application/vnd.amazon.eventstream"
_STRING = 7  # the header value type of a UTF-8 string


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + struct.pack(">BH", _STRING, len(raw_value))
        + raw_value
    )


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude, prelude CRC, headers, payload, message CRC."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def event_message(
    event_type: str, payload: Any, content_type: str = "application/json"
) -> bytes:
    """A normal event; dict payloads are sent as JSON, bytes as they are."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return encode_message(
        {":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
        raw,
    )


def exception_message(exception_type: str, body: dict[str, Any]) -> bytes:
    """A modeled error event (e.g. ``modelStreamErrorException``): the stream's last."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(body).encode(),
    )


def error_message(code: str, message: str) -> bytes:
    """An unmodeled error event, carried in headers only."""
    return encode_message(
        {":error-code": code, ":error-message": message, ":message-type": "error"}, b""
    )


def aws_error(status: int, error_type: str, body: dict[str, Any]) -> Response:
    """A rest-json error answer, as AWS sends it: botocore reads the code from the header."""
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        media_type="application/json",
        headers={
            "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/",
            "x-amzn-RequestId": "fake-request-id",
        },
    )


class ThreadedServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread; a context manager."""

    def __init__(self, app: Any, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._name = name
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="critical",  # dropped streams are on purpose; keep them quiet
                access_log=False,
                lifespan="auto",
            )
        )
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self._name} did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        # A stream a test left hanging must not hold shutdown up.
        self._server.force_exit = True
        self._thread.join(timeout=10)


@dataclass
class Fault:
    """An error answer before any byte of a body; ``status`` by default from the
    service's table of statuses by error type."""

    error_type: str
    message: str = "scripted failure"
    status: int | None = None
    delay: float = 0.0

    def response(self, statuses: Mapping[str, int]) -> Response:
        status = self.status or statuses.get(self.error_type, 500)
        return aws_error(status, self.error_type, {"message": self.message})


ReplyT = TypeVar("ReplyT")
SeenT = TypeVar("SeenT")


class ScriptedFake(Generic[ReplyT, SeenT]):
    """A fake service on a `ThreadedServer`: the replies scripted for the next requests
    are taken in order, whatever the operation, and every request is recorded.
    A context manager."""

    def __init__(self, app: Any, name: str) -> None:
        self.requests: list[SeenT] = []
        self._scripts: deque[ReplyT] = deque()
        self._lock = threading.Lock()
        self._server = ThreadedServer(app, name)
        self.url = self._server.url

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def script(self, *replies: ReplyT) -> None:
        """Queue replies for the next requests, whatever the operation, in order."""
        with self._lock:
            self._scripts.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    @property
    def last(self) -> SeenT:
        return self.requests[-1]

    def _record(self, seen: SeenT) -> ReplyT | None:
        """Records a request; the reply scripted for it, if any."""
        with self._lock:
            self.requests.append(seen)
            return self._scripts.popleft() if self._scripts else None
