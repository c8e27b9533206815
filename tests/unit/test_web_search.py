"""Web search providers (Brave, Tavily) and the tool runtime service, against local servers
speaking both real wire formats (tests/support/fake_search.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fnstack.errors import (
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.services.tool_runtime import ToolRuntimeService
from fnstack.spec import ProviderContext, load_spec
from fnstack.storage import Owner
from tests.support.fake_search import BRAVE_KEY, TAVILY_KEY, FakeSearch

KEYS = {"remote::brave-search": BRAVE_KEY, "remote::tavily-search": TAVILY_KEY}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSearch]:
    with FakeSearch(slow_s=5) as server:
        yield server


@contextlib.asynccontextmanager
async def _provider(kind: str, base_url: str, **config: Any) -> AsyncIterator[Any]:
    """The provider ``kind`` on ``base_url`` (``config`` overrides the key and the rest),
    shut down on the way out."""
    spec = load_spec(kind)
    cfg = spec.config_class.model_validate({"api_key": KEYS[kind], "base_url": base_url,
                                            **config})
    p = await spec.factory(cfg, ProviderContext(provider_id=kind, cache_dir=Path("/tmp")))
    try:
        yield p
    finally:
        await p.shutdown()


@pytest.fixture(params=sorted(KEYS))
async def provider(request: pytest.FixtureRequest, fake: FakeSearch) -> AsyncIterator[Any]:
    async with _provider(request.param, fake.base_url, timeout=2) as p:
        yield p


async def test_brave_wire_format(fake: FakeSearch) -> None:
    async with _provider("remote::brave-search", fake.base_url + "/") as p:
        fake.requests.clear()
        results = await p.web_search("weather in Lyon", 3)
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("GET", "/res/v1/web/search")
    assert seen.query == {"q": ["weather in Lyon"], "count": ["3"]}
    assert seen.headers["x-subscription-token"] == BRAVE_KEY
    assert seen.headers["accept"] == "application/json"
    assert [r.url for r in results][:1] == ["https://weather.example.com/lyon"]
    first = results[0]
    assert first.title == "Weather in Lyon today"
    # <strong> highlights are stripped; extra_snippets follow the description.
    assert "<strong>" not in first.content and "Lyon weather: sunny" in first.content
    assert "More about Weather in Lyon today." in first.content
    assert first.score is None  # Brave gives none
    assert len(results) <= 3


async def test_tavily_wire_format(fake: FakeSearch) -> None:
    async with _provider("remote::tavily-search", fake.base_url) as p:
        fake.requests.clear()
        results = await p.web_search("weather in Lyon", 2)
    seen = fake.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/search")
    assert seen.headers["authorization"] == f"Bearer {TAVILY_KEY}"
    assert seen.body["query"] == "weather in Lyon"
    assert seen.body["max_results"] == 2
    assert seen.body["search_depth"] == "basic"
    assert len(results) == 2
    assert results[0].url == "https://weather.example.com/lyon"
    assert results[0].content == "Lyon weather: sunny, 21 C, light wind from the north."
    assert results[0].score is not None and 0 < results[0].score <= 1


async def test_no_hits(provider: Any) -> None:
    assert await provider.web_search("zzzzqqq", 5) == []


async def test_count_capped_at_20(provider: Any, fake: FakeSearch) -> None:
    fake.requests.clear()
    await provider.web_search("Lyon", 50)
    seen = fake.requests[-1]
    sent = seen.query.get("count", [None])[0] or seen.body["max_results"]
    assert int(sent) == 20


async def test_rate_limit(provider: Any) -> None:
    with pytest.raises(RateLimitError) as info:
        await provider.web_search("fail:429", 5)
    assert info.value.status == 429
    assert info.value.headers.get("retry-after") == "7"
    assert "rate limit" in info.value.message


@pytest.mark.parametrize("query", ["fail:500", "fail:503"])
async def test_server_errors(provider: Any, query: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider.web_search(query, 5)
    assert info.value.status == 502
    assert query[5:] in info.value.message and "bad day" in info.value.message


async def test_timeout(provider: Any) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as info:
        await provider.web_search("fail:slow", 5)
    assert time.monotonic() - started < 4
    assert info.value.status == 504


async def test_not_json(provider: Any) -> None:
    with pytest.raises(UpstreamError, match="not JSON"):
        await provider.web_search("fail:garbage", 5)


@pytest.mark.parametrize("kind", sorted(KEYS))
async def test_wrong_key_is_an_operator_problem(kind: str, fake: FakeSearch) -> None:
    async with _provider(kind, fake.base_url, api_key="wrong") as p:
        with pytest.raises(ServiceUnavailableError) as info:
            await p.web_search("Lyon", 5)
    assert info.value.status == 503
    assert "api_key" in info.value.message
    assert "wrong" not in info.value.message  # never echo a key


async def test_unreachable() -> None:
    from tests.support.fake_openai import free_port

    async with _provider("remote::tavily-search", f"http://127.0.0.1:{free_port()}") as p:
        with pytest.raises(UpstreamError, match="cannot reach Tavily"):
            await p.web_search("Lyon", 5)


def test_config_checks_base_url() -> None:
    spec = load_spec("remote::brave-search")
    with pytest.raises(ValueError, match="base_url"):
        spec.config_class.model_validate({"api_key": "k", "base_url": "ftp://x"})
    assert spec.config_class.model_validate({"api_key": "k"}).base_url == \
        "https://api.search.brave.com"
    assert load_spec("remote::tavily-search").config_class.model_validate(
        {"api_key": "k"}).base_url == "https://api.tavily.com"


async def test_service(fake: FakeSearch) -> None:
    user = Owner()
    async with _provider("remote::tavily-search", fake.base_url) as p:
        service = ToolRuntimeService({"tavily": p})
        results = await service.web_search("Saone river", 1, user)
        assert [r.url for r in results] == ["https://en.wikipedia.org/wiki/Saone"]
        with pytest.raises(InvalidRequestError) as info:
            await service.web_search("", 5, user)
        assert info.value.param == "query"
        with pytest.raises(InvalidRequestError) as info:
            await service.web_search("Lyon", 0, user)
        assert info.value.param == "max_results"
    with pytest.raises(InvalidRequestError, match="tool_runtime provider"):
        await ToolRuntimeService({}).web_search("Lyon", 5, user)


async def test_web_search_tool_refused_without_a_provider() -> None:
    from fnstack.services.responses_web import WebSearch

    tool = WebSearch()
    definition = tool.validate({"type": "web_search"}, "tools[0]")
    assert definition["search_context_size"] == "medium"
    with pytest.raises(InvalidRequestError) as info:
        await tool.check(definition, "tools[0]", Owner(), lambda name: None)
    assert info.value.param == "tools[0].type"
    assert info.value.code == "web_search_not_configured"
    assert "FNSTACK_TAVILY_API_KEY" in info.value.message
    assert "tool_runtime provider" in info.value.message
    # A tool runtime with no search provider is the same as none.
    with pytest.raises(InvalidRequestError):
        await tool.check(definition, "tools[0]", Owner(), lambda name: ToolRuntimeService({}))
    configured = ToolRuntimeService({"tavily": object()})  # type: ignore[dict-item]
    await tool.check(definition, "tools[0]", Owner(), lambda name: configured)
