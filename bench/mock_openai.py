"""A fast mock OpenAI upstream, for measuring the gateway's own overhead.

    python bench/mock_openai.py --port 9100 [--chunks 20] [--chunk-delay-ms 0] [--latency-ms 0]

Raw asyncio HTTP/1.1 (keep-alive, Content-Length bodies) rather than an ASGI stack, so
the upstream costs next to nothing and what a benchmark measures is the gateway: on
one core it answers tens of thousands of small requests a second. Answers are fixed
and prebuilt per model name:

- ``POST /v1/chat/completions``: a fixed completion; with ``"stream": true`` an SSE stream
  of ``--chunks`` content chunks plus a final one (and a usage chunk when
  ``stream_options.include_usage``), then ``[DONE]``;
- ``POST /v1/completions``: the same for the legacy endpoint;
- ``POST /v1/embeddings``: an 8-dimensional vector per input;
- ``GET /v1/models``: ``mock-model``.

Not a conformance fake (tests/support/fake_openai.py is the scriptable one): only what
a benchmark drives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from functools import lru_cache
from typing import Any, cast

MODEL = "mock-model"
TEXT = "The quick brown fox jumps over the lazy dog."
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class Settings:
    chunks = 20
    chunk_delay = 0.0  # seconds between stream chunks
    latency = 0.0  # seconds before any answer (a "time to first token")


def _response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _error(status: int, message: str) -> bytes:
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    return _response(status, json.dumps(payload).encode())


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _sse(payload: Any) -> bytes:
    data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    data += b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP chunk per event


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": 12,
        "completion_tokens": Settings.chunks,
        "total_tokens": 12 + Settings.chunks,
    }


@lru_cache(maxsize=256)
def _chat(model: str) -> bytes:
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TEXT},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(),
    }
    return _response(200, json.dumps(body).encode())


@lru_cache(maxsize=256)
def _chat_events(model: str, usage: bool) -> tuple[bytes, ...]:
    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f"tok{i} "}) for i in range(Settings.chunks)]
    events.append(chunk({}, "stop"))
    if usage:
        events.append({**chunk({}), "choices": [], "usage": _usage()})
    return (*(_sse(e) for e in events), _sse(b"[DONE]"), b"0\r\n\r\n")


@lru_cache(maxsize=256)
def _completion(model: str) -> bytes:
    body = {
        "id": "cmpl-mock",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": TEXT, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(),
    }
    return _response(200, json.dumps(body).encode())


@lru_cache(maxsize=256)
def _completion_events(model: str, usage: bool) -> tuple[bytes, ...]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }

    events = [chunk(f"tok{i} ") for i in range(Settings.chunks)]
    events.append(chunk("", "stop"))
    if usage:
        events.append({**chunk(""), "choices": [], "usage": _usage()})
    return (*(_sse(e) for e in events), _sse(b"[DONE]"), b"0\r\n\r\n")


def _embeddings(model: str, inputs: Any) -> bytes:
    count = 1 if isinstance(inputs, str) or not isinstance(inputs, list) else len(inputs)
    body = {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.125 * (j + 1) for j in range(8)]}
            for i in range(count)
        ],
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }
    return _response(200, json.dumps(body).encode())


_MODELS = _response(
    200,
    json.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "mock"}],
        }
    ).encode(),
)
_HEALTH = _response(200, b'{"status":"ok"}')


class _HTTP(asyncio.Protocol):
    """One connection: parse requests as they come (pipelining included), answer in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False  # an answer is being written asynchronously: hold parsing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        while self._transport is not None and not self._busy:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self._transport.write(_error(400, "malformed request line"))
                self._transport.close()
                return
            length, close = 0, version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if len(self._buffer) < end + 4 + length:
                return  # the body is still on its way
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._answer(method, target.split(b"?", 1)[0], body, close)

    def _answer(self, method: bytes, path: bytes, raw: bytes, close: bool) -> None:
        assert self._transport is not None
        if method == b"GET":
            if path == b"/v1/models":
                return self._send(_MODELS, close)
            if path == b"/health":
                return self._send(_HEALTH, close)
            return self._send(_error(404, f"no route {path.decode()}"), close)
        if method != b"POST":
            return self._send(_error(405, "method not allowed"), close)
        try:
            request = json.loads(raw)
            model = str(request.get("model") or MODEL)
        except (ValueError, AttributeError):
            return self._send(_error(400, "the body is not a JSON object"), close)
        stream = request.get("stream") is True
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if path == b"/v1/chat/completions":
            if stream:
                return self._stream(_chat_events(model, usage), close)
            return self._send(_chat(model), close)
        if path == b"/v1/completions":
            if stream:
                return self._stream(_completion_events(model, usage), close)
            return self._send(_completion(model), close)
        if path == b"/v1/embeddings":
            return self._send(_embeddings(model, request.get("input")), close)
        return self._send(_error(404, f"no route {path.decode()}"), close)

    def _send(self, response: bytes, close: bool) -> None:
        if Settings.latency:
            self._later(self._delayed((response,), close))
            return
        assert self._transport is not None
        self._transport.write(response)
        if close:
            self._transport.close()

    def _stream(self, events: tuple[bytes, ...], close: bool) -> None:
        if Settings.latency or Settings.chunk_delay:
            self._later(self._delayed((_STREAM_HEAD, *events), close))
            return
        assert self._transport is not None
        self._transport.write(_STREAM_HEAD + b"".join(events))  # one write: cheapest
        if close:
            self._transport.close()

    def _later(self, answer: Any) -> None:
        self._busy = True
        task = asyncio.get_running_loop().create_task(answer)
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _delayed(self, parts: tuple[bytes, ...], close: bool) -> None:
        await asyncio.sleep(Settings.latency)
        for n, part in enumerate(parts):
            if self._transport is None:
                return  # the client went away
            self._transport.write(part)
            # Space the events, not the head (part 0) or the chunked terminator.
            if Settings.chunk_delay and 0 < n < len(parts) - 2:
                await asyncio.sleep(Settings.chunk_delay)
        self._busy = False
        if close and self._transport is not None:
            self._transport.close()
        elif self._buffer:
            self._process()


_tasks: set[asyncio.Task[None]] = set()  # strong references until each answer is sent


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_HTTP, host, port, reuse_address=True, backlog=1024)
    print(f"mock OpenAI upstream on http://{host}:{port}/v1 (model {MODEL})", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before answering")
    args = parser.parse_args()
    Settings.chunks = args.chunks
    Settings.chunk_delay = args.chunk_delay_ms / 1000
    Settings.latency = args.latency_ms / 1000
    try:
        import uvloop  # optional: faster still where installed
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    main()
