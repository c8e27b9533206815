"""The tool runtime service: the back ends of the agent loop's built-in tools.

Today that is web search: ``web_search(query, max_results, user)`` asks the first
configured ``tool_runtime`` provider (``remote::brave-search``, ``remote::tavily-search``;
the run config's order decides). The service has no routes of its own: the Responses
API's ``web_search`` tool calls it in process. It is served only where a provider is
configured; the responses service takes it as an optional dependency and refuses the
``web_search`` tool with a 400 naming the missing configuration where it is absent.
"""

from __future__ import annotations

import logging
import time

from pydantic import ValidationError

from fnstack.api.tool_runtime import WebSearchProvider, WebSearchQuery, WebSearchResult
from fnstack.errors import InvalidRequestError
from fnstack.services import Service, ServiceContext, ServiceSpec
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["ToolRuntimeService", "spec"]

log = logging.getLogger(__name__)


class ToolRuntimeService(Service):
    def __init__(self, providers: dict[str, WebSearchProvider]) -> None:
        self.providers = dict(providers)

    @property
    def search_provider_id(self) -> str | None:
        return next(iter(self.providers), None)

    async def web_search(self, query: str, max_results: int,
                         user: Owner) -> list[WebSearchResult]:
        """The provider's results, best first; upstream failures raise fnstack errors
        (429 RateLimitError, 502/504 Upstream*, 503 when the provider's key is refused)."""
        try:
            args = WebSearchQuery(query=query, max_results=max_results)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidRequestError(
                f"web search {'.'.join(map(str, first['loc']))}: {first['msg']}",
                param="query" if first["loc"][:1] == ("query",) else "max_results",
            ) from None
        pid = self.search_provider_id
        if pid is None:
            raise InvalidRequestError(
                "web search is not configured here: add a tool_runtime provider "
                "(remote::brave-search or remote::tavily-search) to the run config",
                code="web_search_not_configured",
            )
        started = time.monotonic()
        results = await self.providers[pid].web_search(args.query, args.max_results)
        log.info("web search", extra={"provider_id": pid, "results": len(results),
                                      "ms": round((time.monotonic() - started) * 1000)})
        return results[:args.max_results]


async def _build(ctx: ServiceContext) -> ToolRuntimeService:
    return ToolRuntimeService(ctx.providers)


spec = ServiceSpec(
    name="tool_runtime",
    apis=(Api.tool_runtime,),
    factory=_build,
    provider_api=Api.tool_runtime,
    provider_protocol=WebSearchProvider,
    description="web search for the Responses API's web_search tool",
)
