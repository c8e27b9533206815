"""A scriptable OpenAI-wire server for fault injection.

The real llama.cpp server is the correctness upstream; this one misbehaves on cue:
slow answers, 429/5xx statuses, streams that break mid-way, garbage bodies. It speaks
real HTTP on 127.0.0.1 (uvicorn in its own thread and event loop), so the provider
under test goes through its whole httpx path.

    with FakeOpenAI() as fake:
        fake.script("/v1/chat/completions", Reply(status=503), Reply(json=chat_json()))
        ...                                  # first call gets 503, the retry a completion
        assert len(fake.requests) == 2

Paths without a script get a canned successful answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from tests.support.asgi_thread import AsgiThread, free_port, read_body

__all__ = ["FakeOpenAI", "Reply", "chat_chunk_json", "chat_json", "free_port"]

MODEL = "fake-model"

# The ASGI callables' message shapes, loosely typed: this is test support.
Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass
class Reply:
    """One scripted answer.

    ``events`` makes it a stream (each a ``data:`` payload, dicts serialised as JSON);
    ``break_after`` aborts the connection after that many events without terminating
    the chunked body; ``done`` sends the final ``data: [DONE]``.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    events: list[Any] | None = None
    event_delay: float = 0.0
    break_after: int | None = None
    done: bool = True


@dataclass
class Seen:
    """A request the server received, and whether its client went away mid-answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client: tuple[str, int] | None = None  # the peer address: same port, same connection
    disconnected: threading.Event = field(default_factory=threading.Event)


def chat_json(content: str = "Hello!", model: str = MODEL) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def chat_chunk_json(
    content: str | None = None, finish_reason: str | None = None, model: str = MODEL
) -> dict[str, Any]:
    delta = {"role": "assistant"} if content is None and finish_reason is None else {}
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _default(path: str, body: Any) -> Reply:
    if path.endswith("/models"):
        return Reply(
            json={
                "object": "list",
                "data": [
                    {"id": MODEL, "object": "model", "owned_by": "fake"},
                    {"id": "fake-embed", "object": "model", "owned_by": "fake"},
                ],
            }
        )
    if path.endswith("/embeddings"):
        inputs = body.get("input", "") if isinstance(body, dict) else ""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        return Reply(
            json={
                "object": "list",
                "model": body.get("model", MODEL) if isinstance(body, dict) else MODEL,
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                    for i in range(len(texts))
                ],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            }
        )
    if isinstance(body, dict) and body.get("stream"):
        words = ["Hello", " there", "!"]
        return Reply(
            events=[
                chat_chunk_json(),
                *(chat_chunk_json(w) for w in words),
                chat_chunk_json(finish_reason="stop"),
            ]
        )
    return Reply(json=chat_json())


class FakeOpenAI:
    """The server; a context manager that starts and stops it."""

    def __init__(self) -> None:
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._serving = AsgiThread(self._app, self.port, name="fake OpenAI server")

    # --- scripting ---

    def script(self, path: str, *replies: Reply) -> None:
        """Queue answers for ``path`` (e.g. "/v1/chat/completions"), used in order."""
        with self._lock:
            self._scripts[path].extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    def _next(self, path: str, body: Any) -> Reply:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else _default(path, body)

    # --- lifecycle ---

    def __enter__(self) -> FakeOpenAI:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()

    # --- the ASGI app ---

    async def _app(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        path: str = scope["path"]
        seen = Seen(
            method=scope["method"],
            path=path,
            headers={k.decode(): v.decode() for k, v in scope["headers"]},
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        with self._lock:
            self.requests.append(seen)

        # The ASGI way to notice a client going away: receive() returns http.disconnect.
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            seen.disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._answer(self._next(path, body), seen, send)
        finally:
            watcher.cancel()

    async def _answer(self, reply: Reply, seen: Seen, send: Any) -> None:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = dict(reply.headers)
        if reply.events is not None:
            headers.setdefault("content-type", reply.content_type or "text/event-stream")
            await send(_start(reply.status, headers))
            for n, event in enumerate(reply.events):
                if reply.break_after is not None and n >= reply.break_after:
                    # Raising after the response started makes uvicorn drop the connection
                    # mid-body: the client sees an incomplete chunked read.
                    raise ConnectionAbortedError("scripted mid-stream break")
                if seen.disconnected.is_set():
                    return
                data = event if isinstance(event, str) else json.dumps(event)
                await send(_body(f"data: {data}\n\n".encode(), more=True))
                if reply.event_delay:
                    await asyncio.sleep(reply.event_delay)
            if reply.break_after is not None:
                raise ConnectionAbortedError("scripted mid-stream break")
            tail = b"data: [DONE]\n\n" if reply.done else b""
            await send(_body(tail, more=False))
            return
        if reply.body is not None:
            content = reply.body
            headers.setdefault("content-type", reply.content_type or "text/plain")
        else:
            payload = reply.json
            if payload is None and reply.status >= 400:
                payload = {
                    "error": {
                        "message": f"scripted {reply.status}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            content = json.dumps(payload).encode()
            headers.setdefault("content-type", reply.content_type or "application/json")
        await send(_start(reply.status, headers))
        await send(_body(content, more=False))


def _start(status: int, headers: dict[str, str]) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def _body(content: bytes, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": content, "more_body": more}
