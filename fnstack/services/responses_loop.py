"""The agent loop of one response: an explicit state machine.

The next step is data, stored with the response (``state``), so a background run can
stop after any step and a fresh worker resume it::

    call_model --(text only / client function calls / length)--> finish
        |  built-in tool calls
        v
    run_tools --(a tool paused / client calls pending)--> finish
        |
        +--> call_model ...

- ``call_model``: the items so far become chat messages (responses_items); the model
  is called in process through the inference service, always streamed (one path:
  the events of a streamed response come out as the tokens do; the usage arrives in the
  last chunk). Its text becomes a ``message`` item, its calls of client ``function``
  tools ``function_call`` items (streamed as they are written), its calls of built-in
  tools the ``pending`` list of the state. More calls than
  ``responses.max_inference_calls`` end the response ``incomplete``
  (``incomplete_details.reason = "max_inference_calls"``); a ``length`` finish ends it
  ``incomplete`` with ``max_output_tokens``.
- ``run_tools``: the pending built-in calls run concurrently (one at a time with
  ``parallel_tool_calls: false``), each adding its own output item and events; past
  ``max_tool_calls`` further calls are ignored, and the model is offered no more
  built-in tools.
- ``finish``: nothing left to do; the turn is handed back to the client when it holds
  function calls or a paused tool (the client answers in the next request).

Usage is summed over every model call. Nothing is stored per model call: the service
stores the response (and, for a background run, checkpoints this state).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from fnstack.api.inference import ChatCompletion, ChatCompletionRequest
from fnstack.errors import FnstackError, InternalError, InvalidRequestError
from fnstack.guardrails import guarded
from fnstack.services.inference import InferenceService
from fnstack.services.responses_items import FileReader, item_id, to_messages
from fnstack.services.responses_stream import Events
from fnstack.services.responses_tools import ModelCall, ToolSet, builtin_tools
from fnstack.storage import Owner

__all__ = ["Run", "fresh_state", "public_view", "validate_tools"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Checkpoint = Callable[["Run"], Awaitable[bool]]


def fresh_state() -> dict[str, Any]:
    return {"step": "call_model", "calls": 0, "tool_calls": 0, "pending": [],
            "handoff": False, "seq": 0}


def validate_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's tools normalised; 400 naming ``tools[i]`` for a bad definition."""
    by_type, _ = builtin_tools()
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for n, tool in enumerate(tools or []):
        param = f"tools[{n}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{param} must be an object", param=param)
        kind = tool.get("type")
        if kind == "function":
            name = tool.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise InvalidRequestError(
                    f"{param}.name must be 1-64 letters, digits, '_' or '-'",
                    param=f"{param}.name", code="invalid_value")
            if name in names:
                raise InvalidRequestError(f"function {name!r} is defined twice",
                                          param=f"{param}.name")
            names.add(name)
            params = tool.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise InvalidRequestError(f"{param}.parameters must be a JSON schema object",
                                          param=f"{param}.parameters")
            if tool.get("description") is not None and not isinstance(
                    tool["description"], str):
                raise InvalidRequestError(f"{param}.description must be a string",
                                          param=f"{param}.description")
            out.append({"type": "function", "name": name,
                        "description": tool.get("description"),
                        "parameters": params if params is not None else
                        {"type": "object", "properties": {}},
                        "strict": tool.get("strict", True)})
        elif isinstance(kind, str) and kind in by_type:
            out.append(by_type[kind].validate(tool, param))
        else:
            known = sorted({"function", *by_type})
            raise InvalidRequestError(
                f"{param}.type {kind!r} is not supported here; use one of: {', '.join(known)}",
                param=f"{param}.type", code="invalid_value")
    return out


def public_view(response: dict[str, Any], include: list[str] | None) -> dict[str, Any]:
    """What the client sees of a stored response: fields only shown on request dropped."""
    wanted = frozenset(include or ())
    output = [shown_item(item, wanted) for item in response.get("output") or []]
    view = {**response, "output": output}
    if response.get("tools"):
        # An mcp tool's headers and authorization are credentials for its server: kept
        # with the record for the loop (a background run resumes from it), never shown,
        # as OpenAI does not echo them either.
        view["tools"] = [{k: v for k, v in t.items() if k not in ("headers", "authorization")}
                         if t.get("type") == "mcp" else t for t in response["tools"]]
    return view


