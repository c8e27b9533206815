"""Structured output for chat models: grammars for JSON and tool calls, and their parser.

Tool calls use the Hermes/Qwen syntax, which small chat templates without a tool
syntax of their own (SmolLM2's ChatML) read well::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

The grammars (llguidance's Lark dialect, with ``%json`` for embedded schemas) pin
that syntax down: the name is one of the tools, the arguments match its parameters
schema, and the JSON is written compactly with ``", "`` / ``": "`` separators (no
free whitespace: a small model must not be able to wander into blank lines).

`ToolCallParser` reads the model's output as it streams, and turns it into text,
tool-call starts and argument fragments as soon as each is certain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "ArgumentsDelta",
    "CallStart",
    "TextDelta",
    "ToolCallParser",
    "json_grammar",
    "render_tool_call",
    "tool_call_grammar",
]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

# The JSON compiler's options: compact, fixed separators (the way json.dumps writes).
_JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _options(strict: bool) -> dict[str, Any]:
    # Non-strict schemas compile leniently: keywords llguidance does not implement are
    # ignored rather than failing the request (strict ones must be enforced in full).
    return {**_JSON_OPTIONS, "lenient": not strict}


def json_grammar(schema: dict[str, Any] | None, *, strict: bool = False) -> str:
    """An llguidance grammar for one JSON value of ``schema`` (None: any JSON object)."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(
        schema if schema is not None else {"type": "object"},
        overrides=cast("JsonCompileOptions", _options(strict)),
    )


def _embedded(schema: dict[str, Any], strict: bool) -> str:
    """``schema`` for Lark's ``%json``, carrying the compiler options with it."""
    return json.dumps({**schema, "x-guidance": _options(strict)}, ensure_ascii=False)


def render_tool_call(name: str, arguments: str) -> str:
    """How a call reads in the model's output (and in the history given back to it)."""
    head = f'{{"name": {json.dumps(name)}, "arguments": '
    return f"{CALL_OPEN}{head}{arguments or '{}'}}}{CALL_CLOSE}"


def tool_call_grammar(
    tools: list[dict[str, Any]],
    *,
    required: bool,
    parallel: bool = True,
    text_schema: dict[str, Any] | None = None,
    text_strict: bool = False,
    text_json: bool = False,
) -> str:
    """A grammar for tool calls to ``tools`` (OpenAI function definitions).

    ``required``: only calls (one or more; exactly one unless ``parallel``). Otherwise
    ("auto") either calls or an answer: free text that does not start with a call,
    or, when ``text_json``, a JSON value of ``text_schema`` (the response_format).
    """
    from llguidance import LLMatcher

    rules = []
    for i, tool in enumerate(tools):
        head = json.dumps(
            f'{CALL_OPEN}{{"name": {json.dumps(tool["name"])}, "arguments": ', ensure_ascii=False
        )
        tail = json.dumps(f"}}{CALL_CLOSE}")
        params = tool.get("parameters") or _NO_PARAMETERS
        rules.append(f"call_{i}: {head} args_{i} {tail}")
        rules.append(f"args_{i}: %json {_embedded(params, bool(tool.get('strict')))}")
    calls = "call" if not parallel else "call+"
    choices = " | ".join(f"call_{i}" for i in range(len(tools)))
    if required:
        top = f"start: {calls}"
    elif text_json:
        top = f"start: answer | {calls}\nanswer: %json " + _embedded(
            text_schema or {"type": "object"}, text_strict
        )
    else:
        # Free text, except that text starting like a call must be a well-formed call.
        top = f"start: TEXT | {calls}\nTEXT: /(?s:.*)/ & ~/{re.escape(CALL_OPEN)}(?s:.*)/"
    lark = "\n".join([top, f"call: {choices}", *rules])
    return LLMatcher.grammar_from_lark(lark)


# --- reading the output -------------------------------------------------------------


@dataclass
class TextDelta:
    text: str


@dataclass
class CallStart:
    index: int
    name: str


@dataclass
class ArgumentsDelta:
    index: int
    fragment: str


Event = TextDelta | CallStart | ArgumentsDelta

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_HEAD_LIMIT = 512  # a call head longer than this is not one: the text is plain text


