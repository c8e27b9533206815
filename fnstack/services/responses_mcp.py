"""The ``mcp`` built-in tool: the model calls the tools of remote MCP servers.

Definition (OpenAI's)::

    {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp",
     "headers": {"Authorization": "Bearer ..."}, "authorization": "<OAuth token>",
     "allowed_tools": ["ask_question"] | {"tool_names": [...], "read_only": true},
     "require_approval": "always" | "never" | {"never": {"tool_names": [...]},
                                               "always": {"tool_names": [...]}},
     "server_description": "..."}

One response run (see fnstack.services.responses_tools for the plug-in points):

1. ``prepare`` lists the server's tools (fnstack.mcp_client, streamable HTTP, or SSE
   when the URL path ends in /sse) into an ``mcp_list_tools`` output item with
   ``response.mcp_list_tools.in_progress`` / ``.completed`` events - unless the context
   (the previous response's output, a conversation) already holds one for that
   ``server_label``, as OpenAI reuses it. A server that cannot be listed fails the
   response with the MCP error (``.failed`` event; the item keeps the ``error``).
2. The model sees each allowed tool as the function ``<server_label>__<tool name>``.
3. A call needing approval becomes an ``mcp_approval_request`` item and pauses the loop:
   the response completes, and the client answers in its next request (with
   ``previous_response_id``) with an input item ``{"type": "mcp_approval_response",
   "approval_request_id": "mcpr_...", "approve": true}``. ``prepare`` of that run finds
   it and runs the approved call (its ``mcp_call`` carries ``approval_request_id``); a
   denial tells the model the call was refused.
4. A call is an ``mcp_call`` item: ``response.mcp_call_arguments.delta`` / ``.done``,
   ``response.mcp_call.in_progress``, then ``.completed`` with ``output``, or ``.failed``
   with ``error`` (the tool failed: ``mcp_tool_execution_error``; the server answered an
   HTTP error, timed out or is down: ``http_error`` with the status, 504 for a timeout,
   502 for a server that cannot be reached; a JSON-RPC error: ``mcp_protocol_error``).
   A failed call never fails the response: the model reads the error and goes on.

Limits and security (docs/tools.md): every MCP request is bounded by
``FNSTACK_MCP_TIMEOUT_S`` (default 30 s) - connect, handshake and answer together. The
server fetches ``server_url`` itself, so ``FNSTACK_MCP_ALLOWED_URLS`` (comma-separated URL
prefixes) restricts where it may go; unset, any http(s) URL is allowed except literal
link-local addresses (cloud metadata) and, on Lambda, loopback (the Runtime API).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from fnstack.errors import InvalidRequestError
from fnstack.services.responses_items import item_id
from fnstack.services.responses_tools import ModelCall, ToolResult, ToolRun, function_tool

__all__ = ["TOOLS", "McpTool", "function_name", "mcp_settings"]

DEFAULT_TIMEOUT_S = 30.0
# OpenAI's rule for labels; they also make up the model's function names.
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")
SEPARATOR = "__"


def mcp_settings() -> tuple[float, tuple[str, ...]]:
    """(timeout in seconds, allowed URL prefixes: empty = any) from the environment."""
    raw = os.environ.get("FNSTACK_MCP_TIMEOUT_S", "")
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    allowed = tuple(p.strip() for p in os.environ.get("FNSTACK_MCP_ALLOWED_URLS", "").split(",")
                    if p.strip())
    return (timeout if timeout > 0 else DEFAULT_TIMEOUT_S), allowed


def _blocked(host: str) -> str | None:
    """Why a host must not be called without an explicit allow-list, or None.

    Link-local addresses hold cloud metadata services (169.254.169.254: instance
    credentials). On Lambda, loopback is the Runtime API (127.0.0.1:9001) and the Web
    Adapter's app: a request there could fetch or answer other invocations. Only literal
    addresses and ``localhost`` are checked here: a name that resolves to one is the
    allow-list's job (docs/tools.md)."""
    host = host.strip("[]").lower()
    on_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    if host == "localhost" or host.endswith(".localhost"):
        return "this machine (loopback)" if on_lambda else None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_link_local:
        return "a link-local address (cloud metadata)"
    if (ip.is_loopback or ip.is_unspecified) and on_lambda:
        return "this machine (loopback)"
    return None


def function_name(server_label: str, tool: str) -> str:
    """The function name the model sees for ``tool`` of server ``server_label``."""
    return f"{server_label}{SEPARATOR}{_NOT_NAME.sub('_', tool)}"[:64]


