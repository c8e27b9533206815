"""A fake Amazon Bedrock Runtime speaking its real wire protocol (moto has no Converse).

Routes, as in the Bedrock Runtime API reference (rest-json):

- ``POST /model/{modelId}/converse``: JSON in, JSON out;
- ``POST /model/{modelId}/converse-stream``: ``application/vnd.amazon.eventstream``
  with real framing (see ``tests/support/eventstream.py``), decoded by botocore itself;
- ``POST /model/{modelId}/invoke``: Titan and Cohere embedding bodies;
- errors with ``x-amzn-ErrorType`` and ``{"message": ...}``, error *events* mid-stream.

Point boto3 at ``fake.url`` with ``endpoint_url``::

    with FakeBedrock() as fake:
        fake.script(Answer(tool_uses=[ToolUse("t1", "get_weather", {"city": "Paris"})]))
        fake.script(Fault("ThrottlingException"))
        ...
        assert fake.last.body["toolConfig"] == ...

Unscripted requests get ``Answer()``: "Hello there!", stopReason end_turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.eventstream import (
    EVENTSTREAM,
    Fault,
    ScriptedFake,
    aws_error,
    event_message,
    exception_message,
)

__all__ = ["Answer", "FakeBedrock", "Fault", "Seen", "ToolUse"]

# Bedrock's statuses by error type (the API reference's "Errors" sections).
STATUS = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ServiceQuotaExceededException": 400,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


@dataclass
class ToolUse:
    tool_use_id: str
    name: str
    input: dict[str, Any]


@dataclass
class Answer:
    """A model answer: served whole by converse, as events by converse-stream.

    ``fail_after``: in a stream, send that many events and then a ``fail_event``
    exception event instead of the rest. ``event_delay`` spaces the events out.
    """

    text: str = "Hello there!"
    tool_uses: list[ToolUse] = field(default_factory=list)
    stop_reason: str = "end_turn"
    input_tokens: int = 11
    output_tokens: int = 4
    delay: float = 0.0
    event_delay: float = 0.0
    fail_after: int | None = None
    fail_event: str = "modelStreamErrorException"


@dataclass
class Seen:
    operation: str  # converse, converse-stream, invoke
    model_id: str
    headers: dict[str, str]
    body: Any
    closed: threading.Event = field(default_factory=threading.Event)


class FakeBedrock(ScriptedFake[Answer | Fault, Seen]):
    def __init__(self) -> None:
        app = Starlette(
            routes=[
                Route("/model/{model_id:path}/converse", self._converse, methods=["POST"]),
                Route(
                    "/model/{model_id:path}/converse-stream", self._converse_stream,
                    methods=["POST"],
                ),
                Route("/model/{model_id:path}/invoke", self._invoke, methods=["POST"]),
            ]
        )
        super().__init__(app, "fake-bedrock")

    async def _take(self, request: Request, operation: str) -> tuple[Seen, Answer | Fault]:
        raw = await request.body()
        seen = Seen(
            operation=operation,
            model_id=request.path_params["model_id"],
            headers=dict(request.headers),
            body=json.loads(raw) if raw else None,
        )
        reply = self._record(seen)
        if reply is None:
            reply = Answer()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return seen, reply

    # --- the operations ---

    async def _converse(self, request: Request) -> Response:
        _, reply = await self._take(request, "converse")
        if isinstance(reply, Fault):
            return reply.response(STATUS)
        content: list[dict[str, Any]] = [{"text": reply.text}] if reply.text else []
        content += [
            {"toolUse": {"toolUseId": t.tool_use_id, "name": t.name, "input": t.input}}
            for t in reply.tool_uses
        ]
        return JSONResponse(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": reply.stop_reason,
                "usage": _usage(reply),
                "metrics": {"latencyMs": 42},
            },
            headers={"x-amzn-RequestId": "fake-converse-id"},
        )

    async def _converse_stream(self, request: Request) -> Response:
        seen, reply = await self._take(request, "converse-stream")
        if isinstance(reply, Fault):
            return reply.response(STATUS)
        events = _events(reply)

        async def frames() -> AsyncIterator[bytes]:
            try:
                for n, (event_type, payload) in enumerate(events):
                    if reply.fail_after is not None and n >= reply.fail_after:
                        yield exception_message(
                            reply.fail_event, {"message": "scripted failure mid-stream"}
                        )
                        return
                    yield event_message(event_type, payload)
                    if reply.event_delay:
                        await asyncio.sleep(reply.event_delay)
            finally:
                # Reached when the stream ends, or when the client went away mid-way.
                seen.closed.set()

        return StreamingResponse(frames(), media_type=EVENTSTREAM)

    async def _invoke(self, request: Request) -> Response:
        seen, reply = await self._take(request, "invoke")
        if isinstance(reply, Fault):
            return reply.response(STATUS)
        body = seen.body or {}
        if seen.model_id.startswith("cohere.embed"):
            texts = body.get("texts", [])
            return JSONResponse(
                {
                    "id": "fake-embed",
                    "response_type": "embeddings_floats",
                    "texts": texts,
                    "embeddings": [_vector(t, 4) for t in texts],
                }
            )
        if seen.model_id.startswith("amazon.titan-embed"):
            text = body.get("inputText", "")
            return JSONResponse(
                {
                    "embedding": _vector(text, body.get("dimensions", 8)),
                    "inputTextTokenCount": len(text.split()),
                }
            )
        return aws_error(400, "ValidationException", {"message": "unsupported model"})


def _usage(reply: Answer) -> dict[str, int]:
    return {
        "inputTokens": reply.input_tokens,
        "outputTokens": reply.output_tokens,
        "totalTokens": reply.input_tokens + reply.output_tokens,
    }


def _events(reply: Answer) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events of an answer: text in word deltas, tool input in pieces."""
    out: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    index = 0
    if reply.text:
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            out.append(("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0}))
        out.append(("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    for tool in reply.tool_uses:
        start = {"toolUse": {"toolUseId": tool.tool_use_id, "name": tool.name}}
        out.append(("contentBlockStart", {"start": start, "contentBlockIndex": index}))
        raw = json.dumps(tool.input)
        for i in range(0, len(raw), 8):
            delta = {"toolUse": {"input": raw[i : i + 8]}}
            out.append(("contentBlockDelta", {"delta": delta, "contentBlockIndex": index}))
        out.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    out.append(("messageStop", {"stopReason": reply.stop_reason}))
    out.append(("metadata", {"usage": _usage(reply), "metrics": {"latencyMs": 42}}))
    return out


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic vector per text, so tests can tell inputs apart."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[i % len(digest)] / 255, 4) for i in range(dims)]
