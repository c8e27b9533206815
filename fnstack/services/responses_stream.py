"""Streaming events of a response: numbering, delivery, the stored event log, SSE.

One `Events` per response run numbers every event (``sequence_number``, consecutive
from 0) and hands it to its sinks:

- a live stream (``stream: true``): an asyncio queue the route drains as SSE;
- the event log of a background response: events written to the kv store in batches
  (``resp_ev:<id>:<first seq, 10 digits>``), flushed every `FLUSH_S` and at each
  checkpoint of the loop, so ``GET /v1/responses/{id}?stream=true&starting_after=N``
  can replay them from any process (on AWS the run is in the worker function, the
  reader in another). A resumed run rewinds to its checkpoint's sequence number and
  drops the batches written past it, so a replay never shows a step twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fnstack.errors import FnstackError, InternalError
from fnstack.logs import request_id_var
from fnstack.storage import KVStore

__all__ = ["EventLog", "Events", "replay", "sse"]

log = logging.getLogger("fnstack.responses")

FLUSH_S = 0.25
POLL_S = 0.2
TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete", "error")

Sink = Callable[[dict[str, Any]], Awaitable[None]]


class Events:
    """Numbers events and passes them to the sinks (none: a plain request)."""

    def __init__(self, start: int = 0) -> None:
        self.seq = start
        self.sinks: list[Sink] = []

    async def emit(self, type: str, **fields: Any) -> None:
        if not self.sinks:
            self.seq += 1
            return
        event = {"type": type, "sequence_number": self.seq, **fields}
        self.seq += 1
        for sink in self.sinks:
            await sink(event)


class EventLog:
    """The stored event log of one background response."""

    def __init__(self, kv: KVStore, response_id: str) -> None:
        self.kv = kv
        self.prefix = f"resp_ev:{response_id}:"
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    async def add(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        if event["type"] in TERMINAL_EVENTS or time.monotonic() - self._last_flush > FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        key = f"{self.prefix}{batch[0]['sequence_number']:010d}"
        await self.kv.put(key, {"events": batch})

    async def rewind(self, seq: int) -> None:
        """Forget events numbered ``seq`` and later (a resumed run redoes them)."""
        self._pending = [e for e in self._pending if e["sequence_number"] < seq]
        after: str | None = None
        while True:
            page = await self.kv.list(self.prefix, limit=100, after=after)
            for rec in page.records:
                events = rec.value.get("events") or []
                if events and events[-1]["sequence_number"] >= seq:
                    kept = [e for e in events if e["sequence_number"] < seq]
                    if kept:
                        await self.kv.put(rec.key, {"events": kept})
                    else:
                        await self.kv.delete(rec.key)
            if not page.has_more:
                return
            after = page.last_cursor

    async def read(self, after_key: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Events in the batches past ``after_key``, and the last batch's key."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        last = after_key
        while True:
            page = await self.kv.list(self.prefix, limit=100, after=cursor)
            for rec in page.records:
                if after_key is not None and rec.key <= after_key:
                    continue
                out += rec.value.get("events") or []
                last = rec.key
            if not page.has_more:
                return out, last
            cursor = page.last_cursor


async def replay(log_: EventLog, starting_after: int | None,
                 finished: Callable[[], Awaitable[bool]], timeout_s: float = 900.0
                 ) -> AsyncIterator[dict[str, Any]]:
    """The stored events past ``starting_after``, then new ones as they land, until the
    terminal event (or the run has finished and every event is read)."""
    seen = -1 if starting_after is None else starting_after
    last_key: str | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        # Read "finished" first: events written before it are then all visible.
        done = await finished()
        events, last_key = await log_.read(last_key)
        for event in events:
            if event["sequence_number"] <= seen:
                continue
            seen = event["sequence_number"]
            yield event
            if event["type"] in TERMINAL_EVENTS:
                return
        if done or time.monotonic() > deadline:
            return
        await asyncio.sleep(POLL_S)


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """SSE framing (``event:`` + ``data:``, as OpenAI sends them); a failure after the
    first event ends the stream with an ``error`` event, never a hang."""
    seq = -1
    try:
        async for event in events:
            seq = event["sequence_number"]
            yield _frame(event)
    except FnstackError as exc:
        err = exc.to_dict()["error"]
        yield _frame({"type": "error", "sequence_number": seq + 1,
                      "code": err["code"] or err["type"], "message": err["message"],
                      "param": err["param"]})
    except Exception:
        log.error("stream failed", exc_info=True)
        rid = request_id_var.get()
        err = InternalError(f"the stream failed; quote request id {rid} when reporting it")
        yield _frame({"type": "error", "sequence_number": seq + 1, "code": "server_error",
                      "message": err.message, "param": None})
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