# --- the definition ------------------------------------------------------------------


class _ToolFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_names: list[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, annotations: dict[str, Any] | None) -> bool:
        """OpenAI's filter: every given criterion must hold; an empty filter matches none."""
        if self.tool_names is None and self.read_only is None:
            return False
        if self.tool_names is not None and name not in self.tool_names:
            return False
        if self.read_only is not None:
            hint = bool((annotations or {}).get("readOnlyHint", False))
            return hint == self.read_only
        return True


class _ApprovalFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    always: _ToolFilter | None = None
    never: _ToolFilter | None = None


class McpDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["mcp"] = "mcp"
    server_label: str
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | _ToolFilter | None = None
    require_approval: Literal["always", "never"] | _ApprovalFilter | None = None
    server_description: str | None = None
    # Accepted as OpenAI's SDK may send them; nothing here depends on them.
    allowed_callers: list[str] | None = None
    defer_loading: bool | None = None

    @field_validator("server_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _LABEL.match(value):
            raise ValueError("must start with a letter and hold only letters, digits, '-' "
                             "and '_' (at most 64)")
        return value

    def allows(self, name: str, annotations: dict[str, Any] | None) -> bool:
        if self.allowed_tools is None:
            return True
        if isinstance(self.allowed_tools, list):
            return name in self.allowed_tools
        return self.allowed_tools.matches(name, annotations)

    def needs_approval(self, name: str, annotations: dict[str, Any] | None) -> bool:
        rule = self.require_approval
        if rule is None or rule == "always":
            return True  # OpenAI's default: nothing reaches a server unapproved
        if rule == "never":
            return False
        assert isinstance(rule, _ApprovalFilter)
        if rule.always is not None and rule.always.matches(name, annotations):
            return True
        # A filter that names only `never` lists the exceptions: the rest need approval.
        return not (rule.never is not None and rule.never.matches(name, annotations))

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers or {})
        if self.authorization:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return headers


def _definition(raw: dict[str, Any]) -> McpDefinition:
    return McpDefinition.model_validate(raw)


# --- items ----------------------------------------------------------------------------


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    if error.get("type") == "mcp_tool_execution_error":
        content = error.get("content")
        if isinstance(content, list):
            return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content)
    return str(error.get("message", ""))


def _call_error(exc: Exception) -> dict[str, Any]:
    from fnstack.mcp_client import McpError

    if isinstance(exc, McpError) and exc.rpc_code is not None:
        return {"type": "mcp_protocol_error", "code": exc.rpc_code, "message": exc.message}
    status = exc.http_status if isinstance(exc, McpError) and exc.http_status else 502
    return {"type": "http_error", "code": status, "message": str(exc)}


