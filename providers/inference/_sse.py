"""Reading an upstream that speaks the OpenAI wire format, shared by the relays.

remote::openai reads it from an HTTP response, remote::sagemaker from the byte parts
of an InvokeEndpointWithResponseStream; both get server-sent events (`SSEEvents`),
parse each into a chunk (`parse_chunk`), and read OpenAI's error bodies (`error_fields`).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fnstack.errors import UpstreamError

__all__ = ["QUOTE", "SSEEvents", "error_fields", "finishes", "parse_chunk"]

T = TypeVar("T", bound=BaseModel)

# How much of an upstream body that is not what it should be to quote in a message.
QUOTE = 300


def error_fields(body: bytes | str) -> tuple[str, str | None, str | None]:
    """message, param, code of an error body: OpenAI's shape, or the usual variants."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return (text.strip()[:QUOTE] or "(empty body)"), None, None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        # OpenAI: {"error": {message, type, param, code}}; FastAPI: {"detail": ...};
        # some servers use a bare {"message": ...}. vLLM sends an int code: not ours to keep.
        message = err.get("message") or err.get("detail") or json.dumps(err)[:QUOTE]
        param, code = err.get("param"), err.get("code")
        return (
            message if isinstance(message, str) else json.dumps(message)[:QUOTE],
            param if isinstance(param, str) else None,
            code if isinstance(code, str) else None,
        )
    # Ollama and TGI: {"error": "text"}.
    return str(err)[:QUOTE], None, None


class SSEEvents:
    """Groups server-sent event lines into (event name, data) pairs.

    Feed it whole lines (`line`), or bytes cut anywhere, mid-line or mid-UTF-8
    character (`feed`, then `finish` at the end of the stream).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def line(self, line: str) -> tuple[str, str] | None:
        """The event that ``line`` completes, if it does (a blank line ends one)."""
        if line.startswith("data:"):
            self._data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif not line and self._data:
            event = (self._event, "\n".join(self._data))
            self._event, self._data = "", []
            return event
        # Anything else (":" comments, id:, retry:) carries nothing for us.
        return None

    def feed(self, part: bytes) -> list[tuple[str, str]]:
        """(event name, data) of every event completed by ``part``.

        Lines end with LF, CRLF or a lone CR, as the SSE format allows.
        """
        buffer = self._buffer + part if self._buffer else part
        if b"\r" in buffer:
            # A CR last may be the first half of a CRLF: wait for the next part.
            held = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer = buffer[:-1]
            lines = buffer.split(b"\n")
            self._buffer = lines.pop() + (b"\r" if held else b"")
        else:
            lines = buffer.split(b"\n")
            self._buffer = lines.pop()
        out: list[tuple[str, str]] = []
        for raw in lines:
            # Decoding whole lines only: a UTF-8 character split across parts is whole here.
            if event := self.line(raw.decode("utf-8", "replace")):
                out.append(event)
        return out

    def finish(self) -> list[tuple[str, str]]:
        """What a stream left without its final newline(s)."""
        tail, self._buffer = self._buffer, b""
        out = []
        if tail and (event := self.line(tail.decode("utf-8", "replace"))):
            out.append(event)
        if event := self.line(""):
            out.append(event)
        return out


def parse_chunk(model: type[T], event: str, payload: str, what: str) -> T:
    """One event's data as a ``model`` chunk; an error event raises `UpstreamError`.

    ``what`` names the upstream in messages ("upstream", "SageMaker endpoint x").
    """
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        # vLLM and others report a failure mid-stream as {"error": {...}}.
        if event == "error" or _is_error(payload):
            message, _, _ = error_fields(payload)
            raise UpstreamError(f"{what} failed mid-stream: {message}") from exc
        raise UpstreamError(f"{what} sent a malformed stream event: {payload[:QUOTE]!r}") from exc


def finishes(chunk: Any) -> bool:
    """Whether a chunk carries a finish_reason: the answer is complete."""
    return any(getattr(c, "finish_reason", None) for c in getattr(chunk, "choices", ()))


def _is_error(payload: str) -> bool:
    try:
        data = json.loads(payload)
    except ValueError:
        return False
    return isinstance(data, dict) and "error" in data
