"""The Responses API's ``mcp`` tool through the official openai SDK, in every mode.

A real MCP server (the mcp SDK's, tests/support/mcp_server.py) on 127.0.0.1 serves the
tools; the scripted upstream (``CALL <tool> <args>`` lines) makes the model's calls
certain. The model sees an MCP tool as ``<server_label>__<tool>``. Every MCP request of
the server under test is bounded by FNSTACK_MCP_TIMEOUT_S (conftest: TOOLS_TIMEOUT_S).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import openai
import pytest

from tests.api.conftest import TOOLS_TIMEOUT_S
from tests.support.mcp_server import TOKEN, HangingServer, McpTestServer, closed_port
from tests.support.scripted_llm import MODEL as SCRIPTED
from tests.support.scripted_llm import ScriptedLLM


def mcp(server_url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "demo", "server_url": server_url, **extra}


def call(tool: str, **args: Any) -> str:
    return f"CALL demo__{tool} {json.dumps(args)}"


def of_type(response: Any, kind: str) -> list[Any]:
    return [item for item in response.output if item.type == kind]


def test_mcp_call_without_approval(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    r = client.responses.create(model=SCRIPTED, input=call("add", a=2, b=40),
                                tools=[mcp(mcp_server.url, require_approval="never")])
    assert r.status == "completed", r.error
    kinds = [item.type for item in r.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    [listed] = of_type(r, "mcp_list_tools")
    assert listed.server_label == "demo" and listed.error is None
    add = next(t for t in listed.tools if t.name == "add")
    assert add.description == "Add two integers and return the sum."
    assert add.input_schema["required"] == ["a", "b"]
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.id.startswith("mcp_") and mcp_call.server_label == "demo"
    assert mcp_call.name == "add" and json.loads(mcp_call.arguments) == {"a": 2, "b": 40}
    assert mcp_call.output == "42" and mcp_call.error is None
    assert mcp_call.status == "completed"
    assert r.output_text == "RESULT: 42"
    # The tool definition is echoed as normalised (OpenAI's default approval is "always").
    [tool] = r.tools
    assert tool.type == "mcp" and tool.server_url == mcp_server.url
    assert tool.require_approval == "never"


def test_sse_transport(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    r = client.responses.create(model=SCRIPTED, input=call("get_weather", city="Nantes"),
                                tools=[mcp(mcp_server.sse_url, require_approval="never")])
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.output == "Sunny, 21 C in Nantes"
    assert r.output_text == "RESULT: Sunny, 21 C in Nantes"


def test_streamed_mcp_events(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    events = list(client.responses.create(
        model=SCRIPTED, input=call("add", a=1, b=1), stream=True,
        tools=[mcp(mcp_server.url, require_approval="never")]))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    expected = ["response.created", "response.mcp_list_tools.in_progress",
                "response.mcp_list_tools.completed", "response.mcp_call_arguments.delta",
                "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
                "response.mcp_call.completed", "response.output_text.done",
                "response.completed"]
    positions = [types.index(t) for t in expected]
    assert positions == sorted(positions), types
    call_id = next(e.item_id for e in events if e.type == "response.mcp_call.completed")
    done = [e.item for e in events if e.type == "response.output_item.done"
            and e.item.id == call_id]
    assert done and done[0].output == "2"
    args_done = next(e for e in events if e.type == "response.mcp_call_arguments.done")
    assert json.loads(args_done.arguments) == {"a": 1, "b": 1}
    assert events[-1].response.output_text == "RESULT: 2"


def test_approval_round_trip(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    city = f"Town-{uuid.uuid4().hex[:6]}"
    tools = [mcp(mcp_server.url)]  # require_approval defaults to "always"
    first = client.responses.create(model=SCRIPTED, input=call("get_weather", city=city),
                                    tools=tools)
    assert first.status == "completed"
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    [request] = of_type(first, "mcp_approval_request")
    assert request.id.startswith("mcpr_") and request.name == "get_weather"
    assert json.loads(request.arguments) == {"city": city}
    assert {"city": city} not in mcp_server.called("get_weather")  # nothing ran yet

    second = client.responses.create(
        model=SCRIPTED, previous_response_id=first.id, tools=tools,
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id,
                "approve": True}])
    assert second.status == "completed", second.error
    # The tool list of the previous response is reused: no second mcp_list_tools.
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    [mcp_call] = of_type(second, "mcp_call")
    assert mcp_call.approval_request_id == request.id
    assert mcp_call.output == f"Sunny, 21 C in {city}"
    assert second.output_text == f"RESULT: Sunny, 21 C in {city}"
    assert mcp_server.called("get_weather").count({"city": city}) == 1


def test_denied_approval_runs_nothing(client: openai.OpenAI,
                                      mcp_server: McpTestServer) -> None:
    text = f"secret-{uuid.uuid4().hex[:6]}"
    tools = [mcp(mcp_server.url, require_approval="always")]
    first = client.responses.create(model=SCRIPTED, input=call("echo", text=text),
                                    tools=tools)
    [request] = of_type(first, "mcp_approval_request")
    second = client.responses.create(
        model=SCRIPTED, previous_response_id=first.id, tools=tools,
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id,
                "approve": False, "reason": "not today"}])
    assert second.status == "completed"
    assert of_type(second, "mcp_call") == []
    assert "denied" in second.output_text and "not today" in second.output_text
    assert {"text": text} not in mcp_server.called("echo")


def test_approval_filter_and_parallel_calls(client: openai.OpenAI,
                                            mcp_server: McpTestServer) -> None:
    city = f"Ville-{uuid.uuid4().hex[:6]}"
    r = client.responses.create(
        model=SCRIPTED, input=call("add", a=3, b=4) + "\n" + call("get_weather", city=city),
        tools=[mcp(mcp_server.url, require_approval={"never": {"tool_names": ["add"]}})])
    assert r.status == "completed"
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.name == "add" and mcp_call.output == "7"
    [request] = of_type(r, "mcp_approval_request")
    assert request.name == "get_weather"
    assert {"city": city} not in mcp_server.called("get_weather")


def test_allowed_tools(client: openai.OpenAI, mcp_server: McpTestServer,
                       scripted_llm: ScriptedLLM) -> None:
    marker = uuid.uuid4().hex
    r = client.responses.create(model=SCRIPTED, input=f"hello {marker}",
                                tools=[mcp(mcp_server.url, allowed_tools=["add", "echo"])])
    [listed] = of_type(r, "mcp_list_tools")
    assert sorted(t.name for t in listed.tools) == ["add", "echo"]
    sent = next(body for body in reversed(scripted_llm.requests)
                if marker in json.dumps(body.get("messages")))
    assert sorted(t["function"]["name"] for t in sent["tools"]) == ["demo__add", "demo__echo"]
    r = client.responses.create(
        model=SCRIPTED, input="hi",
        tools=[mcp(mcp_server.url, allowed_tools={"tool_names": ["get_weather"]})])
    assert [t.name for t in of_type(r, "mcp_list_tools")[0].tools] == ["get_weather"]


def test_tool_error_is_a_failed_call(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    r = client.responses.create(model=SCRIPTED, input=call("fail", message="disk full"),
                                tools=[mcp(mcp_server.url, require_approval="never")])
    assert r.status == "completed"
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.status == "failed" and mcp_call.output is None
    assert mcp_call.error.type == "mcp_tool_execution_error"
    assert "disk full" in json.dumps(mcp_call.error.content)
    assert "disk full" in r.output_text  # the model read the error


def test_slow_tool_times_out_as_a_failed_call(client: openai.OpenAI,
                                              mcp_server: McpTestServer) -> None:
    started = time.monotonic()
    r = client.responses.create(model=SCRIPTED, input=call("slow", seconds=60),
                                tools=[mcp(mcp_server.url, require_approval="never")])
    assert time.monotonic() - started < TOOLS_TIMEOUT_S + 20
    assert r.status == "completed"
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.status == "failed"
    assert mcp_call.error.type == "http_error" and mcp_call.error.code == 504
    assert f"did not answer within {TOOLS_TIMEOUT_S} s" in mcp_call.error.message
    assert "did not answer" in r.output_text


def test_server_down_mid_conversation_is_a_failed_call(client: openai.OpenAI) -> None:
    with McpTestServer() as server:
        tools = [mcp(server.url, require_approval="never")]
        first = client.responses.create(model=SCRIPTED, input="list your tools", tools=tools)
        assert of_type(first, "mcp_list_tools")[0].tools
    # The server is gone; the next turn reuses the tool list and the call fails fast.
    started = time.monotonic()
    second = client.responses.create(model=SCRIPTED, previous_response_id=first.id,
                                     input=call("add", a=1, b=2), tools=tools)
    assert time.monotonic() - started < TOOLS_TIMEOUT_S + 20
    assert second.status == "completed"
    [mcp_call] = of_type(second, "mcp_call")
    assert mcp_call.status == "failed" and mcp_call.error.type == "http_error"
    assert mcp_call.error.code == 502 and "unreachable" in mcp_call.error.message


def test_server_down_fails_the_response_clearly(client: openai.OpenAI) -> None:
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model=SCRIPTED, input=call("add", a=1, b=2),
                                tools=[mcp(url, require_approval="never")])
    assert time.monotonic() - started < TOOLS_TIMEOUT_S + 20
    assert info.value.status_code == 502
    message = info.value.body["message"] if isinstance(info.value.body, dict) else ""
    assert "cannot list the server's tools" in message and "unreachable" in message


def test_hanging_server_fails_the_response_at_the_deadline(client: openai.OpenAI) -> None:
    with HangingServer() as hanging:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(model=SCRIPTED, input="hi",
                                    tools=[mcp(hanging.url, require_approval="never")])
        elapsed = time.monotonic() - started
    assert TOOLS_TIMEOUT_S - 1 < elapsed < TOOLS_TIMEOUT_S + 20
    assert info.value.status_code == 504
    assert f"did not answer within {TOOLS_TIMEOUT_S} s" in str(info.value.body)


def test_server_down_streamed_fails_with_the_list_item(client: openai.OpenAI) -> None:
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    events = list(client.responses.create(model=SCRIPTED, input="hi", stream=True,
                                          tools=[mcp(url, require_approval="never")]))
    types = [e.type for e in events]
    assert "response.mcp_list_tools.failed" in types
    assert types[-1] == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and "unreachable" in failed.error.message
    [listed] = [i for i in failed.output if i.type == "mcp_list_tools"]
    assert listed.error and "unreachable" in listed.error


def test_headers_reach_the_server(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    r = client.responses.create(
        model=SCRIPTED, input=call("echo", text="authorized"),
        tools=[mcp(mcp_server.secure_url, require_approval="never",
                   headers={"Authorization": f"Bearer {TOKEN}"})])
    assert of_type(r, "mcp_call")[0].output == "authorized"
    # Credentials for the MCP server are never echoed (created, retrieved, streamed).
    assert r.tools[0].headers is None and TOKEN not in r.model_dump_json()
    assert TOKEN not in client.responses.retrieve(r.id).model_dump_json()
    # OpenAI's `authorization` field is the same bearer token.
    r = client.responses.create(
        model=SCRIPTED, input=call("echo", text="oauth"),
        tools=[mcp(mcp_server.secure_url, require_approval="never", authorization=TOKEN)])
    assert of_type(r, "mcp_call")[0].output == "oauth"
    assert r.tools[0].authorization is None and TOKEN not in r.model_dump_json()
    events = list(client.responses.create(
        model=SCRIPTED, input=call("echo", text="streamed"), stream=True,
        tools=[mcp(mcp_server.secure_url, require_approval="never", authorization=TOKEN)]))
    assert events[-1].type == "response.completed"
    assert not [e for e in events if TOKEN in e.model_dump_json()]
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model=SCRIPTED, input="hi",
                                tools=[mcp(mcp_server.secure_url, require_approval="never")])
    assert info.value.status_code == 502
    assert "HTTP 401" in str(info.value.body)


@pytest.mark.parametrize(("tool", "param"), [
    ({"type": "mcp", "server_label": "demo"}, "tools[0].server_url"),
    ({"type": "mcp", "server_label": "9 bad", "server_url": "http://x/mcp"},
     "tools[0].server_label"),
    ({"type": "mcp", "server_label": "demo", "server_url": "file:///etc/passwd"},
     "tools[0].server_url"),
    ({"type": "mcp", "server_label": "demo", "connector_id": "connector_gmail"},
     "tools[0].connector_id"),
    ({"type": "mcp", "server_label": "demo", "server_url": "http://x/mcp",
      "require_approval": "sometimes"}, "tools[0].require_approval"),
    ({"type": "mcp", "server_label": "demo", "server_url": "http://x/mcp",
      "allowed_tools": "add"}, "tools[0].allowed_tools"),
    ({"type": "mcp", "server_label": "demo", "server_url": "http://x/mcp",
      "headers": {"X-Count": 3}}, "tools[0].headers"),
    # Outside FNSTACK_MCP_ALLOWED_URLS (conftest allows http://127.0.0.1: only).
    ({"type": "mcp", "server_label": "demo", "server_url": "http://localhost:9/mcp"},
     "tools[0].server_url"),
])
def test_bad_definitions_are_400(client: openai.OpenAI, tool: dict[str, Any],
                                 param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SCRIPTED, input="hi", tools=[tool])
    assert info.value.body["param"] == param, info.value.body


def test_unknown_approval_request_is_400(client: openai.OpenAI,
                                                   mcp_server: McpTestServer) -> None:
    first = client.responses.create(model=SCRIPTED, input="hi",
                                    tools=[mcp(mcp_server.url)])
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=SCRIPTED, previous_response_id=first.id, tools=[mcp(mcp_server.url)],
            input=[{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope",
                    "approve": True}])
    assert "mcpr_nope" in info.value.body["message"]


def test_openai_agents_hosted_mcp_tool(api: Any, mcp_server: McpTestServer) -> None:
    """The openai-agents SDK's HostedMCPTool, approvals answered by its callback, unchanged."""
    import asyncio

    from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    asked: list[str] = []

    def approve(request: Any) -> Any:
        asked.append(request.data.name)
        return {"approve": True}

    client = openai.AsyncOpenAI(base_url=api.base_url, api_key=api.key, max_retries=0,
                                timeout=120)
    agent = Agent(name="calc", instructions="Use the calculator.",
                  model=OpenAIResponsesModel(model=SCRIPTED, openai_client=client),
                  tools=[HostedMCPTool(tool_config={"type": "mcp", "server_label": "demo",
                                                    "server_url": mcp_server.url,
                                                    "require_approval": "always"},
                                       on_approval_request=approve)])
    result = asyncio.run(Runner.run(agent, call("add", a=20, b=22)))
    assert asked == ["add"]
    assert result.final_output == "RESULT: 42"


