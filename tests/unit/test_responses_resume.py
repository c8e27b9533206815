"""A background response resumes from its checkpoints, on a real stack (SQLite, the local
job queue, the scripted upstream over HTTP).

With a run budget of a millisecond every job run does one step of the loop, checkpoints
and re-enqueues itself: the response must end exactly as one uninterrupted run would
(each model call made once, one tool item, one answer), its event log numbered 0..n-1
with no step replayed. A built-in tool registered through the public registry
(`fnstack.services.responses_tools`) gives the loop a tool step.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fnstack.api.responses import CreateResponseRequest
from fnstack.config import parse_config
from fnstack.jobs import LocalJobQueue
from fnstack.services.responses import ResponsesService
from fnstack.services.responses_stream import EventLog
from fnstack.services.responses_tools import ModelCall, ToolResult, ToolRun, builtin_tools
from fnstack.stack import Stack
from fnstack.storage import Owner
from tests.support.scripted_llm import MODEL, ScriptedLLM

ALICE = Owner("alice")


class _Clock:
    """A built-in tool ``test_clock``: the model's ``clock`` calls answer a fixed time."""

    types = ("test_clock",)
    item_types = ("test_clock_call",)

    def __init__(self) -> None:
        self.calls: list[str] = []

    def validate(self, definition: dict[str, Any], param: str) -> dict[str, Any]:
        return {"type": "test_clock"}

    async def prepare(self, definitions: list[dict[str, Any]], run: ToolRun) -> _Clock:
        return self

    def functions(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": "clock", "parameters": {
            "type": "object", "properties": {}}}}]

    def handles(self, name: str) -> bool:
        return name == "clock"

    def choice(self, tool_choice: dict[str, Any]) -> str | None:
        return None

    async def call(self, call: ModelCall, run: ToolRun) -> ToolResult:
        self.calls.append(call.call_id)
        item = {"type": "test_clock_call", "id": f"clk_{call.call_id}", "status": "completed",
                "output": "12:00"}
        index = await run.add_item({**item, "status": "in_progress"})
        await run.done_item(index, item)
        return ToolResult()

    def messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": item["id"], "type": "function",
                     "function": {"name": "clock", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": item["id"], "content": item["output"]}]


@pytest.fixture
def clock() -> Iterator[_Clock]:
    by_type, by_item = builtin_tools()
    tool = _Clock()
    by_type["test_clock"] = tool
    by_item["test_clock_call"] = tool
    yield tool
    del by_type["test_clock"], by_item["test_clock_call"]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path, llm: ScriptedLLM) -> AsyncIterator[Stack]:
    config = parse_config({
        "providers": {"inference": [{"provider_id": "vllm", "provider_type": "remote::openai",
                                     "config": {"base_url": llm.base_url}}]},
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp_path / "kv.db")}},
            "stores": {"registry": {"backend": "kv", "namespace": "registry"},
                       "responses": {"backend": "kv", "namespace": "responses"}},
        },
        "queues": {"batches": {"type": "local"}},
        "responses": {"run_budget_s": 0.001},
        "cache_dir": str(tmp_path / "cache"),
    }, env={})
    s = Stack(config, apis=["responses"])
    await s.start()
    yield s
    await s.shutdown()


async def test_a_background_response_resumes_step_by_step(stack: Stack, llm: ScriptedLLM,
                                                          clock: _Clock) -> None:
    svc: ResponsesService = await stack.service("responses")
    assert isinstance(stack.jobs, LocalJobQueue)
    submitted: list[dict[str, Any]] = []
    submit = stack.jobs.submit

    async def counted(job: str, args: dict[str, Any]) -> None:
        submitted.append(args)
        await submit(job, args)

    stack.jobs.submit = counted  # type: ignore[method-assign]
    created = await svc.create(CreateResponseRequest(
        model=MODEL, input="What time is it?\nCALL clock {}", background=True,
        tools=[{"type": "test_clock"}]), ALICE)
    assert not isinstance(created, AsyncIterator)
    assert created.status == "queued"
    await stack.jobs.join()
    # The first run stopped after its model call at least (the tool step may fit in the
    # millisecond): resumed from a checkpoint.
    assert len(submitted) >= 2 and submitted[1].get("reclaim")

    done = await svc.get(created.id, ALICE)
    assert done.status == "completed", done.error
    assert [o["type"] for o in done.output] == ["test_clock_call", "message"]
    assert done.output[1]["content"][0]["text"] == "RESULT: 12:00"
    assert len(llm.requests) == 2 and len(clock.calls) == 1  # no step ran twice
    assert done.usage is not None and done.usage.total_tokens > 0
    events, _ = await EventLog(svc.kv, created.id).read(None)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.created") == 1 and types[-1] == "response.completed"
    assert types.count("response.output_item.done") == 2
    # The second model call saw the tool's result as a tool message.
    assert json.dumps(llm.requests[1]["messages"][-1]) == json.dumps(
        {"role": "tool", "content": "12:00", "tool_call_id": done.output[0]["id"]})


async def test_a_cancelled_background_response_is_not_resumed(stack: Stack, llm: ScriptedLLM,
                                                              clock: _Clock) -> None:
    svc: ResponsesService = await stack.service("responses")
    created = await svc.create(CreateResponseRequest(
        model=MODEL, input="SLOW 5 wait", background=True), ALICE)
    assert not isinstance(created, AsyncIterator)
    cancelled = await svc.cancel(created.id, ALICE)
    assert cancelled.status == "cancelled"
    assert isinstance(stack.jobs, LocalJobQueue)
    await stack.jobs.join()
    after = await svc.get(created.id, ALICE)
    assert after.status == "cancelled" and after.output == []
