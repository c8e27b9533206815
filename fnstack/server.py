"""``fnstack run``: the one-process server, uvicorn with the guards a public port needs.

What uvicorn does not do by itself, and this module adds:

- **Slow clients** (`GuardedProtocol`): the request head must arrive within
  ``server.header_timeout_s``; the body within ``server.body_timeout_s``, extended by
  a second per ``server.body_min_rate`` bytes received (Apache's mod_reqtimeout rule).
  Past either, the client gets 408 (or, mid-response, a closed connection). Idle
  keep-alive connections close after ``server.idle_timeout_s``; one client address
  holds at most ``server.max_connections_per_client`` connections.
- **Abandoned requests** (`RequestGuard`): a client that hangs up stops the work of
  its request, buffered or streamed.
- **Shutdown** (`Server.shutdown`, `RequestGuard`): on SIGTERM/SIGINT the listener
  closes, in-flight requests get ``server.shutdown_grace_s`` to finish; those still
  running then end cleanly (503 in OpenAI's error shape, or an error event on a stream
  already under way) instead of uvicorn's bare 500; then the app's lifespan flushes
  stored writes, and the process exits 0.
- **The port** is bound before models load, so a busy port fails at once with a hint.
- **Host names** (`fnstack.hosts.HostGuard`) and JSON log lines for uvicorn's own logs.
- A line saying where it listens and which models it serves, once it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from fnstack.config import RunConfig, ServerConfig
from fnstack.hosts import HostGuard, default_allowed_hosts
from fnstack.logs import JsonFormatter

if TYPE_CHECKING:
    from types import FrameType

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestGuard", "StartupError", "bind", "serve"]

log = logging.getLogger("fnstack.server")


class StartupError(Exception):
    """The server cannot start (a busy port, an address it cannot bind); says what to do."""


# --- the port ----------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), not yet listening: fails now if the port is taken.

    Binding before the app starts means a second ``fnstack run`` fails in a second, not
    after loading models; uvicorn starts listening on it once the app is ready.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # "localhost" may resolve to ::1 first; clients mostly try 127.0.0.1.
        family, kind, proto, _, addr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host!r}: {exc.strerror}; check --host") from None
    sock = socket.socket(family, kind, proto)
    # Lets a restarted server reuse a port whose old connections are in TIME_WAIT; on
    # Linux it does not let two servers listen on one port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (another fnstack?); stop it, or "
                f"pick another port: `fnstack run --port 9000` (`make run PORT=9000`)"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- slow clients --------------------------------------------------------------------------


def _raw_response(status: int, reason: str, message: str, code: str, *extra: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(cfg: ServerConfig) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with header/body deadlines and a per-client cap.

    One deadline timer per connection: armed when a request begins (or the connection
    opens) for the head, re-armed for the body when the head is complete, pushed back
    as body bytes arrive, cancelled when the request is whole. While the server itself
    holds reading back (the app has not taken the body yet) the deadline waits too.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError as exc:  # httptools is in the `server` extra
        raise StartupError(f"the server needs httptools: pip install 'fnstack[server]' ({exc})") \
            from None

    per_client: Counter[str] = Counter()

    class GuardedProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _deadline = 0.0
        _phase = ""
        _peer: str | None = None
        _began = False  # a request has begun on this connection

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.timeout_keep_alive = cfg.idle_timeout_s  # type: ignore[assignment]
            peer = self.client[0] if self.client else None
            if peer is not None and per_client[peer] >= cfg.max_connections_per_client:
                log.warning("too many connections from one client",
                            extra={"client": peer, "limit": cfg.max_connections_per_client})
                transport.write(_raw_response(
                    429, "Too Many Requests",
                    f"more than {cfg.max_connections_per_client} open connections from "
                    f"{peer} (server.max_connections_per_client); reuse connections",
                    "too_many_connections", "retry-after: 1"))
                transport.close()
                return
            if peer is not None:
                self._peer = peer
                per_client[peer] += 1
            self._arm("head", cfg.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._peer is not None:
                per_client[self._peer] -= 1
                if per_client[self._peer] <= 0:
                    del per_client[self._peer]
                self._peer = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began = True
            if self._timer is None:  # a new request on a kept-alive connection
                self._arm("head", cfg.header_timeout_s)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm("body", cfg.body_timeout_s)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._deadline += len(body) / cfg.body_min_rate

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = self.loop.time() + seconds
            self._timer = self.loop.call_at(self._deadline, self._check)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _check(self) -> None:
            self._timer = None
            now = self.loop.time()
            if self.transport.is_closing():
                return
            if self.flow is not None and self.flow.read_paused:
                # We are the ones not reading (the app has not taken the body yet): the
                # client is not slow; it gets a fresh window once reading resumes.
                self._deadline = max(self._deadline, now + cfg.body_timeout_s)
                self._timer = self.loop.call_at(now + 0.5, self._check)
                return
            if now < self._deadline:  # pushed back by body bytes since armed
                self._timer = self.loop.call_at(self._deadline, self._check)
                return
            if not self._began:
                # Opened and never used (a browser's preconnect): close it, as an idle
                # keep-alive connection is closed, with nothing to answer.
                self.transport.close()
                return
            what = "request head" if self._phase == "head" else "request body"
            limit = cfg.header_timeout_s if self._phase == "head" else cfg.body_timeout_s
            log.warning("slow client: closing the connection",
                        extra={"client": self._peer, "waiting_for": what})
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_raw_response(
                    408, "Request Timeout",
                    f"the {what} did not arrive in time (server.{self._phase}_timeout_s: "
                    f"{limit:g}s; a body must keep at least {cfg.body_min_rate} bytes/s)",
                    "request_timeout"))
            # connection_lost then marks the request disconnected: an app waiting on
            # the body gets http.disconnect, and what it answers is dropped.
            self.transport.close()

    return GuardedProtocol


# --- shutdown -----------------------------------------------------------------------------


class RequestGuard:
    """Pure ASGI middleware: stops the work of requests nobody will read.

    - **Client gone**: once the app has the whole request body, a watcher waits for
      the client to disconnect; if it does before the answer has started, the request's
      task is cancelled, so a buffered request stops as a stream does (providers stop
      at their next await: an upstream call, a batch). Nothing is answered: nobody
      is there.
    - **Shutdown**: ``expire()`` cancels every request still running when the grace
      period is over, and this middleware then answers it itself: 503
      ``server_shutting_down`` if nothing was sent yet; on an event stream, a final
      ``data: {"error": ...}`` event; else the body is just ended. uvicorn's own
      cancellation would answer a bare 500 and print a traceback instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inflight: set[asyncio.Task[Any]] = set()
        self.expired = False

    def expire(self) -> int:
        self.expired = True
        for task in self.inflight:
            task.cancel()
        return len(self.inflight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        state = {"started": False, "sse": False, "done": False, "gone": False}
        watcher: asyncio.Task[None] | None = None

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                state["sse"] = ctype.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["done"] = True
            await send(message)

        async def watch() -> None:
            # Started only once the app has the whole body: from then on, receive()
            # has nothing for anyone but the disconnect (or the end of the response).
            while (await receive())["type"] != "http.disconnect":
                pass
            # Only before the answer starts: a stream notices the hang-up itself
            # (Starlette stops it) and may still have cleanup to await.
            if not state["started"]:
                state["gone"] = True
                task.cancel()

        async def tracking_receive() -> Message:
            nonlocal watcher
            message = await receive()
            if watcher is None and (
                message["type"] == "http.disconnect" or not message.get("more_body")
            ):
                watcher = asyncio.create_task(watch())
            return message

        self.inflight.add(task)
        try:
            await self.app(scope, tracking_receive, tracking_send)
        except asyncio.CancelledError:
            if state["gone"]:
                task.uncancel()
                log.info("client went away: request stopped", extra={"path": scope.get("path")})
            elif self.expired:
                task.uncancel()
                if not state["done"]:
                    await self._end(send, started=state["started"], sse=state["sse"])
            else:
                raise
        finally:
            self.inflight.discard(task)
            if watcher is not None and not watcher.done():
                watcher.cancel()

    @staticmethod
    async def _end(send: Send, *, started: bool, sse: bool) -> None:
        error = {"error": {
            "message": "the server is shutting down and could not finish this request in "
                       "its grace period (server.shutdown_grace_s); retry it",
            "type": "server_error", "param": None, "code": "server_shutting_down"}}
        with contextlib.suppress(Exception):
            if not started:
                body = json.dumps(error).encode()
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ]})
                await send({"type": "http.response.body", "body": body})
            elif sse:
                await send({"type": "http.response.body",
                            "body": f"data: {json.dumps(error)}\n\n".encode()})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": b""})


