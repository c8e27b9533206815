"""The ``web_search`` built-in tool (and ``web_search_preview``): the model searches the web.

Definition (OpenAI's)::

    {"type": "web_search", "filters": {"allowed_domains": ["wikipedia.org"]},
     "search_context_size": "low" | "medium" | "high",
     "user_location": {"type": "approximate", "city": "Lyon", "country": "FR"}}

``web_search_preview`` (and the dated aliases ``web_search_2025_08_26``,
``web_search_preview_2025_03_11``) work the same. The search runs on the tool runtime
service (fnstack.services.tool_runtime: Brave Search or Tavily); a deployment without a
search provider refuses the tool with a 400 naming the configuration to add.

The model sees one function, ``web_search(query)``. A call is a ``web_search_call``
output item (``action: {"type": "search", "query", "sources"}``) with the events
``response.web_search_call.in_progress`` / ``.searching`` / ``.completed``; the results
(title, url, content, score) are stored on the item as ``results`` - shown to the client
with ``include: ["web_search_call.results"]``, the sources with
``"web_search_call.action.sources"``. ``search_context_size`` sets how many results the
model reads (low 3, medium 5, high 10); ``allowed_domains`` keeps the results on those
domains and their subdomains. ``user_location`` is accepted and not used: neither search
API takes a free-text location. A search that fails upstream (rate limit, timeout, a
refused key) makes a ``failed`` item whose ``error`` the model reads; the response goes on.

The model's text then carries a ``url_citation`` annotation (start/end index, url, title)
for every place it writes the URL of a result it was given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fnstack.errors import FnstackError, InvalidRequestError
from fnstack.services.responses_items import item_id
from fnstack.services.responses_tools import (
    ModelCall,
    ToolResult,
    ToolRun,
    finish_search,
    function_tool,
    start_search,
)
from fnstack.storage import Owner

__all__ = ["TOOLS", "WebSearch"]

NAME = "web_search"
TYPES = ("web_search", "web_search_2025_08_26", "web_search_preview",
         "web_search_preview_2025_03_11")
DESCRIPTION = ("Search the web. Returns the best matching pages: their title, URL and an "
               "excerpt. Cite the URLs of the pages you use.")
PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "The search query."}},
    "required": ["query"],
}
RESULTS_BY_SIZE = {"low": 3, "medium": 5, "high": 10}
NOT_CONFIGURED = (
    "web search is not configured on this deployment: set FNSTACK_BRAVE_API_KEY or "
    "FNSTACK_TAVILY_API_KEY (the local and aws distributions), or add a tool_runtime provider "
    "(remote::brave-search or remote::tavily-search) to the run config")


class _Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_domains: list[str] | None = None


class _Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["approximate"] | None = "approximate"
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class WebSearchDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    filters: _Filters | None = None
    search_context_size: Literal["low", "medium", "high"] = "medium"
    user_location: _Location | None = None
    external_web_access: bool | None = None
    search_content_types: list[Literal["text", "image"]] | None = None


def _on_domain(url: str, domains: list[str]) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return any(host == d or host.endswith("." + d)
               for d in (x.lower().strip().removeprefix("www.") for x in domains))


class WebSearch:
    types = TYPES
    item_types = ("web_search_call",)

    def validate(self, definition: dict[str, Any], param: str) -> dict[str, Any]:
        try:
            d = WebSearchDefinition.model_validate(definition)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidRequestError(f"{param}.{where}: {err['msg']}",
                                      param=f"{param}.{err['loc'][0]}") from None
        if d.external_web_access is False:
            raise InvalidRequestError(
                f"{param}.external_web_access: false (cached results only) is not supported "
                "here: every search asks the search API", param=f"{param}.external_web_access")
        if d.filters and d.filters.allowed_domains is not None and not all(
                isinstance(x, str) and x.strip() and "/" not in x
                for x in d.filters.allowed_domains):
            raise InvalidRequestError(
                f"{param}.filters.allowed_domains must be domain names (e.g. 'wikipedia.org')",
                param=f"{param}.filters.allowed_domains")
        return d.model_dump(exclude_none=True)

    async def check(self, definition: dict[str, Any], param: str, user: Owner,
                    service: Callable[[str], Any | None]) -> None:
        runtime = service("tool_runtime")
        if runtime is None or getattr(runtime, "search_provider_id", None) is None:
            raise InvalidRequestError(NOT_CONFIGURED, param=f"{param}.type",
                                      code="web_search_not_configured")

    async def prepare(self, definitions: list[dict[str, Any]], run: ToolRun) -> _WebSet:
        return _WebSet(definitions)

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        action = item.get("action") or {}
        args = json.dumps({"query": action.get("query") or ""})
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": item["id"], "type": "function",
                     "function": {"name": NAME, "arguments": args}}]},
                {"role": "tool", "tool_call_id": item["id"], "content": _results_text(item)}]


def _results_text(item: dict[str, Any]) -> str:
    if item.get("error"):
        return f"Error: the web search failed: {item['error']}"
    results = item.get("results") or []
    if not results:
        return "No results found."
    return "\n\n".join(f"[{n}] {r.get('title')}\nURL: {r.get('url')}\n{r.get('content', '')}"
                       for n, r in enumerate(results, 1))


def _query(arguments: str) -> str:
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return arguments.strip()
    if not isinstance(args, dict):
        return ""
    raw = args.get("query", args.get("queries", ""))
    if isinstance(raw, list):
        raw = " ".join(q for q in raw if isinstance(q, str))
    return raw.strip() if isinstance(raw, str) else ""


class _WebSet:
    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        first = definitions[0]
        self.limit = RESULTS_BY_SIZE[first.get("search_context_size") or "medium"]
        domains: list[str] = []
        for d in definitions:
            domains += (d.get("filters") or {}).get("allowed_domains") or []
        self.domains = domains

    def functions(self) -> list[dict[str, Any]]:
        return [function_tool(NAME, DESCRIPTION, PARAMETERS)]

    def handles(self, name: str) -> bool:
        return name == NAME

    def choice(self, tool_choice: dict[str, Any]) -> str | None:
        return NAME if tool_choice.get("type") in TYPES else None

    async def call(self, call: ModelCall, run: ToolRun) -> ToolResult:
        query = _query(call.arguments)
        ws_id = item_id("web_search_call")
        item: dict[str, Any] = {"type": "web_search_call", "id": ws_id, "status": "in_progress",
                                "action": {"type": "search", "query": query}}
        index = await start_search(run, item)
        runtime = run.service("tool_runtime")
        final: dict[str, Any]
        try:
            if runtime is None:
                raise InvalidRequestError(NOT_CONFIGURED, code="web_search_not_configured")
            if not query:
                raise InvalidRequestError("the model asked for a search without a query")
            # Ask for more when filtering by domain: the filter drops some.
            asked = min(20, self.limit * 3) if self.domains else self.limit
            found = await runtime.web_search(query, asked, run.user)
        except FnstackError as exc:
            final = {**item, "status": "failed", "error": exc.message,
                     "action": {"type": "search", "query": query, "sources": []},
                     "results": []}
        else:
            results = [r.model_dump() for r in found
                       if not self.domains or _on_domain(r.url, self.domains)][:self.limit]
            final = {**item, "status": "completed",
                     "action": {"type": "search", "query": query,
                                "sources": [{"type": "url", "url": r["url"]} for r in results]},
                     "results": results}
        return await finish_search(run, index, final)

    def annotations(self, text: str, run: ToolRun) -> list[dict[str, Any]]:
        """A url_citation wherever the text holds the URL of a result the model was given."""
        if not text:
            return []
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for item in run.context:
            if item.get("type") != "web_search_call":
                continue
            for r in item.get("results") or []:
                url = r.get("url")
                if not isinstance(url, str) or url in seen:
                    continue
                seen.add(url)
                start = text.find(url)
                while start >= 0:
                    end = start + len(url)
                    # A longer URL that starts with this one is not a citation of it.
                    if end == len(text) or not (text[end].isalnum() or text[end] in "/-_%?#&="):
                        out.append({"type": "url_citation", "start_index": start,
                                    "end_index": end, "url": url, "title": r.get("title") or url})
                    start = text.find(url, end)
        out.sort(key=lambda a: a["start_index"])
        return out


TOOLS = (WebSearch(),)
