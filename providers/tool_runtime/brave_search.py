"""``remote::brave-search``: the Brave Search API (web results).

``GET {base_url}/res/v1/web/search?q=...&count=N`` with the key in
``X-Subscription-Token``; the answer's ``web.results[]`` carry ``title``, ``url`` and
``description`` (an excerpt with ``<strong>`` highlights, stripped here) and sometimes
``extra_snippets``. Brave gives no score. ``count`` is at most 20.

Example run config::

    providers:
      tool_runtime:
        - provider_id: brave
          provider_type: remote::brave-search
          config:
            api_key: ${env.FNSTACK_BRAVE_API_KEY}
            base_url: https://api.search.brave.com
"""

from __future__ import annotations

import html
import re
from typing import Any

from pydantic import Field

from fnstack.api.tool_runtime import WebSearchResult
from fnstack.errors import UpstreamError
from fnstack.spec import Api, ProviderContext, ProviderSpec
from providers.tool_runtime._search import SearchConfig, SearchHttp, SearchProvider

__all__ = ["BraveSearchConfig", "BraveSearchProvider", "spec"]

_TAG = re.compile(r"<[^>]+>")


class BraveSearchConfig(SearchConfig):
    base_url: str = Field(default="https://api.search.brave.com",
                          description="Brave's API origin (tests: a local fake)")


def _text(value: Any) -> str:
    return html.unescape(_TAG.sub("", value)) if isinstance(value, str) else ""


class BraveSearchProvider(SearchProvider):
    def __init__(self, config: BraveSearchConfig) -> None:
        self.http = SearchHttp("Brave Search", config,
                               {"X-Subscription-Token": config.api_key})

    async def _search(self, query: str, count: int) -> list[Any]:
        body = await self.http.request("GET", "/res/v1/web/search",
                                       params={"q": query, "count": count})
        web = body.get("web") if isinstance(body, dict) else None
        # No `web` section: Brave found nothing (it omits the section, not empties it).
        raw = web.get("results", []) if isinstance(web, dict) else []
        if not isinstance(raw, list):
            raise UpstreamError("Brave Search answered web.results that is not a list")
        return raw

    def _result(self, r: dict[str, Any]) -> WebSearchResult:
        snippets = [_text(s) for s in r.get("extra_snippets") or [] if isinstance(s, str)]
        content = "\n".join([_text(r.get("description")), *snippets]).strip()
        return WebSearchResult(title=_text(r.get("title")) or r["url"], url=r["url"],
                               content=content)


async def _create(config: BraveSearchConfig, context: ProviderContext) -> BraveSearchProvider:
    return BraveSearchProvider(config)


spec = ProviderSpec(
    api=Api.tool_runtime,
    provider_type="remote::brave-search",
    config_class=BraveSearchConfig,
    factory=_create,
    description="Web search through the Brave Search API",
)