def shown_item(item: dict[str, Any], wanted: frozenset[str]) -> dict[str, Any]:
    """An output item as the client sees it, given the ``include`` values asked for."""
    kind = item.get("type")
    if kind == "file_search_call" and "file_search_call.results" not in wanted:
        return {**item, "results": None}
    if kind == "web_search_call":
        if "web_search_call.results" not in wanted and "results" in item:
            item = {k: v for k, v in item.items() if k != "results"}
        action = item.get("action")
        if "web_search_call.action.sources" not in wanted and isinstance(action, dict) \
                and "sources" in action:
            item = {**item, "action": {k: v for k, v in action.items() if k != "sources"}}
    return item


class _Halt(Exception):
    """The run was stopped from outside (cancelled)."""


class Run:
    """One run of the loop over a response; the `ToolRun` built-in tools see."""

    def __init__(self, *, response: dict[str, Any], state: dict[str, Any],
                 context: list[dict[str, Any]], user: Owner, inference: InferenceService,
                 services: dict[str, Any], events: Events, max_calls: int,
                 read_file: FileReader | None = None,
                 checkpoint: Checkpoint | None = None) -> None:
        self.response = response
        self.state = state
        self.prior = context
        self._user = user
        self.inference = inference
        self.services = services
        self.events = events
        self.max_calls = max_calls
        self.read_file = read_file
        self._checkpoint = checkpoint
        self.toolsets: list[ToolSet] = []
        self.toolset_types: list[set[str]] = []  # the tool types each toolset serves
        self.usage = response.get("usage") or {
            "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0}

    # --- ToolRun ------------------------------------------------------------------------

    @property
    def user(self) -> Owner:
        return self._user

    @property
    def response_id(self) -> str:
        rid: str = self.response["id"]
        return rid

    @property
    def include(self) -> frozenset[str]:
        return frozenset(self.response.get("_include") or ())

    @property
    def output(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.response["output"]
        return out

    @property
    def context(self) -> list[dict[str, Any]]:
        return [*self.prior, *self.output]

    def service(self, name: str) -> Any | None:
        return self.services.get(name)

    async def add_item(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        index = len(self.output) - 1
        await self.emit("response.output_item.added", output_index=index,
                        item=self._shown(item))
        return index

    async def done_item(self, output_index: int, item: dict[str, Any]) -> None:
        self.output[output_index] = item
        await self.emit("response.output_item.done", output_index=output_index,
                        item=self._shown(item))

    async def emit(self, type: str, **fields: Any) -> None:
        await self.events.emit(type, **fields)

    def _shown(self, item: dict[str, Any]) -> dict[str, Any]:
        return shown_item(item, self.include)

    def snapshot(self) -> dict[str, Any]:
        view = {k: v for k, v in self.response.items() if not k.startswith("_")}
        return public_view(view, sorted(self.include))

    # --- the machine --------------------------------------------------------------------

    async def run(self, budget_s: float | None = None) -> bool:
        """Run steps until ``finish``; False when stopped early (budget spent or
        cancelled) with the state saved by the checkpoint hook."""
        started = time.monotonic()
        fresh = self.state["calls"] == 0 and not self.output
        if fresh:
            self.response["status"] = "in_progress"
            if self.state["seq"] == 0:
                await self.emit("response.created", response=self.snapshot())
            await self.emit("response.in_progress", response=self.snapshot())
        await self._prepare_tools()
        while self.state["step"] != "finish":
            if self.state["step"] == "call_model":
                await self._call_model()
            else:
                await self._run_tools()
            if self.state["step"] == "finish":
                break
            if self._checkpoint is not None and not await self._checkpoint(self):
                return False
            if budget_s is not None and time.monotonic() - started > budget_s:
                return False
        await self._finish()
        return True

    async def _prepare_tools(self) -> None:
        by_type, _ = builtin_tools()
        groups: dict[str, list[dict[str, Any]]] = {}
        for tool in self.response.get("tools") or []:
            if tool["type"] != "function":
                groups.setdefault(tool["type"], []).append(tool)
        seen: set[int] = set()
        for kind in groups:
            tool = by_type[kind]
            if id(tool) in seen:
                continue
            seen.add(id(tool))
            same = [d for k, ds in groups.items() if by_type[k] is tool for d in ds]
            self.toolsets.append(await tool.prepare(same, self))
            self.toolset_types.append({k for k in groups if by_type[k] is tool})

    def _owner(self, name: str) -> ToolSet | None:
        return next((t for t in self.toolsets if t.handles(name)), None)

    def _allowed(self) -> list[dict[str, Any]] | None:
        """The ``allowed_tools`` of the tool choice: the only tools the model is offered."""
        choice = self.response.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
            allowed: list[dict[str, Any]] = choice.get("tools") or []
            return allowed
        return None

    def _chat_tools(self) -> list[dict[str, Any]]:
        allowed = self._allowed()
        names = None if allowed is None else {
            a.get("name") for a in allowed if a.get("type") == "function"}
        kinds = None if allowed is None else {a.get("type") for a in allowed}
        tools = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description"),
            "parameters": t.get("parameters")}}
            for t in self.response.get("tools") or []
            if t["type"] == "function" and (names is None or t["name"] in names)]
        limit = self.response.get("max_tool_calls")
        if limit is None or self.state["tool_calls"] < limit:
            for toolset, types in zip(self.toolsets, self.toolset_types, strict=True):
                if kinds is None or kinds & types:
                    tools += toolset.functions()
        return tools

    def _tool_choice(self, tools: list[dict[str, Any]]) -> Any:
        choice = self.response.get("tool_choice") or "auto"
        if not tools:
            return None
        # A forced choice holds for the first model call only: the next one must be
        # free to answer with the tool's result.
        if self.state["calls"] > 0 and choice != "none":
            return "auto"
        if isinstance(choice, str):
            return choice
        if choice.get("type") == "allowed_tools":
            return choice.get("mode", "auto")
        if choice.get("type") == "function":
            return {"type": "function", "function": {"name": choice.get("name")}}
        for toolset in self.toolsets:
            name = toolset.choice(choice)
            if name is not None:
                return {"type": "function", "function": {"name": name}}
        return "auto"

    async def _messages(self, drop: int = 0) -> list[dict[str, Any]]:
        """The chat messages of the items so far, without the ``drop`` oldest ones."""
        messages: list[dict[str, Any]] = []
        system = [t for t in (self.response.get("_prompt_text"),
                              self.response.get("instructions")) if t]
        if system:
            messages.append({"role": "system", "content": "\n\n".join(system)})
        items = self.context[drop:]
        if drop:
            # Start at a message: a tool result without its call means nothing.
            while len(items) > 1 and items[0].get("type") != "message":
                items = items[1:]
        messages += await to_messages(items, self.read_file)
        return messages

    async def _open_stream(self) -> Any:
        """The model call; with ``truncation: auto`` an input over the model's context
        window loses its oldest items (half of them at a time) until it fits."""
        drop = 0
        while True:
            request = self._request(await self._messages(drop))
            try:
                return await guarded(self.services.get("safety"), request, self.user,
                                     self.inference.chat_completion)
            except FnstackError as exc:
                left = len(self.context) - drop
                if exc.code == "context_length_exceeded" and left > 1 and \
                        self.response.get("truncation") == "auto":
                    drop += max(1, left // 2)
                    continue
                if exc.param is not None and exc.param.startswith("messages"):
                    exc.param = "input"  # a Responses request has no "messages"
                raise

    def _request(self, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
        r = self.response
        tools = self._chat_tools()
        body: dict[str, Any] = {
            "model": r["model"], "messages": messages, "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = tools
            body["tool_choice"] = self._tool_choice(tools)
            body["parallel_tool_calls"] = r.get("parallel_tool_calls", True)
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                             ("max_output_tokens", "max_completion_tokens")):
            if r.get(ours) is not None:
                body[theirs] = r[ours]
        # Llama Stack's guardrails: fnstack.guardrails runs them around the model call.
        body.update(r.get("_guardrails") or {})
        fmt = (r.get("text") or {}).get("format") or {"type": "text"}
        if fmt["type"] == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt["type"] == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt["name"], "schema": fmt.get("schema") or {},
                "strict": fmt.get("strict"), "description": fmt.get("description")}}
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InvalidRequestError(
                f"the conversation cannot be sent to the model: "
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}", param="input") from None

    async def _call_model(self) -> None:
        if self.state["calls"] >= self.max_calls:
            self._incomplete("max_inference_calls")
            return
        functions = {t["name"] for t in self.response.get("tools") or []
                     if t["type"] == "function"}
        serial = self.response.get("parallel_tool_calls") is False
        stream = await self._open_stream()
        if isinstance(stream, ChatCompletion):  # asked for a stream: cannot happen
            raise InternalError("the inference service answered a stream request unstreamed")
        text = _Text(self)
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    self._add_usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        await text.delta(delta.content)
                    if delta.refusal:
                        await text.refuse(delta.refusal)
                    for tc in delta.tool_calls or []:
                        if serial and calls and tc.index not in calls:
                            continue  # parallel_tool_calls: false - one call per turn
                        await text.close()
                        entry = calls.setdefault(tc.index, {"id": None, "name": "", "args": [],
                                                            "index": None})
                        if tc.id:
                            entry["id"] = tc.id
                        fn = tc.function
                        if fn is not None and fn.name:
                            entry["name"] += fn.name
                        piece = fn.arguments if fn is not None and fn.arguments else ""
                        entry["args"].append(piece)
                        client = entry["name"] in functions or (
                            entry["name"] and self._owner(entry["name"]) is None)
                        if client and entry["index"] is None and entry["name"]:
                            await self._open_call(entry)
                        elif client and entry["index"] is not None and piece:
                            await self.emit("response.function_call_arguments.delta",
                                            item_id=entry["item_id"],
                                            output_index=entry["index"], delta=piece)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        self.state["calls"] += 1
        await text.close(incomplete=finish == "length")
        if finish == "content_filter":
            calls = {}  # a refused turn calls nothing
        pending = []
        handed_back = False
        for n in sorted(calls):
            entry = calls[n]
            arguments = "".join(entry["args"])
            call_id = entry["id"] or f"call_{item_id('call')}"
            if entry["index"] is None and entry["name"] and self._owner(entry["name"]):
                pending.append({"call_id": call_id, "name": entry["name"],
                                "arguments": arguments})
                continue
            if entry["index"] is None:
                await self._open_call(entry)
            handed_back = True
            item = {**self.output[entry["index"]], "call_id": call_id,
                    "arguments": arguments, "status": "completed"}
            await self.emit("response.function_call_arguments.done", item_id=item["id"],
                            output_index=entry["index"], arguments=arguments)
            await self.done_item(entry["index"], item)
        if finish == "length":
            self._incomplete("max_output_tokens")
        elif pending:
            self.state.update(step="run_tools", pending=pending, handoff=handed_back)
        else:
            self.state["step"] = "finish"

    async def _open_call(self, entry: dict[str, Any]) -> None:
        entry["item_id"] = item_id("function_call")
        entry["index"] = await self.add_item({
            "type": "function_call", "id": entry["item_id"],
            "call_id": entry["id"] or "", "name": entry["name"], "arguments": "",
            "status": "in_progress"})
        sent = "".join(entry["args"])
        if sent:
            await self.emit("response.function_call_arguments.delta",
                            item_id=entry["item_id"], output_index=entry["index"], delta=sent)

    async def _run_tools(self) -> None:
        calls = [ModelCall(**p) for p in self.state["pending"]]
        limit = self.response.get("max_tool_calls")
        if limit is not None:
            calls = calls[:max(0, limit - self.state["tool_calls"])]

        async def one(call: ModelCall) -> bool:
            toolset = self._owner(call.name)
            if toolset is None:  # cannot happen: pending calls are claimed ones
                return False
            return (await toolset.call(call, self)).pause

        if self.response.get("parallel_tool_calls", True):
            paused = await asyncio.gather(*(one(c) for c in calls))
        else:
            paused = [await one(c) for c in calls]
        self.state["tool_calls"] += len(calls)
        handoff = self.state["handoff"] or any(paused)
        self.state.update(pending=[], handoff=False,
                          step="finish" if handoff else "call_model")

    def _incomplete(self, reason: str) -> None:
        self.response["status"] = "incomplete"
        self.response["incomplete_details"] = {"reason": reason}
        self.state["step"] = "finish"

    def _add_usage(self, prompt: int, completion: int) -> None:
        u = self.usage
        u["input_tokens"] += prompt
        u["output_tokens"] += completion
        u["total_tokens"] += prompt + completion
        self.response["usage"] = u

    async def _finish(self) -> None:
        r = self.response
        if r.get("status") != "incomplete":
            r["status"] = "completed"
        r["completed_at"] = int(time.time())
        r["usage"] = self.usage
        kind = "response.incomplete" if r["status"] == "incomplete" else "response.completed"
        await self.emit(kind, response=self.snapshot())

    async def fail(self, code: str, message: str) -> None:
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        self.response["usage"] = self.usage
        await self.emit("response.failed", response=self.snapshot())