class ToolCallParser:
    """Splits streamed model output into text and tool calls, incrementally.

    Calls are recognized where the grammars allow them: at the start of the output
    (after whitespace), one after another. Anything else is text. Text that might still
    become ``<tool_call>`` is held back until the next piece decides; argument
    fragments go out as they come, with JSON nesting tracked so the closing brace of
    the call is never sent as part of the arguments.
    """

    def __init__(self, names: set[str] | None = None) -> None:
        self.names = names
        self.calls = 0
        self._state = "start"  # start | text | head | args | between
        self._buffer = ""
        self._depth = 0
        self._in_string = False
        self._escape = False
        self.text = ""  # all text content seen (for non-streaming answers)
        self.arguments: list[str] = []
        self.call_names: list[str] = []

    def feed(self, piece: str) -> list[Event]:
        out: list[Event] = []
        self._buffer += piece
        while self._buffer:
            before = (self._state, len(self._buffer))
            getattr(self, f"_{self._state}")(out)
            if (self._state, len(self._buffer)) == before:
                break  # needs more input
        return out

    def finish(self) -> list[Event]:
        """End of output: whatever is held back is text (or the rest of the arguments)."""
        out: list[Event] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "args" and rest:
            self._args_out(out, rest)
        elif self._state == "head" and rest:
            self._text_out(out, CALL_OPEN + rest)
        elif self._state in ("start", "text") and rest:
            self._text_out(out, rest)
        return out

    # -- states ---------------------------------------------------------------------

    def _start(self, out: list[Event]) -> None:
        stripped = self._buffer.lstrip()
        if not stripped:
            return
        if stripped.startswith(CALL_OPEN):
            self._buffer = stripped[len(CALL_OPEN) :]
            self._state = "head"
        elif not CALL_OPEN.startswith(stripped):
            self._state = "text"

    def _text(self, out: list[Event]) -> None:
        self._text_out(out, self._buffer)
        self._buffer = ""

    def _head(self, out: list[Event]) -> None:
        match = _HEAD.match(self._buffer)
        if match is not None and match.end() == len(self._buffer):
            match = None  # whitespace may still follow; it is not part of the arguments
        if match is None:
            if len(self._buffer) > _HEAD_LIMIT:
                self._text_out(out, CALL_OPEN + self._buffer)
                self._buffer, self._state = "", "text"
            return
        name = json.loads(match.group(1))
        if self.names is not None and name not in self.names and not self.calls:
            self._text_out(out, CALL_OPEN + self._buffer)
            self._buffer, self._state = "", "text"
            return
        self._buffer = self._buffer[match.end() :]
        out.append(CallStart(self.calls, name))
        self.call_names.append(name)
        self.arguments.append("")
        self.calls += 1
        self._state = "args"
        self._depth, self._in_string, self._escape = 0, False, False

    def _args(self, out: list[Event]) -> None:
        end = self._scan(self._buffer)
        if end is None:
            fragment, self._buffer = self._buffer, ""
            self._args_out(out, fragment)
            return
        self._args_out(out, self._buffer[:end])
        self._buffer = self._buffer[end:]
        self._state = "between"

    def _between(self, out: list[Event]) -> None:
        # After the arguments: "}</tool_call>", then maybe whitespace and another call.
        tail = "}" + CALL_CLOSE
        stripped = self._buffer.lstrip()
        if stripped.startswith(tail):
            self._buffer = stripped[len(tail) :]
            return
        if tail.startswith(stripped):
            return
        if stripped.startswith(CALL_OPEN):
            self._buffer = stripped[len(CALL_OPEN) :]
            self._state = "head"
        elif not CALL_OPEN.startswith(stripped):
            # Trailing text after the calls: keep it out of the arguments, drop it from
            # content (a call answer has no content), but do not lose it either.
            self.text += self._buffer
            self._buffer = ""

    # -- helpers ---------------------------------------------------------------------

    def _scan(self, text: str) -> int | None:
        """Where the arguments object ends in ``text`` (index after it), if it does."""
        for i, ch in enumerate(text):
            if self._escape:
                self._escape = False
            elif self._in_string:
                if ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    return i + 1
        return None

    def _text_out(self, out: list[Event], text: str) -> None:
        if text:
            self.text += text
            out.append(TextDelta(text))

    def _args_out(self, out: list[Event], fragment: str) -> None:
        if fragment:
            self.arguments[-1] += fragment
            out.append(ArgumentsDelta(self.calls - 1, fragment))
