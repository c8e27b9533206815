"""A lean HTTP/1.1 transport for httpx: keep-alive connections on asyncio protocols,
responses parsed by httptools.

Why: the relay's cost under concurrency is the upstream client. httpcore's pool looks
at every pooled connection for every request (``_assign_requests_to_connections``,
with a ``poll()`` and a ``getpeername()`` per idle connection to see whether it is
still usable), so at 50 concurrent requests it spends more CPU choosing a connection
than sending on it, and h11 parses in pure Python. Here a pooled connection learns it
was closed from the event loop (``connection_lost``), so taking one is a pop from a
list; the response head and chunked framing are parsed in C by httptools, which the
server already uses for requests (the ``server`` extra).

It is an ``httpx.AsyncBaseTransport``: the provider keeps httpx's client, requests,
responses, timeouts (``request.extensions["timeout"]``), exception types and content
decoding. What it does not do, the default transport still does: `transport_for` falls
back to it when httptools is not installed (the Lambda layer) or when the environment
configures a proxy (httpx applies environment proxies only without a custom transport).

Semantics kept from httpcore: no automatic retry (a request on a kept-alive connection
the server closed meanwhile fails with ``RemoteProtocolError``, as there, and the
provider's retry policy decides); a response not read to its end closes its connection;
``max_connections`` bounds open connections, waiting up to the pool timeout for one
(``PoolTimeout``); idle connections live ``keepalive_expiry`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

__all__ = ["LeanTransport", "transport_for"]

# Body bytes buffered from the socket before reading pauses (until the reader catches up).
_HIGH_WATER = 256 * 1024


def transport_for(
    limits: httpx.Limits, *, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncBaseTransport | None:
    """The lean transport, or None where httpx's own must serve (see module doc)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return None
    from urllib.request import getproxies

    if any(k in ("http", "https", "all") for k in getproxies()):
        return None
    return LeanTransport(limits, verify=verify)


