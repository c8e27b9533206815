"""The openai-agents SDK runs unchanged against fnstack's Responses API, in every mode.

Its ``OpenAIResponsesModel`` talks to /v1/responses through an ``AsyncOpenAI`` client
pointed at fnstack; the agent's function tool runs in the test process (the SDK's own
loop), the model is the scripted upstream: ``CALL`` makes it call the tool, the tool's
result comes back as ``RESULT: ...``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.api.conftest import LiveApi
from tests.support.scripted_llm import MODEL as SCRIPTED


def _agent(api: LiveApi, calls: list[str]) -> Any:
    set_tracing_disabled(True)

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"{city}: sunny, 21 C"

    client = openai.AsyncOpenAI(base_url=api.base_url, api_key=api.key, max_retries=0,
                                timeout=120)
    return Agent(name="weather", instructions="Answer with the weather.",
                 tools=[get_weather],
                 model=OpenAIResponsesModel(model=SCRIPTED, openai_client=client))


def test_agent_with_a_function_tool(api: LiveApi, scripted_llm: Any) -> None:
    calls: list[str] = []
    agent = _agent(api, calls)
    prompt = 'Weather please.\nCALL get_weather {"city": "Lisbon"}'
    result = asyncio.run(Runner.run(agent, prompt))
    assert calls == ["Lisbon"]
    assert result.final_output == "RESULT: Lisbon: sunny, 21 C"
    # The tool's output went back to fnstack as a function_call_output item.
    last = scripted_llm.requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": "Answer with the weather."}
    assert last[-1]["role"] == "tool" and last[-1]["content"] == "Lisbon: sunny, 21 C"
    assert json.loads(last[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Lisbon"}


def test_agent_streamed(api: LiveApi) -> None:
    calls: list[str] = []
    agent = _agent(api, calls)

    async def run() -> tuple[str, list[str]]:
        streamed = Runner.run_streamed(agent, 'CALL get_weather {"city": "Kyiv"}')
        kinds = [event.type async for event in streamed.stream_events()]
        return str(streamed.final_output), kinds

    final, kinds = asyncio.run(run())
    assert calls == ["Kyiv"]
    assert final == "RESULT: Kyiv: sunny, 21 C"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
