"""A client for remote MCP servers (the official ``mcp`` SDK, 2.x), one connection per call.

Two calls, both bounded by one deadline (``timeout`` seconds covers connecting, the
protocol handshake and the answer): a server that is down, hangs or answers garbage
raises `McpError` within that time, never a hung request.

Transport rule: a ``server_url`` whose path ends in ``/sse`` speaks the older HTTP+SSE
transport; any other URL speaks streamable HTTP (the current one). ``headers`` go on
every HTTP request to the server (``Authorization`` for the server's own auth).

A connection is opened per call, not kept: a Lambda function is frozen between
invocations, and a kept session would die there. ``mcp`` is imported inside the calls, so
a function that never reaches an MCP server never pays for importing it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fnstack.errors import UpstreamError

if TYPE_CHECKING:
    from mcp.client import Client

__all__ = ["McpCallResult", "McpError", "McpTool", "call_tool", "list_tools", "uses_sse"]

# Pages of tools/list followed at most (a server that pages forever must not hang us).
MAX_TOOL_PAGES = 20


class McpError(UpstreamError):
    """The MCP server could not be reached, timed out, refused us or broke the protocol.

    ``code``: mcp_unreachable, mcp_timeout, mcp_http_error (a non-2xx answer, e.g. 401
    for missing auth headers) or mcp_protocol_error (a JSON-RPC error, a malformed answer)."""

    default_code = "mcp_error"

    def __init__(self, message: str, *, code: str, http_status: int | None = None,
                 rpc_code: int | None = None) -> None:
        super().__init__(message, code=code)
        if code == "mcp_timeout":
            self.status = 504  # as UpstreamTimeoutError: we waited, the server did not answer
        # The HTTP status the server (or, for timeouts and refused connections, the
        # gateway role we play: 504, 502) answered; the JSON-RPC error code, if any.
        self.http_status = http_status
        self.rpc_code = rpc_code


@dataclass(frozen=True)
class McpTool:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None


@dataclass(frozen=True)
class McpCallResult:
    """A tool's answer: its text (content blocks joined), and whether the tool failed."""

    output: str
    is_error: bool


def uses_sse(server_url: str) -> bool:
    """True when ``server_url`` names the HTTP+SSE transport (its path ends in /sse)."""
    return urlsplit(server_url).path.rstrip("/").endswith("/sse")


# ``timeout`` is a parameter (not the caller's asyncio.timeout) because it must bound the
# SDK's anyio task groups from inside, and the caller is the agent loop, which wants an
# McpError it can turn into a failed item rather than a CancelledError.
async def list_tools(server_url: str, headers: dict[str, str] | None,
                     timeout: float) -> list[McpTool]:  # noqa: ASYNC109
    """Every tool the server lists (following its pages)."""
    async with _session(server_url, headers, timeout) as client:
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            for t in page.tools:
                annotations = (t.annotations.model_dump(exclude_none=True, by_alias=True)
                               if t.annotations is not None else None)
                tools.append(McpTool(name=t.name, description=t.description,
                                     input_schema=dict(t.input_schema),
                                     annotations=annotations or None))
            cursor = page.next_cursor
            if not cursor:
                break
        return tools


async def call_tool(server_url: str, headers: dict[str, str] | None, name: str,
                    arguments: dict[str, Any], timeout: float) -> McpCallResult:  # noqa: ASYNC109
    """Call tool ``name``. A tool that fails returns ``is_error`` (the model sees why);
    only a failure to reach or speak to the server raises `McpError`."""
    async with _session(server_url, headers, timeout) as client:
        result = await client.call_tool(name, arguments)
        return McpCallResult(output=_result_text(result), is_error=bool(result.is_error))