def test_background_mcp_call_with_headers(client: openai.OpenAI,
                                          mcp_server: McpTestServer) -> None:
    """A background run (locally the job queue; through the gateway the worker function)
    reaches the MCP server with the credentials kept in the record, never shown."""
    r = client.responses.create(
        model=SCRIPTED, input=call("add", a=5, b=6), background=True,
        tools=[mcp(mcp_server.secure_url, require_approval="never", authorization=TOKEN)])
    deadline = time.monotonic() + 120
    while r.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"still {r.status}"
        time.sleep(0.3)
        r = client.responses.retrieve(r.id)
    assert r.status == "completed", r.error
    [mcp_call] = of_type(r, "mcp_call")
    assert mcp_call.output == "11"
    assert r.output_text == "RESULT: 11"
    assert TOKEN not in r.model_dump_json()


def test_tool_choice_names_an_mcp_tool(client: openai.OpenAI, mcp_server: McpTestServer,
                                       scripted_llm: ScriptedLLM) -> None:
    marker = uuid.uuid4().hex
    client.responses.create(model=SCRIPTED, input=f"pick {marker}",
                            tools=[mcp(mcp_server.url, require_approval="never")],
                            tool_choice={"type": "mcp", "server_label": "demo", "name": "echo"})
    sent = next(body for body in reversed(scripted_llm.requests)
                if marker in json.dumps(body.get("messages")))
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "demo__echo"}}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SCRIPTED, input="pick",
                                tools=[mcp(mcp_server.url, allowed_tools=["add"])],
                                tool_choice={"type": "mcp", "server_label": "demo",
                                             "name": "echo"})
    assert info.value.body["param"] == "tool_choice.name"


def test_tool_list_reused_across_a_conversation(client: openai.OpenAI,
                                                mcp_server: McpTestServer) -> None:
    conversation = client.conversations.create()
    tools = [mcp(mcp_server.url, require_approval="never")]
    first = client.responses.create(model=SCRIPTED, input="hello",
                                    conversation=conversation.id, tools=tools)
    assert [i.type for i in first.output] == ["mcp_list_tools", "message"]
    second = client.responses.create(model=SCRIPTED, input=call("add", a=8, b=8),
                                     conversation=conversation.id, tools=tools)
    assert [i.type for i in second.output] == ["mcp_call", "message"]
    assert second.output_text == "RESULT: 16"
    kinds = [i.type for i in client.conversations.items.list(conversation.id, order="asc")]
    assert kinds.count("mcp_list_tools") == 1 and "mcp_call" in kinds