# --- the server ----------------------------------------------------------------------------


def _json_logging() -> None:
    """Every log line of the process as a JSON line on stderr: uvicorn's, the providers'
    and libraries' (fnstack's own logger is set up by the app). uvicorn's access log is
    off: fnstack logs each request with its id."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    uv = logging.getLogger("uvicorn")
    uv.handlers.clear()
    uv.propagate = True
    uv.setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


def _make_server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        guard: RequestGuard
        grace_s: float
        on_ready: Callable[[], Any] | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.on_ready is not None:
                await self.on_ready()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            started = time.monotonic()
            for server in self.servers:
                server.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()  # idle ones close now, busy ones after their answer
            tasks = self.server_state.tasks
            log.info("shutting down", extra={"in_flight": len(tasks), "grace_s": self.grace_s})
            await self._drain(self.grace_s)  # a second Ctrl-C cuts the grace short
            if tasks:
                n = self.guard.expire()
                log.warning("grace period over: ending in-flight requests",
                            extra={"requests": n, "grace_s": self.grace_s})
                await asyncio.wait(set(tasks), timeout=5.0)
                for t in list(tasks):  # not behind the guard (e.g. stuck in uvicorn)
                    t.cancel()
            for connection in list(self.server_state.connections):
                connection.transport.close()
            await self.lifespan.shutdown()  # providers close, stored writes are flushed
            log.info("stopped", extra={"seconds": round(time.monotonic() - started, 2)})

        async def _drain(self, seconds: float) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            tasks = self.server_state.tasks
            while tasks and not self.force_exit and (left := deadline - loop.time()) > 0:
                await asyncio.wait(set(tasks), timeout=min(left, 0.2))

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.started:
                # Still loading models (a first run exports and caches them for a
                # minute), which cannot be interrupted, and nothing is served or stored
                # yet: leave now rather than when loading is over.
                log.warning("stopped during start-up", extra={"signal": signal.Signals(sig).name})
                os._exit(128 + sig)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # uvicorn re-raises the signal after a graceful stop, which makes the
            # process die of it; a clean stop here exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def serve(config: RunConfig, *, host: str, port: int, warmup: bool = True) -> None:
    """Bind, build the app, serve until SIGTERM/SIGINT, shut down cleanly."""
    import uvicorn

    from fnstack.app import create_app

    sock = bind(host, port)  # before anything slow: a busy port fails now
    server_cfg = config.server
    app = create_app(config, warmup=warmup)
    guard = RequestGuard(app)
    allowed = server_cfg.allowed_hosts
    outer: ASGIApp = HostGuard(guard, allowed if allowed is not None
                               else default_allowed_hosts(host))
    _json_logging()
    uv_config = uvicorn.Config(
        outer,
        log_config=None,
        access_log=False,
        http=guarded_protocol(server_cfg),
        lifespan="on",
        # (The Server below owns the shutdown sequence: no timeout_graceful_shutdown.)
        timeout_keep_alive=max(1, int(server_cfg.idle_timeout_s)),
    )
    server = _make_server_class()(uv_config)
    server.guard = guard
    server.grace_s = server_cfg.shutdown_grace_s

    async def ready() -> None:
        await _announce(app, host, port)

    server.on_ready = ready
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        pass
    finally:
        sock.close()


async def _announce(app: ASGIApp, host: str, port: int) -> None:
    """``fnstack listening on http://HOST:PORT`` and the models it serves, on stdout."""
    import httpx

    models: list[str] | None = None
    locked = False
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            r = await client.get("/v1/models", timeout=30)
        if r.status_code == 200:
            models = [m["id"] for m in r.json().get("data", [])]
        locked = r.status_code in (401, 403)
    except Exception as exc:  # the line must print whatever the registry says
        log.warning("could not list models for the start-up message", extra={"error": str(exc)})
    lines = [f"fnstack listening on {url(host, port)}"]
    if models is not None:
        lines.append(f"  models: {', '.join(models) if models else '(none configured)'}")
    elif locked:
        lines.append("  models: authentication is on; list them with an API key")
    lines.append(f"  try:    curl {url(host, port)}/v1/models   (Ctrl-C stops)")
    print("\n".join(lines), flush=True)
    log.info("listening", extra={"url": url(host, port), "models": models})
