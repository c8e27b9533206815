"""The ``file_search`` built-in tool: the model searches vector stores.

Definition (OpenAI's)::

    {"type": "file_search", "vector_store_ids": ["vs_..."], "max_num_results": 10,
     "filters": {"type": "eq", "key": "author", "value": "ada"},
     "ranking_options": {"ranker": "auto", "score_threshold": 0.0,
                         "hybrid_search": {"embedding_weight": 0.7, "text_weight": 0.3}}}

The model sees one function, ``file_search(queries: string[])``. A call searches every
store of the definition as the response's user (VectorStoresService.search: a store the
user may not read is a 404 - checked when the request arrives, before anything runs),
merges the hits by score and keeps ``max_num_results``. ``hybrid_search`` switches to
hybrid search (vector + keyword, weighted fusion with ``alpha = embedding_weight /
(embedding_weight + text_weight)``).

The call is a ``file_search_call`` output item (``queries``, ``results`` - shown with
``include: ["file_search_call.results"]``, always stored) with the events
``response.file_search_call.in_progress`` / ``.searching`` / ``.completed``. The model
gets the hits as numbered text; the text the model then writes carries a
``file_citation`` annotation for each file its search returned (at the end of the text:
the model's own citation markers are not parsed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ValidationError

from fnstack.api.vector_stores import RankingOptions, SearchRequest
from fnstack.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
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

__all__ = ["TOOLS", "FileSearch"]

NAME = "file_search"
DESCRIPTION = ("Search the user's files (vector stores) for passages relevant to the "
               "queries; returns the best matching passages with their file names.")
PARAMETERS = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {"type": "string"},
                               "description": "One or more search queries."}},
    "required": ["queries"],
}


def _search_request(definition: dict[str, Any], queries: list[str]) -> SearchRequest:
    ranking = dict(definition.get("ranking_options") or {})
    hybrid = ranking.pop("hybrid_search", None)
    mode: Literal["vector", "keyword", "hybrid"] = "vector"
    options: dict[str, Any] = {"score_threshold": ranking.get("score_threshold", 0.0)}
    if hybrid:
        ew = float(hybrid.get("embedding_weight", 0.5))
        tw = float(hybrid.get("text_weight", 0.5))
        mode = "hybrid"
        options.update(ranker="weighted", alpha=ew / (ew + tw) if ew + tw > 0 else 0.5)
    limit = definition.get("max_num_results")
    return SearchRequest(query=queries, filters=definition.get("filters"),
                         max_num_results=10 if limit is None else limit,
                         ranking_options=RankingOptions(**options), search_mode=mode)


class FileSearch:
    types = ("file_search",)
    item_types = ("file_search_call",)

    def validate(self, definition: dict[str, Any], param: str) -> dict[str, Any]:
        ids = definition.get("vector_store_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise InvalidRequestError(
                f"{param}.vector_store_ids must be a non-empty list of vector store ids",
                param=f"{param}.vector_store_ids")
        ranking = definition.get("ranking_options") or {}
        if not isinstance(ranking, dict) or set(ranking) - {
                "ranker", "score_threshold", "hybrid_search"}:
            raise InvalidRequestError(
                f"{param}.ranking_options takes ranker, score_threshold and hybrid_search",
                param=f"{param}.ranking_options")
        if ranking.get("ranker") not in (None, "auto", "default-2024-11-15"):
            raise InvalidRequestError(f"{param}.ranking_options.ranker must be 'auto' or "
                                      "'default-2024-11-15'",
                                      param=f"{param}.ranking_options.ranker")
        hybrid = ranking.get("hybrid_search")
        if hybrid is not None and (not isinstance(hybrid, dict) or not all(
                isinstance(hybrid.get(k), int | float) and hybrid[k] >= 0
                for k in ("embedding_weight", "text_weight"))):
            raise InvalidRequestError(
                f"{param}.ranking_options.hybrid_search needs embedding_weight and "
                "text_weight (numbers >= 0)", param=f"{param}.ranking_options.hybrid_search")
        try:
            _search_request(definition, ["check"])
        except (ValidationError, TypeError, ValueError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise InvalidRequestError(f"{param} is invalid: {msg}", param=param) from None
        return {"type": "file_search", "vector_store_ids": ids,
                "filters": definition.get("filters"),
                "max_num_results": _search_request(definition, ["check"]).max_num_results,
                "ranking_options": {"ranker": ranking.get("ranker") or "auto",
                                    "score_threshold": ranking.get("score_threshold", 0.0),
                                    **({"hybrid_search": hybrid} if hybrid else {})}}

    async def check(self, definition: dict[str, Any], param: str, user: Owner,
                    service: Callable[[str], Any | None]) -> None:
        stores = service("vector_stores")
        if stores is None:
            raise InvalidRequestError("file_search needs the vector stores API, which this "
                                      "deployment does not serve", param=param)
        for n, vs_id in enumerate(definition["vector_store_ids"]):
            try:
                await stores.get(vs_id, user)
            except NotFoundError:
                raise NotFoundError(f"vector store {vs_id!r} not found",
                                    param=f"{param}.vector_store_ids[{n}]") from None

    async def prepare(self, definitions: list[dict[str, Any]], run: ToolRun) -> _FileSearchSet:
        return _FileSearchSet(definitions)

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        args = json.dumps({"queries": item.get("queries") or []})
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": item["id"], "type": "function",
                     "function": {"name": NAME, "arguments": args}}]},
                {"role": "tool", "tool_call_id": item["id"],
                 "content": _results_text(item.get("results") or [])}]


def _results_text(results: list[dict[str, Any]]) -> str:
    if not results:
        return "No results found."
    return "\n\n".join(f"[{n}] {r.get('filename') or r.get('file_id')} "
                       f"(file {r.get('file_id')}):\n{r.get('text', '')}"
                       for n, r in enumerate(results, 1))


class _FileSearchSet:
    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self.definitions = definitions
        self.mine: set[str] = set()  # this run's file_search_call items: cited

    def functions(self) -> list[dict[str, Any]]:
        return [function_tool(NAME, DESCRIPTION, PARAMETERS)]

    def handles(self, name: str) -> bool:
        return name == NAME

    def choice(self, tool_choice: dict[str, Any]) -> str | None:
        return NAME if tool_choice.get("type") == "file_search" else None

    async def call(self, call: ModelCall, run: ToolRun) -> ToolResult:
        queries = _queries(call.arguments)
        fs_id = item_id("file_search_call")
        self.mine.add(fs_id)
        item: dict[str, Any] = {"type": "file_search_call", "id": fs_id,
                                "status": "in_progress", "queries": queries, "results": None}
        index = await start_search(run, item)
        stores = run.service("vector_stores")
        if stores is None:
            raise ServiceUnavailableError("file_search: the vector stores API is not served")
        results: list[dict[str, Any]] = []
        status = "completed"
        if queries:
            for definition in self.definitions:
                request = _search_request(definition, queries)
                for vs_id in definition["vector_store_ids"]:
                    try:
                        page = await stores.search(vs_id, request, run.user)
                    except NotFoundError:
                        status = "failed"  # deleted since the request arrived
                        continue
                    results += [{"file_id": r.file_id, "filename": r.filename,
                                 "score": r.score, "attributes": r.attributes,
                                 "text": "\n".join(c.text for c in r.content)}
                                for r in page.data]
            results.sort(key=lambda r: -float(r["score"]))
            results = results[:max(d.get("max_num_results") or 10 for d in self.definitions)]
        return await finish_search(run, index, {**item, "status": status, "results": results})

    def annotations(self, text: str, run: ToolRun) -> list[dict[str, Any]]:
        if not text:
            return []
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for item in run.context:
            if item.get("type") != "file_search_call" or item.get("id") not in self.mine:
                continue
            for r in item.get("results") or []:
                if r["file_id"] in seen:
                    continue
                seen.add(r["file_id"])
                out.append({"type": "file_citation", "file_id": r["file_id"],
                            "filename": r.get("filename") or "", "index": len(text)})
        return out


def _queries(arguments: str) -> list[str]:
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return [arguments] if arguments.strip() else []
    if not isinstance(args, dict):
        return []
    raw = args.get("queries", args.get("query")) or []
    queries = [raw] if isinstance(raw, str) else [q for q in raw if isinstance(q, str)]
    return [q for q in queries if q.strip()]


TOOLS = (FileSearch(),)
