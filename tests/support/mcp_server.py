"""A real MCP server (the official ``mcp`` SDK's MCPServer) on 127.0.0.1, in a thread.

One uvicorn server answers, on one port:

- ``/mcp``            streamable HTTP (the SDK's session manager, SSE-framed answers)
- ``/sse`` + ``/messages/``   the older HTTP+SSE transport
- ``/secure/mcp``, ``/secure/sse`` the same, behind ``Authorization: Bearer <token>``
  (401 without it): what the ``headers`` of an MCP tool are for

Tools: ``add(a, b)``, ``get_weather(city)``, ``echo(text)``, ``slow(seconds)`` (sleeps:
for timeouts) and ``fail(message)`` (raises: an ``isError`` result). ``calls`` records
every tool call, so a test can assert that a tool did or did not run (approval flows).

Also here: ``HangingServer`` accepts TCP connections and never answers (an MCP server that
hangs), and ``closed_port()`` a port where nothing listens (one that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import Receive, Scope, Send

from tests.support.asgi_thread import AsgiThread, free_port

__all__ = ["TOKEN", "HangingServer", "McpTestServer", "closed_port"]

TOKEN = "mcp-secret-token"


def _build(calls: list[tuple[str, dict[str, Any]]]) -> MCPServer:
    server: MCPServer = MCPServer(name="fnstack-test-mcp", log_level="CRITICAL")

    @server.tool(description="Add two integers and return the sum.")
    def add(a: int, b: int) -> int:
        calls.append(("add", {"a": a, "b": b}))
        return a + b

    @server.tool(description="The current weather in a city.")
    def get_weather(city: str) -> str:
        calls.append(("get_weather", {"city": city}))
        return f"Sunny, 21 C in {city}"

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        calls.append(("echo", {"text": text}))
        return text

    @server.tool(description="Sleep for a number of seconds, then answer 'done'.")
    async def slow(seconds: float) -> str:
        calls.append(("slow", {"seconds": seconds}))
        await asyncio.sleep(seconds)
        return "done"

    @server.tool(description="Always fails with the message given.")
    def fail(message: str) -> str:
        calls.append(("fail", {"message": message}))
        raise ToolError(message)

    return server


class McpTestServer:
    """The server; a context manager. URLs: ``url`` (streamable HTTP), ``sse_url``,
    ``secure_url``, ``secure_sse_url``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.port = free_port()
        base = f"http://127.0.0.1:{self.port}"
        self.url = f"{base}/mcp"
        self.sse_url = f"{base}/sse"
        self.secure_url = f"{base}/secure/mcp"
        self.secure_sse_url = f"{base}/secure/sse"
        self._mcp = _build(self.calls)
        self._http = self._mcp.streamable_http_app()
        self._sse = self._mcp.sse_app()
        self._serving = AsgiThread(self._app, self.port, name="MCP test server", lifespan="on",
                                   start_timeout=15)

    def called(self, name: str) -> list[dict[str, Any]]:
        return [args for tool, args in self.calls if tool == name]

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith("/secure/"):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {TOKEN}":
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body",
                            "body": b'{"error": "missing or wrong bearer token"}'})
                return
            path = path[len("/secure"):]
            scope = {**scope, "path": path, "raw_path": path.encode()}
        app = self._sse if path == "/sse" or path.startswith("/messages") else self._http
        await app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # The streamable HTTP session manager runs for the server's lifetime.
        async with self._session_manager():
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    @contextlib.asynccontextmanager
    async def _session_manager(self) -> AsyncIterator[None]:
        async with self._mcp.session_manager.run():
            yield

    def __enter__(self) -> McpTestServer:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()


class HangingServer:
    """Accepts TCP connections and never answers: an MCP server that hangs."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="mcp-hang", daemon=True)

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)  # held open, never read, never answered

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connection refused)."""
    return free_port()
