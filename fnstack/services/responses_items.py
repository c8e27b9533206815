"""Items: the request's input validated into item dicts, and items turned into the chat
messages the model sees.

Every item the loop keeps is a wire dict with an ``id`` (``msg_``, ``fc_``, ``fco_``...):
the request's input (an ``input`` string is one user message), earlier turns' items
(previous response, conversation), this response's output. The model sees them as chat
messages, converted here: messages by role, ``function_call`` items as assistant
``tool_calls``, ``function_call_output`` as ``tool`` messages, a built-in tool's items
through its ``messages`` (fnstack.services.responses_tools).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from fnstack.api.conversations import ITEM_ID_PREFIXES
from fnstack.api.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    ItemReference,
)
from fnstack.errors import InvalidRequestError, NotFoundError
from fnstack.records import check_storable, new_id
from fnstack.services.responses_tools import builtin_tools

__all__ = ["item_id", "to_messages", "validate_input"]

_MODELS: dict[str, type[BaseModel]] = {
    "message": InputMessage,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "item_reference": ItemReference,
}

# Reads a file's text for an input_file part: (file_id) -> (filename, text).
FileReader = Callable[[str], Awaitable[tuple[str, str]]]


def item_id(kind: str) -> str:
    # One prefix table for the Responses and the Conversations APIs: an item type gets the
    # same id prefix whichever of them makes the item.
    return new_id(ITEM_ID_PREFIXES.get(kind, "item_"))


def _error_text(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def validate_input(raw: str | list[dict[str, Any]] | None,
                   context: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as item dicts with ids; 400 naming ``input[i]`` for a bad one.

    ``context`` (the earlier items the model sees) resolves ``item_reference`` items and
    is where a ``function_call_output`` finds its call."""
    if raw is None:
        return []
    if isinstance(raw, str):
        check_storable(raw, "input")
        return [{"type": "message", "id": item_id("message"), "role": "user", "status":
                 "completed", "content": [{"type": "input_text", "text": raw}]}]
    check_storable(raw, "input")
    _, by_item = builtin_tools()
    out: list[dict[str, Any]] = []
    calls = {i.get("call_id") for i in context if i.get("type") == "function_call"}
    for n, item in enumerate(raw):
        param = f"input[{n}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{param} must be an object", param=param)
        kind = item.get("type", "message" if "role" in item else None)
        if kind is None:
            raise InvalidRequestError(f"{param} needs a type (or a role for a message)",
                                      param=param)
        model = _MODELS.get(kind)
        if model is None and kind not in by_item:
            raise InvalidRequestError(
                f"{param} has type {kind!r}, which this deployment does not take as input",
                param=f"{param}.type", code="invalid_value")
        if model is None:
            value = dict(item)
        else:
            try:
                value = model.model_validate({**item, "type": kind}).model_dump(
                    exclude_none=True, by_alias=True)
            except ValidationError as exc:
                raise InvalidRequestError(f"{param} is invalid: {_error_text(exc)}",
                                          param=param) from None
        if kind == "item_reference":
            found = next((i for i in [*context, *out] if i.get("id") == value["id"]), None)
            if found is None:
                raise NotFoundError(f"item {value['id']!r} not found in this response's context",
                                    param=param)
            value = found
            kind = value["type"]
        elif kind == "message" and isinstance(value["content"], str):
            part = "output_text" if value["role"] == "assistant" else "input_text"
            text_part: dict[str, Any] = {"type": part, "text": value["content"]}
            if part == "output_text":
                text_part["annotations"] = []
            value["content"] = [text_part]
        if kind == "function_call":
            calls.add(value["call_id"])
        if kind == "function_call_output" and value["call_id"] not in calls:
            raise InvalidRequestError(
                f"{param} answers call {value['call_id']!r}, but no function_call with that "
                "call_id precedes it (pass previous_response_id, or the function_call item)",
                param=f"{param}.call_id")
        value.setdefault("id", item_id(kind))
        value.setdefault("status", "completed")
        out.append(value)
    return out


# --- items -> chat messages --------------------------------------------------------------


def _data_url_text(data: str) -> str:
    raw = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(raw, validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        raise InvalidRequestError("input_file.file_data is not valid base64",
                                  param="input") from None


async def _parts(content: list[dict[str, Any]], read_file: FileReader | None
                 ) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": p.get("text", "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": p.get("refusal", "")})
        elif kind == "input_image":
            url = p.get("image_url")
            if url:
                parts.append({"type": "image_url",
                              "image_url": {"url": url, "detail": p.get("detail", "auto")}})
            elif p.get("file_id") and read_file is not None:
                raise InvalidRequestError(
                    "input_image by file_id is not supported; send image_url (a URL or a "
                    "data: URL)", param="input")
        elif kind == "input_file":
            if p.get("file_data"):
                name, text = p.get("filename") or "file", _data_url_text(p["file_data"])
            elif p.get("file_id"):
                if read_file is None:
                    raise InvalidRequestError("input_file by file_id needs the files API",
                                              param="input")
                name, text = await read_file(p["file_id"])
            else:
                raise InvalidRequestError(
                    "input_file needs file_id or file_data (file_url is not fetched)",
                    param="input")
            parts.append({"type": "text", "text": f"[file {name}]\n{text}"})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


async def to_messages(items: list[dict[str, Any]], read_file: FileReader | None = None
                      ) -> list[dict[str, Any]]:
    """Chat completion messages for ``items``, oldest first."""
    _, by_item = builtin_tools()
    out: list[dict[str, Any]] = []

    def tool_call(call_id: str, name: str, arguments: str) -> None:
        call = {"id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}}
        last = out[-1] if out else None
        # Calls of one turn share one assistant message (with its text, if any).
        if last is not None and last["role"] == "assistant" and isinstance(
                last.get("content"), str | None):
            last.setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})

    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role", "user")
            content = await _parts(item.get("content") or [], read_file)
            if role == "assistant":
                text = content if isinstance(content, str) else "".join(
                    p.get("text", "") for p in content)
                out.append({"role": "assistant", "content": text})
            else:
                out.append({"role": role, "content": content})
        elif kind == "function_call":
            tool_call(item["call_id"], item["name"], item.get("arguments") or "{}")
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else "".join(
                p.get("text", "") for p in output or [] if isinstance(p, dict))
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind in by_item:
            for message in by_item[kind].messages(item):
                if message.get("role") == "assistant" and message.get("tool_calls") and \
                        not message.get("content"):
                    for call in message["tool_calls"]:
                        fn = call["function"]
                        tool_call(call["id"], fn["name"], fn.get("arguments") or "{}")
                else:
                    out.append(message)
    # An assistant message without text and calls says nothing: drop it.
    return [m for m in out if m["role"] != "assistant" or m.get("content") or
            m.get("tool_calls")]
