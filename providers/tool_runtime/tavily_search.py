"""``remote::tavily-search``: the Tavily Search API.

``POST {base_url}/search`` with ``Authorization: Bearer <key>`` and a JSON body
``{"query", "max_results", "search_depth": "basic", "include_answer": false, ...}``; the
answer's ``results[]`` carry ``title``, ``url``, ``content`` (an extract made for LLMs)
and ``score`` (0..1). ``max_results`` is at most 20.

Example run config::

    providers:
      tool_runtime:
        - provider_id: tavily
          provider_type: remote::tavily-search
          config:
            api_key: ${env.FNSTACK_TAVILY_API_KEY}
            base_url: https://api.tavily.com
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fnstack.api.tool_runtime import WebSearchResult
from fnstack.errors import UpstreamError
from fnstack.spec import Api, ProviderContext, ProviderSpec
from providers.tool_runtime._search import SearchConfig, SearchHttp, SearchProvider

__all__ = ["TavilySearchConfig", "TavilySearchProvider", "spec"]


class TavilySearchConfig(SearchConfig):
    base_url: str = Field(default="https://api.tavily.com",
                          description="Tavily's API origin (tests: a local fake)")
    # "advanced" costs two credits a search and takes seconds longer.
    search_depth: Literal["basic", "advanced"] = "basic"


class TavilySearchProvider(SearchProvider):
    def __init__(self, config: TavilySearchConfig) -> None:
        self.config = config
        self.http = SearchHttp("Tavily", config, {"Authorization": f"Bearer {config.api_key}"})

    async def _search(self, query: str, count: int) -> list[Any]:
        body = await self.http.request("POST", "/search", json={
            "query": query,
            "max_results": count,
            "search_depth": self.config.search_depth,
            "include_answer": False,
            "include_raw_content": False,
            "include_images": False,
        })
        raw = body.get("results") if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise UpstreamError("Tavily answered without a results list")
        return raw

    def _result(self, r: dict[str, Any]) -> WebSearchResult:
        score = r.get("score")
        return WebSearchResult(
            title=str(r.get("title") or r["url"]), url=r["url"],
            content=str(r.get("content") or ""),
            score=float(score) if isinstance(score, int | float) else None,
        )


async def _create(config: TavilySearchConfig, context: ProviderContext) -> TavilySearchProvider:
    return TavilySearchProvider(config)


spec = ProviderSpec(
    api=Api.tool_runtime,
    provider_type="remote::tavily-search",
    config_class=TavilySearchConfig,
    factory=_create,
    description="Web search through the Tavily Search API",
)
