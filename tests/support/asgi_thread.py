"""Serve a test fake's ASGI app with uvicorn in a daemon thread: one start/stop for every fake.

The fakes (fake OpenAI, scripted LLM, fake search, MCP test server) are real HTTP servers on a
free loopback port, so the code under test talks to them over real sockets.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn

__all__ = ["AsgiThread", "free_port", "read_body"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_body(receive: Any) -> bytes:
    """The whole request body, however many ``http.request`` messages it came in."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


class AsgiThread:
    """``app`` on 127.0.0.1:``port``; ``start`` returns once uvicorn accepts connections."""

    def __init__(
        self,
        app: Any,
        port: int,
        *,
        name: str,
        lifespan: Literal["on", "off"] = "off",
        start_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.name = name
        self.start_timeout = start_timeout
        self._config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="critical",  # broken streams and hangs are on purpose; keep them quiet
            access_log=False,
            lifespan=lifespan,
            interface="asgi3",
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            # A stream a test left open (SSE, a hanging reply) must not hold shutdown up.
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