async def _wait(fut: asyncio.Future[Any], seconds: float | None,
                on_timeout: Callable[[], Exception]) -> Any:
    """Await ``fut``, failing it with ``on_timeout()`` after ``seconds``: one timer
    handle, cheaper than ``asyncio.timeout`` on every read of every response."""
    if fut.done() or seconds is None:
        return await fut
    loop = asyncio.get_running_loop()

    def expire() -> None:
        if not fut.done():
            fut.set_exception(on_timeout())

    handle = loop.call_later(seconds, expire)
    try:
        return await fut
    finally:
        handle.cancel()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, pool: LeanTransport, origin: tuple[str, str, int]) -> None:
        import httptools

        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self._reset()
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.more: asyncio.Future[None] | None = None  # a reader waits for body bytes
        self.head_only = False  # a HEAD request: no body follows the head
        self.keep_alive = False
        self.in_use = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the upstream upgraded the connection"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- httptools callbacks ---

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real head follows
            self.headers, self.reason = [], b""
            return
        self.status = status
        # Asked now: llhttp answers False once the message is complete.
        self.keep_alive = self._parser.should_keep_alive()
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:  # an interim (1xx) message ended
            return
        self.complete = True
        self._wake()

    # --- state changes ---

    def _wake(self) -> None:
        if self.more is not None and not self.more.done():
            self.more.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: no "never retrieved" warning if unawaited
        self._wake()
        self.close()

    def _lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if self.in_use and not self.complete:
            if self.status and self._reads_to_eof():
                self.complete = True  # a body delimited by the end of the connection
                self._wake()
            elif self.error is None:
                detail = f": {exc}" if exc else ""
                self.error = (
                    httpx.ReadError(f"the upstream connection broke{detail}")
                    if exc is not None or self.status else
                    httpx.RemoteProtocolError("the upstream closed the connection without "
                                              "sending a response")
                )
                if self.head is not None and not self.head.done():
                    self.head.set_exception(self.error)
                    self.head.exception()
                self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(httpx.WriteError("the upstream connection closed"))
            self._writable.exception()
        if not was_closed:
            self.pool._forget(self)

    def _reads_to_eof(self) -> bool:
        names = {n.lower() for n, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.pool._forget(self)

    def reusable(self) -> bool:
        return (not self.closed and self.complete and self.error is None
                and self.keep_alive and not self.chunks)

    # --- one exchange ---

    async def send(self, request: httpx.Request, head: bytes, body: bytes | None,
                   timeouts: dict[str, float | None]) -> None:
        import httptools

        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise httpx.RemoteProtocolError("the upstream closed the connection")
        self._reset()
        self.in_use = True
        self.head_only = request.method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self.head = self.loop.create_future()
        write_timeout = timeouts.get("write")
        self.transport.write(head if body is None else head + body)
        if body is None and not isinstance(request.stream, httpx.ByteStream):
            chunked = any(n.lower() == b"transfer-encoding" for n, _ in request.headers.raw)
            async for part in request.stream:  # type: ignore[union-attr]
                if not part:
                    continue
                self.transport.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                await self._drain(write_timeout)
            if chunked:
                self.transport.write(b"0\r\n\r\n")
        await self._drain(write_timeout)
        await _wait(self.head, timeouts.get("read"),
                    lambda: httpx.ReadTimeout("timed out waiting for the upstream"))
        if self.head_only:
            self.complete = True

    async def _drain(self, seconds: float | None) -> None:
        if self._writable is not None:
            await _wait(self._writable, seconds,
                        lambda: httpx.WriteTimeout("timed out sending to the upstream"))

    async def body(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                self.chunks.clear()
                self.buffered = 0
                if self._reading_paused and self.transport is not None and not self.closed:
                    self.transport.resume_reading()
                    self._reading_paused = False
                yield data
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                return
            self.more = self.loop.create_future()
            await _wait(self.more, read_timeout,
                        lambda: httpx.ReadTimeout("timed out reading from the upstream"))
            self.more = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._conn.body(self._read_timeout):
                yield part
        except BaseException:
            self._release()  # broken or cancelled: the connection is of no further use
            raise

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._conn.pool._release(self._conn)


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive pool: idle connections per origin, newest first."""

    def __init__(self, limits: httpx.Limits, *, verify: ssl.SSLContext | bool = True) -> None:
        self._max = limits.max_connections or 1_000_000
        self._max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None else self._max
        )
        self._expiry = limits.keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # --- the pool ---

    def _idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _discard(self, conn: _Connection) -> None:
        try:
            conn.close()
        except RuntimeError:  # its event loop is closed: nothing left to close
            conn.closed = True
            self._forget(conn)

    def _release(self, conn: _Connection) -> None:
        conn.in_use = False
        if self._closed or not conn.reusable() or self._idle_count() >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one()

    async def _acquire(self, origin: tuple[str, str, int],
                       timeouts: dict[str, float | None]) -> _Connection:
        deadline = None
        pool_timeout = timeouts.get("pool")
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            idle = self._idle.get(origin)
            now = time.monotonic()
            loop = asyncio.get_running_loop()
            while idle:
                conn = idle.pop()
                if conn.closed:
                    continue
                if conn.loop is not loop:
                    # Pooled under another event loop (a process that runs one loop per
                    # job): its socket belongs to that loop.
                    self._discard(conn)
                    continue
                if self._expiry is not None and now - conn.idle_since > self._expiry:
                    conn.close()
                    continue
                return conn
            if len(self._open) + self._connecting >= self._max:
                # Full: an idle connection to another origin makes room, else wait.
                other = next((c for v in self._idle.values() for c in v), None)
                if other is not None:
                    other.close()
            if len(self._open) + self._connecting < self._max:
                return await self._connect(origin, timeouts.get("connect"))
            if deadline is None and pool_timeout is not None:
                deadline = loop.time() + pool_timeout
            fut = loop.create_future()
            self._waiters.append(fut)
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                await _wait(fut, left, lambda: httpx.PoolTimeout(
                    "no upstream connection became free in time (max_connections)"))
            finally:
                if not fut.done():
                    fut.cancel()

    async def _connect(self, origin: tuple[str, str, int],
                       seconds: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        ssl_ctx = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = (self._verify if isinstance(self._verify, ssl.SSLContext)
                             else httpx.create_ssl_context(verify=self._verify))
            ssl_ctx = self._ssl
        self._connecting += 1
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), host.strip("[]"), port, ssl=ssl_ctx,
                    server_hostname=host.strip("[]") if ssl_ctx else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        finally:
            self._connecting -= 1
        self._open.add(conn)
        return conn

    # --- httpx.AsyncBaseTransport ---

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.host, port)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        target = url.raw_path
        lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        conn = await self._acquire(origin, timeouts)
        try:
            await conn.send(request, head, body, timeouts)
        except BaseException:
            # Cancelled or failed mid-exchange: the connection's state is unknown.
            conn.close()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