def _result_text(result: Any) -> str:
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        elif kind == "resource_link":
            parts.append(str(block.uri))
        else:  # images, audio, binary resources: the model gets a note, not bytes
            parts.append(f"[{kind} content omitted]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content)
    return "\n".join(parts)


class _Exchange:
    """What the HTTP layer saw: the SDK turns a non-2xx answer of streamable HTTP into
    a generic JSON-RPC error, so the status is recorded here to name it. Only the last
    answer counts: the SDK's version probe may be refused (4xx) by an older server
    before the handshake that follows succeeds."""

    def __init__(self) -> None:
        self.error_status: int | None = None

    async def on_response(self, response: Any) -> None:
        status: int = response.status_code
        self.error_status = status if status >= 400 else None


@contextlib.asynccontextmanager
async def _session(server_url: str, headers: dict[str, str] | None,
                   seconds: float) -> AsyncIterator[Client]:
    """A connected, initialized client under one deadline; every failure an `McpError`.

    The SDK runs its transports in anyio task groups: failures arrive wrapped in
    exception groups. ``anyio.fail_after`` cancels those task groups cleanly, where a
    bare asyncio timeout could leave the transport's tasks behind."""
    import anyio

    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a positive number of seconds, got {seconds}")
    # Imported before the deadline starts: a cold import of the SDK takes seconds on a
    # loaded machine (a Lambda cold start), time the server is not to blame for.
    _load_sdk()
    where = _redacted(server_url)
    seen = _Exchange()
    try:
        with anyio.fail_after(seconds):
            async with _client(server_url, headers, seconds, seen) as client:
                yield client
    except McpError:
        raise
    except TimeoutError as exc:
        raise McpError(f"MCP server {where} did not answer within {seconds:g} s",
                       code="mcp_timeout", http_status=504) from exc
    except Exception as exc:
        raise _translate(exc, where, seen.error_status) from exc


_SDK_MODULES = ("httpx2", "mcp.client", "mcp.client.sse", "mcp.client.streamable_http",
                "mcp.shared._httpx_utils", "mcp.shared.exceptions")


def _load_sdk() -> None:
    for name in _SDK_MODULES:
        importlib.import_module(name)


@contextlib.asynccontextmanager
async def _client(server_url: str, headers: dict[str, str] | None, seconds: float,
                  seen: _Exchange) -> AsyncIterator[Client]:
    import httpx2
    from mcp.client import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    def make_http(headers: dict[str, str] | None = None, timeout: Any = None,
                  auth: Any = None) -> Any:
        http = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
        http.event_hooks["response"].append(seen.on_response)
        return http

    async with contextlib.AsyncExitStack() as stack:
        transport: Any
        if uses_sse(server_url):
            transport = sse_client(server_url, headers=dict(headers or {}), timeout=seconds,
                                   sse_read_timeout=seconds, httpx_client_factory=make_http)
        else:
            http = await stack.enter_async_context(
                make_http(headers=dict(headers or {}), timeout=httpx2.Timeout(seconds)))
            transport = streamable_http_client(server_url, http_client=http)
        # No response cache: every call asks the server (a request lists tools once).
        client = Client(transport, read_timeout_seconds=seconds, cache=None)
        yield await stack.enter_async_context(client)


def _translate(exc: BaseException, where: str, status: int | None) -> McpError:
    import httpx2
    from mcp.shared.exceptions import MCPError

    leaf = _leaf(exc)
    if isinstance(leaf, httpx2.HTTPStatusError):
        status = leaf.response.status_code
    if status is not None and not isinstance(leaf, TimeoutError | httpx2.TimeoutException):
        hint = (" (the server wants credentials: check the tool's headers)"
                if status in (401, 403) else
                " (check server_url: nothing serves MCP there)" if status in (404, 405) else "")
        return McpError(f"MCP server {where} answered HTTP {status}{hint}",
                        code="mcp_http_error", http_status=status)
    if isinstance(leaf, TimeoutError | httpx2.TimeoutException):
        return McpError(f"MCP server {where} did not answer in time", code="mcp_timeout",
                        http_status=504)
    if isinstance(leaf, httpx2.ConnectError | ConnectionError | OSError):
        return McpError(f"MCP server {where} is unreachable: {leaf or type(leaf).__name__}",
                        code="mcp_unreachable", http_status=502)
    if isinstance(leaf, httpx2.TransportError):
        return McpError(f"MCP server {where} broke the connection: {leaf}",
                        code="mcp_unreachable", http_status=502)
    if isinstance(leaf, MCPError):
        return McpError(f"MCP server {where} answered an error: {leaf.message or 'error'}",
                        code="mcp_protocol_error", rpc_code=leaf.code)
    return McpError(f"MCP server {where} failed: {type(leaf).__name__}: {leaf}",
                    code="mcp_protocol_error")


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception of a (nested) exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _redacted(url: str) -> str:
    """The URL without userinfo or query (both may carry credentials) for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
