"""fnstack.mcp_client against a real MCP server (the mcp SDK's, tests/support/mcp_server.py).

Both transports (streamable HTTP and HTTP+SSE), auth headers, tools that fail, and the
ways a server can let us down: slow, hanging, down, refusing. Every failure must be an
McpError within the timeout given, never a hang.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fnstack.errors import FnstackError
from fnstack.mcp_client import McpError, call_tool, list_tools, uses_sse
from tests.support.mcp_server import TOKEN, HangingServer, McpTestServer, closed_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server() -> Iterator[McpTestServer]:
    with McpTestServer() as s:
        yield s


@pytest.fixture(params=["streamable", "sse"])
def url(request: pytest.FixtureRequest, server: McpTestServer) -> str:
    return server.url if request.param == "streamable" else server.sse_url


def test_transport_rule() -> None:
    assert uses_sse("http://h/sse")
    assert uses_sse("https://h:8443/x/sse/?k=v")
    assert not uses_sse("http://h/mcp")
    assert not uses_sse("http://h/ssex")


async def test_list_tools(url: str) -> None:
    tools = {t.name: t for t in await list_tools(url, None, timeout=10)}
    assert {"add", "get_weather", "echo", "slow", "fail"} <= set(tools)
    add = tools["add"]
    assert add.description == "Add two integers and return the sum."
    assert add.input_schema["type"] == "object"
    assert set(add.input_schema["properties"]) == {"a", "b"}
    assert add.input_schema["required"] == ["a", "b"]


async def test_call_tool(url: str, server: McpTestServer) -> None:
    result = await call_tool(url, None, "add", {"a": 2, "b": 40}, timeout=10)
    assert (result.output, result.is_error) == ("42", False)
    result = await call_tool(url, None, "get_weather", {"city": "Lyon"}, timeout=10)
    assert result.output == "Sunny, 21 C in Lyon"
    assert {"city": "Lyon"} in server.called("get_weather")


async def test_tool_error_is_a_result_not_an_exception(url: str) -> None:
    # The tool ran and failed: the model must see why (is_error), the request goes on.
    result = await call_tool(url, None, "fail", {"message": "the disk is full"}, timeout=10)
    assert result.is_error
    assert "the disk is full" in result.output
    unknown = await call_tool(url, None, "no_such_tool", {}, timeout=10)
    assert unknown.is_error and "no_such_tool" in unknown.output
    bad_args = await call_tool(url, None, "add", {"a": "x", "b": 1}, timeout=10)
    assert bad_args.is_error


async def test_slow_tool_times_out(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(McpError) as info:
        await call_tool(url, None, "slow", {"seconds": 10}, timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    assert info.value.code == "mcp_timeout" and info.value.status == 504
    assert "did not answer within 1 s" in info.value.message


async def test_hanging_server_times_out() -> None:
    with HangingServer() as hanging:
        for target in (hanging.url, hanging.url.replace("/mcp", "/sse")):
            started = time.monotonic()
            with pytest.raises(McpError) as info:
                await list_tools(target, None, timeout=1.0)
            assert time.monotonic() - started < 3
            assert info.value.code == "mcp_timeout"


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
async def test_down_server_fails_fast(path: str) -> None:
    target = f"http://127.0.0.1:{closed_port()}{path}"
    started = time.monotonic()
    with pytest.raises(McpError) as info:
        await list_tools(target, None, timeout=30)
    # Connection refused: no waiting for the timeout.
    assert time.monotonic() - started < 3
    assert info.value.code == "mcp_unreachable"
    assert "unreachable" in info.value.message and target in info.value.message
    assert isinstance(info.value, FnstackError) and info.value.status == 502


async def test_auth_headers(server: McpTestServer) -> None:
    for target in (server.secure_url, server.secure_sse_url):
        tools = await list_tools(target, AUTH, timeout=10)
        assert "add" in {t.name for t in tools}
        result = await call_tool(target, AUTH, "echo", {"text": "hi"}, timeout=10)
        assert result.output == "hi"
        for headers in (None, {"Authorization": "Bearer wrong"}):
            with pytest.raises(McpError) as info:
                await list_tools(target, headers, timeout=10)
            assert info.value.code == "mcp_http_error"
            assert "HTTP 401" in info.value.message and "headers" in info.value.message


async def test_wrong_path_is_named(server: McpTestServer) -> None:
    with pytest.raises(McpError) as info:
        await list_tools(server.url.replace("/mcp", "/nothing"), None, timeout=10)
    assert "HTTP 404" in info.value.message


async def test_credentials_never_in_messages() -> None:
    target = f"http://user:hunter2@127.0.0.1:{closed_port()}/mcp?key=hunter2"
    with pytest.raises(McpError) as info:
        await list_tools(target, None, timeout=5)
    assert "hunter2" not in info.value.message


async def test_timeout_must_be_positive(server: McpTestServer) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await list_tools(server.url, None, timeout=0)


def test_mcp_tool_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from fnstack.errors import InvalidRequestError
    from fnstack.services.responses_mcp import McpTool, mcp_settings

    tool = McpTool()
    definition = {"type": "mcp", "server_label": "docs",
                  "server_url": "https://mcp.example.com/mcp"}
    monkeypatch.delenv("FNSTACK_MCP_ALLOWED_URLS", raising=False)
    assert tool.validate(definition, "tools[0]")["require_approval"] == "always"
    monkeypatch.setenv("FNSTACK_MCP_ALLOWED_URLS",
                       "https://mcp.example.com/, http://10.0.0.5:8000/")
    tool.validate(definition, "tools[0]")
    with pytest.raises(InvalidRequestError) as info:
        tool.validate({**definition, "server_url": "http://169.254.169.254/mcp"}, "tools[0]")
    assert info.value.param == "tools[0].server_url"
    assert info.value.code == "mcp_server_not_allowed"
    monkeypatch.setenv("FNSTACK_MCP_TIMEOUT_S", "2.5")
    assert mcp_settings()[0] == 2.5
    monkeypatch.setenv("FNSTACK_MCP_TIMEOUT_S", "junk")
    assert mcp_settings()[0] == 30.0


@pytest.mark.parametrize(("url", "on_lambda", "refused"), [
    ("http://169.254.169.254/latest/meta-data", False, True),
    ("http://[fe80::1]/mcp", False, True),
    ("http://127.0.0.1:9001/2018-06-01/runtime/invocation/next", True, True),
    ("http://localhost:8080/mcp", True, True),
    ("http://127.0.0.1:8000/mcp", False, False),  # a laptop's own MCP server
    ("https://mcp.example.com/mcp", True, False),
])
def test_mcp_tool_refuses_metadata_and_lambda_loopback(
        monkeypatch: pytest.MonkeyPatch, url: str, on_lambda: bool, refused: bool) -> None:
    from fnstack.errors import InvalidRequestError
    from fnstack.services.responses_mcp import McpTool

    monkeypatch.delenv("FNSTACK_MCP_ALLOWED_URLS", raising=False)
    if on_lambda:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fnstack-inference")
    else:
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    definition = {"type": "mcp", "server_label": "x", "server_url": url}
    if refused:
        with pytest.raises(InvalidRequestError) as info:
            McpTool().validate(definition, "tools[0]")
        assert info.value.code == "mcp_server_not_allowed"
        assert "FNSTACK_MCP_ALLOWED_URLS" in info.value.message
    else:
        McpTool().validate(definition, "tools[0]")
    # An explicit allow-list decides alone.
    monkeypatch.setenv("FNSTACK_MCP_ALLOWED_URLS", url)
    McpTool().validate(definition, "tools[0]")
