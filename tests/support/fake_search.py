"""Local servers speaking the real wire formats of Brave Search and Tavily.

Their APIs cannot be reached from here; these answer the same requests the same way:

- Brave: ``GET /res/v1/web/search?q=&count=`` with ``X-Subscription-Token``; answers
  ``{"type": "search", "query": {...}, "web": {"type": "search", "results": [{"title",
  "url", "description" (with <strong> highlights), "extra_snippets"?, ...}]}}``; a wrong
  token is Brave's 422 ``SUBSCRIPTION_TOKEN_INVALID`` ErrorResponse; no hits: no ``web``.
- Tavily: ``POST /search`` with ``Authorization: Bearer <key>`` and ``{"query",
  "max_results", ...}``; answers ``{"query", "answer", "images", "results": [{"title",
  "url", "content", "score", "raw_content"}], "response_time"}``; a wrong key is 401
  ``{"detail": {"error": ...}}``.

Both search one small corpus (every page whose words include a word of the query). Magic
queries make faults on cue: ``fail:429`` (rate limited, retry-after), ``fail:500``,
``fail:503``, ``fail:slow`` (answers after ``slow_s`` seconds), ``fail:garbage`` (HTML).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from tests.support.asgi_thread import AsgiThread, free_port, read_body

__all__ = ["BRAVE_KEY", "CORPUS", "TAVILY_KEY", "FakeSearch", "Page"]

BRAVE_KEY = "brave-test-key"
TAVILY_KEY = "tvly-test-key"


@dataclass(frozen=True)
class Page:
    title: str
    url: str
    text: str


CORPUS: tuple[Page, ...] = (
    Page("Lyon - Wikipedia", "https://en.wikipedia.org/wiki/Lyon",
         "Lyon is the third-largest city of France, at the confluence of the Rhone and Saone."),
    Page("Weather in Lyon today", "https://weather.example.com/lyon",
         "Lyon weather: sunny, 21 C, light wind from the north."),
    Page("fnstack documentation", "https://fnstack.example.org/docs",
         "fnstack is an OpenAI-compatible platform shipped as a serverless function bundle."),
    Page("The Model Context Protocol", "https://modelcontextprotocol.io/",
         "MCP is an open protocol that connects AI applications to tools and data."),
    Page("Saone river", "https://en.wikipedia.org/wiki/Saone",
         "The Saone is a river of eastern France that joins the Rhone at Lyon."),
)


def _words(text: str) -> set[str]:
    return {w.strip(".,:;!?()").lower() for w in text.split() if len(w.strip(".,:;!?()")) > 2}


def search(query: str, limit: int) -> list[tuple[Page, float]]:
    """Pages sharing a word with the query, most shared words first (score 0..1)."""
    wanted = _words(query)
    scored = []
    for page in CORPUS:
        hits = len(wanted & _words(f"{page.title} {page.text}"))
        if hits:
            scored.append((page, round(min(1.0, 0.5 + hits / (2 * max(len(wanted), 1))), 4)))
    scored.sort(key=lambda ps: -ps[1])
    return scored[:limit]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeSearch:
    """Both APIs on one port: ``base_url`` serves as Brave's and as Tavily's origin."""

    slow_s: float = 30.0
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._serving = AsgiThread(self._app, self.port, name="fake search server")

    def __enter__(self) -> FakeSearch:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(Seen(scope["method"], scope["path"], headers, query, body))
        if scope["path"] == "/res/v1/web/search" and scope["method"] == "GET":
            status, payload, extra = await self._brave(headers, query)
        elif scope["path"] == "/search" and scope["method"] == "POST":
            status, payload, extra = await self._tavily(headers, body)
        else:
            status, payload, extra = 404, {"detail": "Not Found"}, {}
        if isinstance(payload, str):
            content, ctype = payload.encode(), "text/html"
        else:
            content, ctype = json.dumps(payload).encode(), "application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()),
                                *((k.encode(), v.encode()) for k, v in extra.items())]})
        await send({"type": "http.response.body", "body": content})

    async def _fault(self, query: str) -> tuple[int, Any, dict[str, str]] | None:
        if query == "fail:429":
            return 429, {"detail": "rate limited"}, {"retry-after": "7"}
        if query in ("fail:500", "fail:503"):
            return int(query[5:]), {"detail": "upstream is having a bad day"}, {}
        if query == "fail:slow":
            await asyncio.sleep(self.slow_s)
        if query == "fail:garbage":
            return 200, "<html>not json</html>", {}
        return None

    async def _brave(self, headers: dict[str, str],
                     query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        if headers.get("x-subscription-token") != BRAVE_KEY:
            return 422, {"type": "ErrorResponse", "error": {
                "id": "7d5c2f0e", "status": 422, "code": "SUBSCRIPTION_TOKEN_INVALID",
                "detail": "The provided subscription token is invalid.",
                "meta": {"component": "authentication"}}, "time": int(time.time())}, {}
        q = query.get("q", [""])[0]
        count = int(query.get("count", ["20"])[0])
        if not q or not 1 <= count <= 20:
            return 422, {"type": "ErrorResponse", "error": {
                "status": 422, "code": "VALIDATION", "detail": "Unable to validate request"}}, {}
        if (fault := await self._fault(q)) is not None:
            if fault[0] == 429:
                return 429, {"type": "ErrorResponse", "error": {
                    "status": 429, "code": "RATE_LIMITED",
                    "detail": "Request rate limit exceeded for plan."}}, fault[2]
            return fault
        hits = search(q, count)
        answer: dict[str, Any] = {
            "type": "search",
            "query": {"original": q, "show_strict_warning": False, "is_navigational": False},
            "mixed": {"type": "mixed", "main": [], "top": [], "side": []},
        }
        if hits:
            answer["web"] = {"type": "search", "family_friendly": True, "results": [
                {"type": "search_result", "title": page.title, "url": page.url,
                 "is_source_local": False, "is_source_both": False,
                 "description": _highlight(page.text, q), "language": "en",
                 "profile": {"name": page.url.split("/")[2]},
                 **({"extra_snippets": [f"More about {page.title}."]} if i == 0 else {})}
                for i, (page, _) in enumerate(hits)]}
        return 200, answer, {}

    async def _tavily(self, headers: dict[str, str],
                      body: Any) -> tuple[int, Any, dict[str, str]]:
        if headers.get("authorization") != f"Bearer {TAVILY_KEY}":
            return 401, {"detail": {"error": "Unauthorized: missing or invalid API key."}}, {}
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return 400, {"detail": {"error": "Invalid request: query is required."}}, {}
        q = body["query"]
        limit = int(body.get("max_results", 5))
        if not 0 <= limit <= 20:
            return 400, {"detail": {"error": "max_results must be between 0 and 20."}}, {}
        if (fault := await self._fault(q)) is not None:
            if fault[0] == 429:
                return 429, {"detail": {"error": "Rate limit exceeded."}}, fault[2]
            return fault
        return 200, {
            "query": q, "follow_up_questions": None, "answer": None, "images": [],
            "results": [{"title": page.title, "url": page.url, "content": page.text,
                         "score": score, "raw_content": None}
                        for page, score in search(q, limit)],
            "response_time": 0.01,
        }, {}


def _highlight(text: str, query: str) -> str:
    wanted = _words(query)
    return " ".join(f"<strong>{w}</strong>" if w.strip(".,:;!?()").lower() in wanted else w
                    for w in text.split())