class McpTool:
    types = ("mcp",)
    item_types = ("mcp_list_tools", "mcp_call", "mcp_approval_request",
                  "mcp_approval_response")

    def validate(self, definition: dict[str, Any], param: str) -> dict[str, Any]:
        try:
            d = _definition(definition)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidRequestError(f"{param}.{where}: {err['msg']}",
                                      param=f"{param}.{err['loc'][0]}") from None
        if d.connector_id or d.tunnel_id:
            field = "connector_id" if d.connector_id else "tunnel_id"
            raise InvalidRequestError(
                f"{param}.{field}: OpenAI's connectors and tunnels are not available here; "
                "give the MCP server's server_url", param=f"{param}.{field}")
        if not d.server_url:
            raise InvalidRequestError(f"{param}.server_url is required (the MCP server's "
                                      "streamable HTTP URL, or its /sse URL)",
                                      param=f"{param}.server_url")
        parts = urlsplit(d.server_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(f"{param}.server_url must be an http(s) URL",
                                      param=f"{param}.server_url")
        _, allowed = mcp_settings()
        if allowed and not any(d.server_url.startswith(prefix) for prefix in allowed):
            raise InvalidRequestError(
                f"{param}.server_url is not among the MCP servers this deployment may reach "
                "(FNSTACK_MCP_ALLOWED_URLS)", param=f"{param}.server_url",
                code="mcp_server_not_allowed")
        blocked = None if allowed else _blocked(parts.hostname)
        if blocked:
            raise InvalidRequestError(
                f"{param}.server_url points at {blocked}, which this server does not call on "
                "a caller's behalf unless FNSTACK_MCP_ALLOWED_URLS lists it",
                param=f"{param}.server_url", code="mcp_server_not_allowed")
        out = d.model_dump(exclude_none=True)
        out["require_approval"] = out.get("require_approval") or "always"
        return out

    async def prepare(self, definitions: list[dict[str, Any]], run: ToolRun) -> _McpSet:
        defs: dict[str, McpDefinition] = {}
        for raw in definitions:
            d = _definition(raw)
            if d.server_label in defs:
                raise InvalidRequestError(
                    f"two mcp tools share server_label {d.server_label!r}; labels must be "
                    "unique in a request", param="tools")
            defs[d.server_label] = d
        toolset = _McpSet(defs)
        for d in defs.values():
            toolset.tools[d.server_label] = await _tools_of(d, run)
        await toolset.resume_approved(run)
        return toolset

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        kind = item.get("type")
        if kind == "mcp_call":
            text = item.get("output")
            if item.get("error"):
                text = f"Error: {_error_text(item['error'])}"
            name = function_name(item.get("server_label", ""), item.get("name", ""))
            return [{"role": "assistant", "content": None, "tool_calls": [
                        {"id": item["id"], "type": "function",
                         "function": {"name": name, "arguments": item.get("arguments") or "{}"}}]},
                    {"role": "tool", "tool_call_id": item["id"], "content": text or ""}]
        if kind == "mcp_approval_response" and not item.get("approve"):
            reason = f" ({item['reason']})" if item.get("reason") else ""
            # A user turn, not a system one: chat templates refuse a mid-conversation system.
            return [{"role": "user", "content":
                     f"[The user denied the MCP tool call {item.get('approval_request_id')}"
                     f"{reason}. Do not call it again; answer without it.]"}]
        return []  # tool lists and pending approval requests: nothing for the model


async def _tools_of(d: McpDefinition, run: ToolRun) -> list[dict[str, Any]]:
    """The server's tools: from an earlier mcp_list_tools of this label, else listed now."""
    for earlier in reversed(run.context):
        if earlier.get("type") == "mcp_list_tools" and \
                earlier.get("server_label") == d.server_label and not earlier.get("error"):
            tools: list[dict[str, Any]] = earlier.get("tools") or []
            return tools
    from fnstack.mcp_client import McpError, list_tools

    timeout, _ = mcp_settings()
    item: dict[str, Any] = {"type": "mcp_list_tools", "id": item_id("mcp_list_tools"),
                            "server_label": d.server_label, "tools": [], "error": None}
    index = await run.add_item(item)
    await run.emit("response.mcp_list_tools.in_progress", output_index=index,
                   item_id=item["id"])
    try:
        listed = await list_tools(d.server_url or "", d.request_headers(), timeout)
    except McpError as exc:
        await run.emit("response.mcp_list_tools.failed", output_index=index,
                       item_id=item["id"])
        await run.done_item(index, {**item, "error": exc.message})
        raise McpError(f"mcp tool {d.server_label!r}: cannot list the server's tools: "
                       f"{exc.message}", code=exc.code or "mcp_error",
                       http_status=exc.http_status, rpc_code=exc.rpc_code) from exc
    tools = [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
              "annotations": t.annotations}
             for t in listed if d.allows(t.name, t.annotations)]
    await run.emit("response.mcp_list_tools.completed", output_index=index, item_id=item["id"])
    await run.done_item(index, {**item, "tools": tools})
    return tools


