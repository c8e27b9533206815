"""The agent loop's built-in tool registry: how a tool type plugs into /v1/responses.

A request's ``tools`` list holds definitions such as ``{"type": "file_search", ...}``,
``{"type": "mcp", "server_label": ...}`` or ``{"type": "function", "name": ...}``. Every
type except ``function`` (which the loop hands back to the client) is a `BuiltinTool`
found in the registry (`builtin_tools`), by the ``types`` it declares. A module that
implements tools exposes ``TOOLS: tuple[BuiltinTool, ...]`` and is listed in
`BUILTIN_TOOL_MODULES` (imported lazily, on the first response that needs a tool: a
Lambda function that never serves one never imports an MCP client).

The life of a built-in tool in one response (the loop in responses_loop.py drives it):

1. ``validate(definition)`` when the request arrives, before anything is stored: raise
   `fnstack.errors.InvalidRequestError` (400, ``param`` e.g. ``"tools[2].server_url"``)
   for a bad definition, or a missing dependency (e.g. no web search provider is
   configured: say which configuration is missing). Return the definition normalised
   (defaults filled in): it is what the Response object echoes in ``tools``.
2. ``prepare(definitions, run)`` once per response run (also when a background response
   resumes in a fresh worker), with every definition of its types: return a `ToolSet`.
   This is where a tool does its set-up work - e.g. MCP lists the server's tools and adds
   an ``mcp_list_tools`` output item (``run.add_item`` / ``run.done_item`` / ``run.emit``
   for its progress events), unless ``run.context`` already holds one for that server -
   and where it resumes what the client answered: an ``mcp_approval_response`` in
   ``run.context`` whose request was not run yet is executed here, its ``mcp_call`` item
   added to the output (the model then sees it through ``messages``).
3. ``ToolSet.functions()``: the function definitions the model sees (chat completions
   ``tools`` entries: ``{"type": "function", "function": {"name", "description",
   "parameters"}}``). Names must be unique across the response; prefix them when they
   may clash (e.g. ``<server_label>__<tool>``). ``ToolSet.handles(name)`` claims the
   model's calls by name; ``ToolSet.choice(tool_choice)`` maps a ``tool_choice`` object
   of its type (``{"type": "file_search"}``, ``{"type": "mcp", "server_label", "name"}``)
   to the function name the model must call, or None when the choice is not its own.
4. ``ToolSet.call(call, run)`` for each call the model makes (concurrently with the
   model's other calls of the same turn): add the tool's output item with
   ``run.add_item(item)`` (it returns the ``output_index``; this emits
   ``response.output_item.added``), emit the progress events of the type with
   ``run.emit(type, output_index=..., item_id=...)`` (``sequence_number`` is added by the
   loop), and finish with ``run.done_item(output_index, item)``
   (``response.output_item.done``). Return `ToolResult`: ``pause=True`` hands the turn
   back to the client (e.g. an ``mcp_approval_request`` item: the response completes and
   the next request, with ``previous_response_id``, carries the answer). A failing tool
   does not raise: its item says so (e.g. an ``mcp_call`` with ``error``) and the model
   gets the error text. Raise only for a fault of the whole response (it fails).
5. ``messages(item)``: the chat messages the model sees for an output item of the tool's
   ``item_types`` - for this turn's items and for those of earlier turns
   (``previous_response_id``, conversations, full input) alike. A call and its result are
   an assistant message with ``tool_calls`` and a ``tool`` message with the text the model
   gets back; use the item id as the tool call id. Items the model needs not see (an
   ``mcp_list_tools``, a pending approval request) give ``[]``.

Two optional hooks (looked up with ``getattr``):

- ``BuiltinTool.check(definition, param, user, service)`` (async), after ``validate``
  and before anything is stored or run: refuse references the caller may not use
  (``file_search``: a vector store the user cannot read is a 404 naming
  ``tools[i].vector_store_ids[j]``). ``service(name)`` is `ToolRun.service`.
- ``ToolSet.annotations(text, run) -> list[dict]``: annotations for the model's text
  as its message item closes (``file_search``: ``file_citation`` of the files found).

Items are plain wire dicts (the OpenAI output item shapes, e.g. ``{"type":
"file_search_call", "id": "fs_...", "status": "completed", "queries": [...], "results":
[...]}``) and are stored as they are: keep everything the model needs in them. A field
only shown on request (``file_search_call.results`` without ``include``) is still
stored; the service strips it from what the client sees.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from fnstack.storage import Owner

__all__ = [
    "BUILTIN_TOOL_MODULES",
    "BuiltinTool",
    "ModelCall",
    "ToolResult",
    "ToolRun",
    "ToolSet",
    "builtin_tools",
    "finish_search",
    "function_tool",
    "start_search",
]

# The modules whose ``TOOLS`` make up the registry. A listed module that is not
# installed yet (a tool landing later) is skipped; any other import error surfaces.
BUILTIN_TOOL_MODULES = (
    "fnstack.services.responses_files",  # file_search
    "fnstack.services.responses_web",  # web_search, web_search_preview
    "fnstack.services.responses_mcp",  # mcp
)


@dataclass(frozen=True)
class ModelCall:
    """One tool call the model made: its id, the function name, its JSON arguments text
    (as the model wrote it: it may not parse)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolResult:
    """What a call did to the loop: ``pause`` hands the turn back to the client."""

    pause: bool = False