class _Text:
    """The message item the model's text streams into (opened by its first delta)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.index: int | None = None
        self.item_id = ""
        self.parts: list[str] = []
        self.refusal: list[str] | None = None  # a refusal part (a guardrail's), after text
        self.closed = False

    async def _open(self) -> int:
        if self.index is None:
            self.item_id = item_id("message")
            self.index = await self.run.add_item({
                "type": "message", "id": self.item_id, "status": "in_progress",
                "role": "assistant", "content": []})
        return self.index

    async def delta(self, piece: str) -> None:
        if self.closed or self.refusal is not None:
            return
        run = self.run
        if self.index is None:
            await self._open()
            await run.emit("response.content_part.added", item_id=self.item_id,
                           output_index=self.index, content_index=0,
                           part={"type": "output_text", "text": "", "annotations": []})
        self.parts.append(piece)
        await run.emit("response.output_text.delta", item_id=self.item_id,
                       output_index=self.index, content_index=0, delta=piece, logprobs=[])

    async def refuse(self, piece: str) -> None:
        if self.closed:
            return
        index = await self._open()
        if self.refusal is None:
            self.refusal = []
            await self.run.emit("response.content_part.added", item_id=self.item_id,
                                output_index=index, content_index=self._refusal_index(),
                                part={"type": "refusal", "refusal": ""})
        self.refusal.append(piece)
        await self.run.emit("response.refusal.delta", item_id=self.item_id,
                            output_index=index, content_index=self._refusal_index(),
                            delta=piece)

    def _refusal_index(self) -> int:
        return 1 if self.parts else 0

    async def close(self, incomplete: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.index is None:
            return
        run = self.run
        parts: list[dict[str, Any]] = []
        if self.parts:
            parts.append(await self._close_text())
        if self.refusal is not None:
            refusal = "".join(self.refusal)
            n = self._refusal_index()
            await run.emit("response.refusal.done", item_id=self.item_id,
                           output_index=self.index, content_index=n, refusal=refusal)
            part = {"type": "refusal", "refusal": refusal}
            await run.emit("response.content_part.done", item_id=self.item_id,
                           output_index=self.index, content_index=n, part=part)
            parts.append(part)
        await run.done_item(self.index, {
            "type": "message", "id": self.item_id, "role": "assistant",
            "status": "incomplete" if incomplete else "completed", "content": parts})

    async def _close_text(self) -> dict[str, Any]:
        run = self.run
        text = "".join(self.parts)
        annotations: list[dict[str, Any]] = []
        for toolset in run.toolsets:
            annotate = getattr(toolset, "annotations", None)
            if annotate is not None:
                annotations += annotate(text, run)
        for n, annotation in enumerate(annotations):
            await run.emit("response.output_text.annotation.added", item_id=self.item_id,
                           output_index=self.index, content_index=0, annotation_index=n,
                           annotation=annotation)
        await run.emit("response.output_text.done", item_id=self.item_id,
                       output_index=self.index, content_index=0, text=text, logprobs=[])
        part = {"type": "output_text", "text": text, "annotations": annotations,
                "logprobs": []}
        await run.emit("response.content_part.done", item_id=self.item_id,
                       output_index=self.index, content_index=0, part=part)
        return part
