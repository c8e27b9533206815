"""The lean httpx transport of remote::openai (providers/inference/_http.py), against a
raw asyncio server scripted per test: keep-alive reuse, connections the server closes,
body framings, the pool limit, timeouts, broken answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from providers.inference._http import LeanTransport, transport_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request: Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += data[:-2]
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "content-type: application/json", f"content-length: {len(body)}",
            *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def client(base: str, *, max_connections: int = 10, timeout: float = 5.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    return httpx.AsyncClient(base_url=base, transport=LeanTransport(limits),
                             timeout=httpx.Timeout(timeout, pool=0.3))


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        _, body = await read_request(reader)
        writer.write(ok(body or b"{}"))
        await writer.drain()


def test_used_where_httptools_is_and_no_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(transport_for(httpx.Limits()), LeanTransport)
    # httpx applies environment proxies only with its own transport: keep it then.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert transport_for(httpx.Limits()) is None


async def test_keeps_the_connection_alive() -> None:
    server = Server(keep_alive)
    async with server as base, client(base) as http:
        for i in range(5):
            r = await http.post("/x", content=b'{"n":%d}' % i)
            assert r.status_code == 200 and r.json() == {"n": i}
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        # writer.close() in Server: the idle pooled connection is gone.

    server = Server(one_then_close)
    async with server as base, client(base) as http:
        for _ in range(3):
            assert (await http.get("/x")).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the client
    assert server.connections == 3


async def test_connection_close_answer_is_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"{}", "connection: close"))
            await writer.drain()

    server = Server(closing)
    async with server as base, client(base) as http:
        for _ in range(2):
            assert (await http.get("/x")).status_code == 200
    assert server.connections == 2


async def test_body_until_the_connection_closes() -> None:
    async def no_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"def")
        await writer.drain()

    async with Server(no_length) as base, client(base) as http:
        assert (await http.get("/x")).content == b"abcdef"


async def test_chunked_answer_streams_as_it_comes() -> None:
    gate = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await gate.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection went back to the pool: reused
        writer.write(ok())
        await writer.drain()

    server = Server(chunked)
    async with server as base, client(base) as http:
        async with http.stream("GET", "/x") as r:
            parts = r.aiter_bytes()
            assert await anext(parts) == b"first"  # before the rest was even sent
            gate.set()
            assert b"".join([p async for p in parts]) == b"last"
        assert (await http.get("/y")).status_code == 200
    assert server.connections == 1


async def test_streamed_request_body_goes_chunked() -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append(head.lower())
        writer.write(ok(body))
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for p in (b'{"a":', b"", b"1}"):
            yield p

    async with Server(echo) as base, client(base) as http:
        r = await http.post("/x", content=parts())
    assert r.json() == {"a": 1}
    assert b"transfer-encoding: chunked" in seen[0]


async def test_a_response_left_unread_closes_its_connection() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"x" * 100_000))
            await writer.drain()

    server = Server(big)
    async with server as base, client(base) as http:
        async with http.stream("GET", "/x") as r:
            assert r.status_code == 200  # closed without reading the body
        assert (await http.get("/x")).content == b"x" * 100_000
    assert server.connections == 2


async def test_the_pool_limit_waits_then_times_out() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(ok())
            await writer.drain()

    server = Server(slow)
    async with server as base, client(base, max_connections=1) as http:
        first = asyncio.create_task(http.get("/a"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/b")  # the one connection is busy past the pool timeout
        waiting = asyncio.create_task(http.get("/c"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status_code == 200
        assert (await waiting).status_code == 200  # got the connection once it was free
    assert server.connections == 1


async def test_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Server(silent) as base, client(base, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/x")


async def test_closed_without_an_answer_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(hang_up) as base, client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/x")


async def test_broken_mid_body_is_a_read_error() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()

    async with Server(broken) as base, client(base) as http:
        with pytest.raises(httpx.ReadError):
            await http.get("/x")


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with Server(garbage) as base, client(base) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/x")


async def test_connect_error() -> None:
    server = await asyncio.start_server(keep_alive, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/x")


def test_a_connection_pooled_under_another_event_loop_is_not_reused() -> None:
    from tests.support.fake_openai import FakeOpenAI

    transport = LeanTransport(httpx.Limits(max_connections=4))

    async def get(base: str) -> int:
        http = httpx.AsyncClient(base_url=base, transport=transport)
        return (await http.get("/models")).status_code

    with FakeOpenAI() as fake:
        # One loop per job (as a worker running asyncio.run per event would): the
        # connection pooled by the first loop is dropped, not written to from the second.
        assert asyncio.run(get(fake.base_url)) == 200
        assert asyncio.run(get(fake.base_url)) == 200
        assert len({seen.client for seen in fake.requests}) == 2
