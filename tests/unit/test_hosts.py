"""The Host check of `fnstack run` (DNS rebinding): only the server's own names."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fnstack.hosts import HostGuard, default_allowed_hosts, host_name


def _ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _client(allowed: list[str]) -> httpx.AsyncClient:
    app = HostGuard(Starlette(routes=[Route("/v1/health", _ok)]), allowed)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8321", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8321", "[::1]"),
        ("example.com.", "example.com"),
        ("a b", None),
        ("[::1", None),
        ("host:port", None),
        ("", None),
    ],
)
def test_host_name(value: str, expected: str | None) -> None:
    assert host_name(value) == expected


def test_default_names() -> None:
    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert "api.lan" in default_allowed_hosts("api.lan")
    assert "[fe80::1]" in default_allowed_hosts("fe80::1")
    # Bound to every interface: the machine's own name is allowed, 0.0.0.0 is no name.
    wildcard = default_allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() in wildcard and "0.0.0.0" not in wildcard


@pytest.mark.parametrize("host", ["127.0.0.1:8321", "localhost:8321", "[::1]:8321", "localhost"])
async def test_own_names_pass(host: str) -> None:
    async with _client(default_allowed_hosts("127.0.0.1")) as c:
        r = await c.get("/v1/health", headers={"host": host})
    assert r.status_code == 200, r.text


async def test_foreign_host_is_421_in_openai_shape() -> None:
    async with _client(default_allowed_hosts("127.0.0.1")) as c:
        r = await c.get("/v1/health", headers={"host": "evil.example:8321"})
    assert r.status_code == 421
    err = r.json()["error"]
    assert err["code"] == "host_not_allowed"
    assert err["type"] == "invalid_request_error"
    assert "server.allowed_hosts" in err["message"]


async def test_malformed_host_is_400() -> None:
    async with _client(["localhost"]) as c:
        r = await c.get("/v1/health", headers={"host": "a b"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_host_header"


async def test_star_and_suffix_patterns() -> None:
    async with _client(["*"]) as c:
        assert (await c.get("/v1/health", headers={"host": "anything"})).status_code == 200
    async with _client(["*.corp.example", "::1"]) as c:
        assert (await c.get("/v1/health", headers={"host": "a.corp.example"})).status_code == 200
        assert (await c.get("/v1/health", headers={"host": "[::1]:1"})).status_code == 200
        assert (await c.get("/v1/health", headers={"host": "corp.example.evil"})).status_code == 421