class ToolRun(Protocol):
    """The running response, as a tool sees it."""

    @property
    def user(self) -> Owner:
        """The principal the response runs for: read records as this user."""
        ...

    @property
    def response_id(self) -> str: ...

    @property
    def include(self) -> frozenset[str]:
        """The request's ``include`` values (e.g. ``"file_search_call.results"``)."""
        ...

    @property
    def context(self) -> list[dict[str, Any]]:
        """Every item the model sees this response, oldest first: earlier turns
        (previous response / conversation), the request's input, and this response's
        output so far."""
        ...

    def service(self, name: str) -> Any | None:
        """A service the responses service may use (``vector_stores``, ``tool_runtime``,
        ...), or None when this deployment does not serve it."""
        ...

    async def add_item(self, item: dict[str, Any]) -> int:
        """Append an output item; emits ``response.output_item.added``; its index."""
        ...

    async def done_item(self, output_index: int, item: dict[str, Any]) -> None:
        """Replace the item at ``output_index`` with its final state; emits
        ``response.output_item.done``."""
        ...

    async def emit(self, type: str, **fields: Any) -> None:
        """Emit a streaming event (``sequence_number`` is added); a no-op unstreamed."""
        ...


class ToolSet(Protocol):
    """The prepared tools of one type in one response."""

    def functions(self) -> list[dict[str, Any]]: ...

    def handles(self, name: str) -> bool: ...

    def choice(self, tool_choice: dict[str, Any]) -> str | None: ...

    async def call(self, call: ModelCall, run: ToolRun) -> ToolResult: ...


def function_tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """One chat ``tools`` entry: the function the model calls for a built-in tool."""
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": parameters}}


async def start_search(run: ToolRun, item: dict[str, Any]) -> int:
    """Add a search call's item (``file_search_call``, ``web_search_call``) and announce it
    as OpenAI does, ``response.<type>.in_progress`` then ``.searching``; its output index."""
    index = await run.add_item(item)
    for stage in ("in_progress", "searching"):
        await run.emit(f"response.{item['type']}.{stage}", output_index=index,
                       item_id=item["id"])
    return index


async def finish_search(run: ToolRun, index: int, item: dict[str, Any]) -> ToolResult:
    """Announce ``response.<type>.completed`` and store the item in its final state."""
    await run.emit(f"response.{item['type']}.completed", output_index=index,
                   item_id=item["id"])
    await run.done_item(index, item)
    return ToolResult()


class BuiltinTool(Protocol):
    """A tool type the loop runs itself (see the module docstring)."""

    # The ``tools[].type`` values it implements, and the output item types it makes.
    types: tuple[str, ...]
    item_types: tuple[str, ...]

    def validate(self, definition: dict[str, Any], param: str) -> dict[str, Any]:
        """The definition normalised, or InvalidRequestError naming ``param`` + field."""
        ...

    async def prepare(self, definitions: list[dict[str, Any]], run: ToolRun) -> ToolSet: ...

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]: ...


@dataclass
class _Registry:
    by_type: dict[str, BuiltinTool] = field(default_factory=dict)
    by_item: dict[str, BuiltinTool] = field(default_factory=dict)
    loaded: bool = False


_REGISTRY = _Registry()


def builtin_tools() -> tuple[dict[str, BuiltinTool], dict[str, BuiltinTool]]:
    """(tool type -> tool, output item type -> tool), importing the modules once."""
    if not _REGISTRY.loaded:
        for module_name in BUILTIN_TOOL_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            for tool in getattr(module, "TOOLS", ()):
                for kind in tool.types:
                    _REGISTRY.by_type[kind] = tool
                for kind in tool.item_types:
                    _REGISTRY.by_item[kind] = tool
        _REGISTRY.loaded = True
    return _REGISTRY.by_type, _REGISTRY.by_item
