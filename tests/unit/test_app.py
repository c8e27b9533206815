"""The app factory at the HTTP boundary: error shapes, limits, request ids, API groups."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fnstack.app import create_app
from fnstack.config import RunConfig, parse_config
from tests.support.fake_openai import FakeOpenAI


def _config(tmp: Path, upstream: str | None = None, **extra: Any) -> RunConfig:
    data: dict[str, Any] = {
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")}},
            "stores": {
                "registry": {"backend": "kv", "namespace": "registry"},
                "inference": {"backend": "kv", "namespace": "chat"},
            },
        },
        **extra,
    }
    if upstream:
        data["providers"] = {"inference": [{
            "provider_id": "up", "provider_type": "remote::openai",
            "config": {"base_url": upstream, "max_retries": 0},
        }]}
    return parse_config(data, env={})


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture
async def app(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[FastAPI]:
    app = create_app(_config(tmp_path, fake.base_url, server={"max_body_bytes": 4096}),
                     lifespan=False)
    yield app
    await app.state.stack.shutdown()


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def assert_error(r: httpx.Response, status: int, *, param: str | None = "any") -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param != "any":
        assert err["param"] == param
    return dict(err)


async def test_health_version_and_request_id(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/health")
    assert r.json() == {"status": "OK"}
    assert r.headers["x-request-id"].startswith("req_")
    r = await http.get("/v1/version", headers={"x-request-id": "my-trace-1"})
    assert r.json()["version"]
    assert r.headers["x-request-id"] == "my-trace-1"


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/models", content=b"{not json",
                        headers={"content-type": "application/json"})
    err = assert_error(r, 400)
    assert err["code"] == "invalid_json"
    assert err["type"] == "invalid_request_error"


async def test_wrong_type_is_400_with_param(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "m", "messages": "hi"})
    assert_error(r, 400, param="messages")
    r = await http.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "x"}],
        "temperature": "hot"})
    assert_error(r, 400, param="temperature")


async def test_missing_field_and_bad_role_are_400(http: httpx.AsyncClient) -> None:
    err = assert_error(await http.post("/v1/chat/completions", json={"messages": []}), 400)
    assert "model" in err["message"] or "messages" in err["message"]
    r = await http.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]})
    assert_error(r, 400)


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    err = assert_error(await http.get("/v1/nothing-here"), 404)
    assert "/v1/inspect/routes" in err["message"]
    assert_error(await http.delete("/v1/health"), 405)


async def test_oversized_body_by_length_and_by_chunks(http: httpx.AsyncClient) -> None:
    big = json.dumps({"model_id": "x" * 10_000}).encode()
    assert_error(await http.post("/v1/models", content=big,
                                 headers={"content-type": "application/json"}), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: counted as it arrives

    r = await http.post("/v1/models", content=chunks(),
                        headers={"content-type": "application/json"})
    assert_error(r, 413)


async def test_unexpected_error_is_500_with_request_id_and_no_trace(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/v1/boom", boom)
    r = await http.get("/v1/boom")
    err = assert_error(r, 500)
    assert r.headers["x-request-id"] in err["message"]
    assert "secret" not in r.text and "Traceback" not in r.text


async def test_models_lifecycle_with_slash_ids(http: httpx.AsyncClient) -> None:
    listed = (await http.get("/v1/models")).json()
    assert {m["id"] for m in listed["data"]} == {"fake-model", "fake-embed"}
    m = (await http.get("/v1/models/fake-model")).json()
    assert m["object"] == "model" and m["provider_id"] == "up" and m["owned_by"] == "up"
    assert {"id", "object", "created", "owned_by", "provider_resource_id", "model_type"} <= set(m)

    r = await http.post("/v1/models", json={"model_id": "team/alias", "provider_model_id":
                                            "fake-model"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "team/alias"
    got = (await http.get("/v1/models/team/alias")).json()
    assert got["provider_resource_id"] == "fake-model"
    assert_error(await http.post("/v1/models", json={"model_id": "team/alias"}), 409)
    assert (await http.delete("/v1/models/team/alias")).json() == {
        "id": "team/alias", "object": "model", "deleted": True}
    assert_error(await http.get("/v1/models/team/alias"), 404, param="model")


async def test_provider_qualified_model_id(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/models/up/fake-model")
    assert r.status_code == 200 and r.json()["provider_resource_id"] == "fake-model"
    assert_error(await http.get("/v1/models/up/not-served"), 404)


async def test_model_registration_errors(http: httpx.AsyncClient) -> None:
    assert_error(await http.post("/v1/models", json={"model_id": "x", "provider_id": "nope"}),
                 400, param="provider_id")
    assert_error(await http.post("/v1/models", json={"model_id": "e", "model_type": "embedding"}),
                 400, param="metadata.embedding_dimension")
    assert_error(await http.post("/v1/models", json={"model_id": "x", "bogus": 1}), 400)
    err = assert_error(await http.delete("/v1/models/fake-model"), 400)
    assert err["code"] == "model_not_deletable"
    err = assert_error(await http.get("/v1/models/missing-model"), 404)
    assert "missing-model" in err["message"] and "GET /v1/models" in err["message"]


async def test_embedding_model_registered_with_dimension(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/models", json={"model_id": "emb", "provider_model_id": "fake-embed",
                                            "model_type": "embedding",
                                            "metadata": {"embedding_dimension": 8}})
    assert r.status_code == 200 and r.json()["model_type"] == "embedding"


async def test_providers_endpoints_redact_secrets(tmp_path: Path, fake: FakeOpenAI) -> None:
    cfg = _config(tmp_path, fake.base_url)
    cfg.providers["inference"][0].config["api_key"] = "sk-very-secret"
    app = create_app(cfg, lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        listed = (await c.get("/v1/providers")).json()["data"]
        assert [p["provider_id"] for p in listed] == ["up"]
        one = (await c.get("/v1/providers/up")).json()
        assert one["provider_type"] == "remote::openai"
        assert one["config"]["api_key"] == "********"
        assert "sk-very-secret" not in (await c.get("/v1/providers")).text
        assert_error(await c.get("/v1/providers/nope"), 404)
        routes = (await c.get("/v1/inspect/routes")).json()["data"]
        chat = [r for r in routes
                if (r["route"], r["method"]) == ("/v1/chat/completions", "POST")]
        assert len(chat) == 1 and chat[0]["api"] == "inference"
    await app.state.stack.shutdown()


async def test_one_api_group_only(tmp_path: Path, fake: FakeOpenAI) -> None:
    app = create_app(_config(tmp_path, fake.base_url), apis=["models"], lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/v1/health")).status_code == 200
        assert_error(await c.post("/v1/chat/completions", json={}), 404)
        assert_error(await c.get("/v1/providers"), 404)
    await app.state.stack.shutdown()


async def test_one_api_group_documents_the_whole_deployment(tmp_path: Path,
                                                            fake: FakeOpenAI) -> None:
    # On Lambda one function answers /openapi.json for all of them: the document covers
    # every API the config enables, built on the first request, with no service started.
    app = create_app(_config(tmp_path, fake.base_url), apis=["models"], lifespan=False)
    assert app.openapi_schema is None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert {"/v1/models", "/v1/chat/completions", "/v1/providers"} <= set(paths)
    assert not app.state.stack._services
    await app.state.stack.shutdown()


async def test_provider_listing_is_cached_not_per_request(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    before = sum(1 for s in fake.requests if s.path.endswith("/models"))
    for _ in range(5):
        await http.get("/v1/models")
        await http.get("/v1/models/fake-model")
    after = sum(1 for s in fake.requests if s.path.endswith("/models"))
    assert after - before <= 1


async def test_provider_that_never_refreshes_is_listed_once(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    cfg = _config(tmp_path, fake.base_url, registry={"refresh_ttl_s": 0})
    cfg.providers["inference"][0].config["refresh_models"] = False
    app = create_app(cfg, lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        before = sum(1 for s in fake.requests if s.path.endswith("/models"))
        for _ in range(3):
            assert (await c.get("/v1/models")).status_code == 200
        assert sum(1 for s in fake.requests if s.path.endswith("/models")) - before == 1
    await app.state.stack.shutdown()


async def test_refresh_ttl_zero_asks_every_time(tmp_path: Path, fake: FakeOpenAI) -> None:
    app = create_app(_config(tmp_path, fake.base_url, registry={"refresh_ttl_s": 0}),
                     lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        before = sum(1 for s in fake.requests if s.path.endswith("/models"))
        for _ in range(3):
            assert (await c.get("/v1/models")).status_code == 200
        assert sum(1 for s in fake.requests if s.path.endswith("/models")) - before == 3
    await app.state.stack.shutdown()


async def test_quotas_429_with_retry_after_and_token_budgets(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    cfg = _config(tmp_path, fake.base_url, quotas={"rules": [
        {"scope": "principal", "requests": 3, "window_s": 3600},
        {"scope": "attribute:teams", "tokens": 10, "window_s": 3600},
    ]})
    app = create_app(cfg, lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        for _ in range(3):
            assert (await c.get("/v1/models")).status_code == 200
        r = await c.get("/v1/models")
        err = assert_error(r, 429, param=None)
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["retry-after"]) <= 3600
        # Health is not counted.
        assert (await c.get("/v1/health")).status_code == 200
    await app.state.stack.shutdown()


async def test_token_budget_charged_from_usage(tmp_path: Path, fake: FakeOpenAI) -> None:
    from fnstack.storage import Owner

    cfg = _config(tmp_path, fake.base_url, quotas={"rules": [
        {"scope": "principal", "tokens": 5, "window_s": 3600}]})
    app = create_app(cfg, lifespan=False)
    stack = app.state.stack
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
        first = await c.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["total_tokens"] > 5
        # The budget is spent now: the next request is refused before any work.
        assert_error(await c.post("/v1/chat/completions", json=body), 429, param=None)
        assert stack.quotas is not None
        with pytest.raises(Exception, match="token"):
            await stack.quotas.check_tokens(Owner())
    await app.state.stack.shutdown()