class _McpSet:
    def __init__(self, defs: dict[str, McpDefinition]) -> None:
        self.defs = defs
        self.tools: dict[str, list[dict[str, Any]]] = {}

    def _by_function(self) -> dict[str, tuple[McpDefinition, dict[str, Any]]]:
        out: dict[str, tuple[McpDefinition, dict[str, Any]]] = {}
        for label, tools in self.tools.items():
            d = self.defs[label]
            for t in tools:
                if d.allows(t["name"], t.get("annotations")):
                    out[function_name(label, t["name"])] = (d, t)
        return out

    def functions(self) -> list[dict[str, Any]]:
        out = []
        for name, (d, t) in self._by_function().items():
            description = t.get("description") or f"The {t['name']} tool of {d.server_label}."
            if d.server_description:
                description += f" (MCP server {d.server_label}: {d.server_description})"
            schema = t.get("input_schema") or {"type": "object", "properties": {}}
            out.append(function_tool(name, description, schema))
        return out

    def handles(self, name: str) -> bool:
        return name in self._by_function()

    def choice(self, tool_choice: dict[str, Any]) -> str | None:
        if tool_choice.get("type") != "mcp" or tool_choice.get("server_label") not in self.defs:
            return None
        label = tool_choice["server_label"]
        names = [f for f, (d, _) in self._by_function().items() if d.server_label == label]
        wanted = tool_choice.get("name")
        if wanted is not None:
            name = function_name(label, wanted)
            if name not in names:
                raise InvalidRequestError(
                    f"tool_choice names tool {wanted!r}, which MCP server {label!r} does not "
                    "offer (or allowed_tools excludes)", param="tool_choice.name")
            return name
        if len(names) == 1:
            return names[0]
        raise InvalidRequestError(
            f"tool_choice for MCP server {label!r} needs a name: the server offers "
            f"{len(names)} tools", param="tool_choice.name")

    async def call(self, call: ModelCall, run: ToolRun) -> ToolResult:
        d, tool = self._by_function()[call.name]
        if d.needs_approval(tool["name"], tool.get("annotations")):
            item = {"type": "mcp_approval_request", "id": item_id("mcp_approval_request"),
                    "server_label": d.server_label, "name": tool["name"],
                    "arguments": call.arguments or "{}"}
            index = await run.add_item(item)
            await run.done_item(index, item)
            return ToolResult(pause=True)
        await _run_call(d, tool["name"], call.arguments or "{}", run, approval=None)
        return ToolResult()

    async def resume_approved(self, run: ToolRun) -> None:
        """Run the calls the client approved since the requests were made."""
        context = run.context
        requests = {i["id"]: i for i in context if i.get("type") == "mcp_approval_request"}
        done = {i.get("approval_request_id") for i in context if i.get("type") == "mcp_call"}
        for item in context:
            if item.get("type") != "mcp_approval_response":
                continue
            rid = item.get("approval_request_id")
            if not isinstance(rid, str) or not isinstance(item.get("approve"), bool):
                raise InvalidRequestError(
                    "an mcp_approval_response needs approval_request_id (a string) and "
                    "approve (a boolean)", param="input")
            if rid not in requests:
                raise InvalidRequestError(
                    f"mcp_approval_response answers {rid!r}, which is no mcp_approval_request "
                    "of this conversation (pass previous_response_id)", param="input")
            if rid in done or not item["approve"]:
                continue
            done.add(rid)
            request = requests[rid]
            d = self.defs.get(request["server_label"])
            if d is None:
                raise InvalidRequestError(
                    f"the approved call {rid!r} is for MCP server "
                    f"{request['server_label']!r}: include that mcp tool in this request's "
                    "tools", param="tools")
            await _run_call(d, request["name"], request.get("arguments") or "{}", run,
                            approval=rid)


async def _run_call(d: McpDefinition, name: str, arguments: str, run: ToolRun,
                    approval: str | None) -> dict[str, Any]:
    from fnstack.mcp_client import McpError, call_tool

    timeout, _ = mcp_settings()
    item: dict[str, Any] = {"type": "mcp_call", "id": item_id("mcp_call"),
                            "server_label": d.server_label, "name": name,
                            "arguments": arguments, "output": None, "error": None,
                            "status": "in_progress"}
    if approval is not None:
        item["approval_request_id"] = approval
    index = await run.add_item(item)
    ids = {"output_index": index, "item_id": item["id"]}
    await run.emit("response.mcp_call_arguments.delta", delta=arguments, **ids)
    await run.emit("response.mcp_call_arguments.done", arguments=arguments, **ids)
    await run.emit("response.mcp_call.in_progress", **ids)
    try:
        args = json.loads(arguments)
        if not isinstance(args, dict):
            raise ValueError("not an object")
    except ValueError:
        error: dict[str, Any] | None = {
            "type": "mcp_tool_execution_error",
            "content": [{"type": "text", "text": "the arguments are not a JSON object"}]}
        output = None
    else:
        try:
            result = await call_tool(d.server_url or "", d.request_headers(), name, args,
                                     timeout)
        except McpError as exc:
            error, output = _call_error(exc), None
        else:
            if result.is_error:
                error = {"type": "mcp_tool_execution_error",
                         "content": [{"type": "text", "text": result.output}]}
                output = None
            else:
                error, output = None, result.output
    final = {**item, "output": output, "error": error,
             "status": "failed" if error else "completed"}
    await run.emit("response.mcp_call.failed" if error else "response.mcp_call.completed",
                   **ids)
    await run.done_item(index, final)
    return final


TOOLS = (McpTool(),)
