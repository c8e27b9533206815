"""A rule-based OpenAI-compatible chat server: the scripted upstream of the agent tests.

The bundled 135M model cannot be relied on to call tools, so the Responses API tests
(function tools, file_search, MCP, web search, loops) talk to this one instead. It is a
real HTTP server on 127.0.0.1 (uvicorn in its own thread), configured in both test modes
as the ``remote::openai`` provider ``vllm`` (env ``FNSTACK_VLLM_BASE_URL``). Its single
model is ``scripted``; the provider exposes it under the upstream id, so the public
model id in fnstack is ``scripted`` too (constant `MODEL`).

    with ScriptedLLM() as llm:
        ... FNSTACK_VLLM_BASE_URL=llm.base_url ...
        client.responses.create(model="scripted", input="hello")   # -> "ECHO: hello"

Rules, applied to the request's messages (first match wins):

1. The last user message contains ``LOOP <tool_name>``: always call that tool again
   (arguments ``{}``) - a loop that never ends. Checked on the last *user* message, so
   it holds after tool results too.
2. The last message is a user message with lines ``CALL <tool_name> <json-object-args>``:
   one tool call per such line (several = parallel calls), ids ``call_<n>`` (n counts
   from 1 across the server's life, so ids stay unique), finish_reason ``tool_calls``.
3. The last messages are tool results: answer ``RESULT: `` + the tool contents (those
   after the last assistant message) joined by ``" | "``.
4. Otherwise ``ECHO: `` + the last user message text. With ``response_format``:
   ``json_object`` -> ``{"echo": <text>}``; ``json_schema`` -> an object with every
   property of the schema (and its ``required`` ones) filled by type: string -> the
   echo text, integer/number -> 1, boolean -> true, array -> [], object -> {} (enum:
   its first value; nested objects recursively).

A user message whose text contains ``SLOW <seconds>`` delays the answer (streamed:
between deltas) - for cancel tests of background responses.

Streams: the content is split into several deltas; tool-call arguments into several
fragments (name and id in the first); usage in a last chunk with empty choices when
``stream_options.include_usage``. Every request is recorded in `requests` (the parsed
JSON bodies) so tests can assert what fnstack sent upstream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from typing import Any

from tests.support.asgi_thread import AsgiThread, free_port, read_body

__all__ = ["MODEL", "ScriptedLLM", "answer"]

MODEL = "scripted"

_CALL = re.compile(r"^\s*CALL\s+(\S+)\s*(.*)$")
_LOOP = re.compile(r"LOOP\s+(\S+)")
_SLOW = re.compile(r"SLOW\s+([0-9.]+)")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _fill(schema: dict[str, Any], text: str) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        names = list(props) + [r for r in schema.get("required", []) if r not in props]
        return {name: _fill(props.get(name, {"type": "string"}), text) for name in names}
    if kind == "integer" or kind == "number":
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    return text


class Answer:
    """What the rules decided: content, or tool calls, and how long to take."""

    def __init__(self, content: str | None = None,
                 tool_calls: list[tuple[str, str]] | None = None, delay: float = 0.0) -> None:
        self.content = content
        self.tool_calls = tool_calls or []  # (name, arguments JSON)
        self.delay = delay


def answer(body: dict[str, Any]) -> Answer:
    """Apply the rules to one chat completion request body."""
    messages: list[dict[str, Any]] = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    last_user = _text(users[-1].get("content")) if users else ""
    slow = _SLOW.search(last_user)
    delay = float(slow.group(1)) if slow else 0.0
    last = messages[-1] if messages else {}
    loop = _LOOP.search(last_user)
    if loop:
        return Answer(tool_calls=[(loop.group(1), "{}")], delay=delay)
    if last.get("role") == "user":
        calls = []
        for line in _text(last.get("content")).splitlines():
            match = _CALL.match(line)
            if match:
                args = match.group(2).strip() or "{}"
                calls.append((match.group(1), args))
        if calls:
            return Answer(tool_calls=calls, delay=delay)
    if last.get("role") == "tool":
        results = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            results.append(_text(m.get("content")))
        return Answer(content="RESULT: " + " | ".join(reversed(results)), delay=delay)
    text = "ECHO: " + last_user
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        return Answer(content=json.dumps({"echo": text}), delay=delay)
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return Answer(content=json.dumps(_fill(schema, text)), delay=delay)
    return Answer(content=text, delay=delay)


def _pieces(text: str, n: int = 3) -> list[str]:
    """``text`` in up to ``n`` non-empty consecutive pieces."""
    if len(text) < n:
        return [text] if text else []
    size = -(-len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


class ScriptedLLM:
    """The server; a context manager that starts and stops it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._serving = AsgiThread(self._app, self.port, name="scripted LLM")

    def __enter__(self) -> ScriptedLLM:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()

    def _call_id(self) -> str:
        with self._lock:
            return f"call_{next(self._ids)}"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        path: str = scope["path"]
        if path.endswith("/models"):
            await _json(send, 200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "scripted"}]})
            return
        if not path.endswith("/chat/completions"):
            await _json(send, 404, {"error": {"message": f"no route {path}",
                                              "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            await _json(send, 400, {"error": {"message": "bad JSON",
                                              "type": "invalid_request_error"}})
            return
        with self._lock:
            self.requests.append(body)
        result = answer(body)
        calls = [(self._call_id(), name, args) for name, args in result.tool_calls]
        finish = "tool_calls" if calls else "stop"
        prompt = sum(len(_text(m.get("content")).split()) + 1
                     for m in body.get("messages") or [])
        completion = len((result.content or "").split()) + 3 * len(calls) + 1
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        model = body.get("model", MODEL)
        if not body.get("stream"):
            if result.delay:
                await asyncio.sleep(result.delay)
            message_: dict[str, Any] = {"role": "assistant", "content": result.content}
            if calls:
                message_["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": n, "arguments": a}}
                    for cid, n, a in calls]
            await _json(send, 200, {
                "id": f"chatcmpl-scripted-{int(time.time() * 1000)}",
                "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message_, "finish_reason": finish}],
                "usage": usage})
            return
        chunk_id = f"chatcmpl-scripted-{int(time.time() * 1000)}"

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": chunk_id, "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
        for piece in _pieces(result.content or ""):
            events.append(chunk({"content": piece}))
        for index, (cid, name, args) in enumerate(calls):
            fragments = _pieces(args) or [""]
            events.append(chunk({"tool_calls": [{
                "index": index, "id": cid, "type": "function",
                "function": {"name": name, "arguments": fragments[0]}}]}))
            for fragment in fragments[1:]:
                events.append(chunk({"tool_calls": [{
                    "index": index, "function": {"arguments": fragment}}]}))
        events.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": chunk_id, "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": model, "choices": [],
                           "usage": usage})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        step = result.delay / max(1, len(events))
        for event in events:
            if step:
                await asyncio.sleep(step)
            await send({"type": "http.response.body",
                        "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})


async def _json(send: Any, status: int, payload: Any) -> None:
    content = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": content, "more_body": False})
