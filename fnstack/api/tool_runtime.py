"""Tool runtime: the built-in tools' back ends the agent loop calls (web search).

The Responses API's ``web_search`` tool asks the tool runtime service, which asks one
``tool_runtime`` provider: a search API adapter (``remote::brave-search``,
``remote::tavily-search``). A provider answers a query with a ranked list of results;
the loop turns them into a ``web_search_call`` item and the text the model reads.
(MCP servers are reached directly by the loop, through `fnstack.mcp_client`.)
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from fnstack.api.common import ProviderModel

__all__ = ["MAX_SEARCH_RESULTS", "ToolRuntime", "WebSearchProvider", "WebSearchResult"]

# Results one search may ask for: both Brave (count) and Tavily (max_results) cap at 20.
MAX_SEARCH_RESULTS = 20


class WebSearchResult(BaseModel):
    """One hit: its page title, URL, a text excerpt and the provider's relevance score
    (None where the provider gives none, as Brave does)."""

    title: str
    url: str
    content: str = ""
    score: float | None = None


class WebSearchProvider(Protocol):
    """What a web search provider implements."""

    async def list_models(self) -> list[ProviderModel]: ...

    async def web_search(self, query: str, max_results: int) -> list[WebSearchResult]:
        """At most ``max_results`` results, best first. Upstream failures raise
        `fnstack.errors` types: RateLimitError (429), UpstreamTimeoutError,
        UpstreamError (5xx, malformed answers), ServiceUnavailableError (its key
        refused: an operator must fix the configuration)."""
        ...

    async def shutdown(self) -> None: ...


class ToolRuntime(Protocol):
    """The tool runtime service, as other services call it (``user`` is the caller)."""

    async def web_search(self, query: str, max_results: int, user: Any) -> list[WebSearchResult]:
        ...


class WebSearchQuery(BaseModel):
    """Validated arguments of one search (the model writes them: check before sending)."""

    query: str = Field(min_length=1, max_length=2000)
    max_results: int = Field(default=5, ge=1, le=MAX_SEARCH_RESULTS)
