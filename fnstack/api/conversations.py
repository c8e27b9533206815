"""The conversations API: OpenAI's /v1/conversations wire models, item rules, the Protocol.

https://platform.openai.com/docs/api-reference/conversations
A conversation is a durable, ordered list of Responses items (messages, function calls
and their outputs, MCP and search calls...). Clients add and remove items directly; a
response created with ``conversation`` reads every item as its input and appends its
own input and output items.

`normalize_item` holds the rules an item must follow to be stored: what a client sends
(an "easy" message ``{"role", "content": "text"}`` included) becomes the item OpenAI
returns (``{"id", "type": "message", "role", "content": [parts], "status"}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.common import ListPage, Metadata, Order

__all__ = [
    "INCLUDABLE",
    "ITEM_ID_PREFIXES",
    "MAX_ITEMS_PER_CALL",
    "Conversation",
    "ConversationDeleted",
    "ConversationItemList",
    "ConversationsApi",
    "CreateConversationRequest",
    "CreateItemsRequest",
    "ItemError",
    "UpdateConversationRequest",
    "normalize_item",
]

# "You may add up to 20 items at a time" (create, and items.create).
MAX_ITEMS_PER_CALL = 20
MAX_ITEM_ID = 256
_ITEM_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_ITEM_ID}}}")

# What `include` may name (OpenAI's ResponseIncludable). Stored items always hold every
# field, so include changes nothing here; an unknown value is still a 400.
INCLUDABLE = frozenset({
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
})

# The prefix of the id an item gets when it comes without one, by type.
ITEM_ID_PREFIXES: dict[str, str] = {
    "message": "msg_",
    "function_call": "fc_",
    "function_call_output": "fco_",
    "file_search_call": "fs_",
    "web_search_call": "ws_",
    "mcp_call": "mcp_",
    "mcp_list_tools": "mcpl_",
    "mcp_approval_request": "mcpr_",
    "mcp_approval_response": "mcpa_",
    "reasoning": "rs_",
    "computer_call": "cu_",
    "computer_call_output": "cuo_",
    "image_generation_call": "ig_",
    "code_interpreter_call": "ci_",
    "local_shell_call": "lsh_",
    "local_shell_call_output": "lsho_",
    "shell_call": "sh_",
    "shell_call_output": "sho_",
    "apply_patch_call": "apc_",
    "apply_patch_call_output": "apco_",
    "custom_tool_call": "ctc_",
    "custom_tool_call_output": "ctco_",
    "tool_search_call": "tsc_",
    "tool_search_output": "tso_",
    "compaction": "cmp_",
}


# --- wire models ---------------------------------------------------------------------


class Conversation(BaseModel):
    # https://platform.openai.com/docs/api-reference/conversations/object
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str] = Field(default_factory=dict)


class CreateConversationRequest(BaseModel):
    # https://platform.openai.com/docs/api-reference/conversations/create
    model_config = ConfigDict(extra="allow")

    items: list[Any] | None = None
    metadata: Metadata | None = None


class UpdateConversationRequest(BaseModel):
    # https://platform.openai.com/docs/api-reference/conversations/update
    model_config = ConfigDict(extra="allow")

    metadata: Metadata | None


class CreateItemsRequest(BaseModel):
    # https://platform.openai.com/docs/api-reference/conversations/create-items
    model_config = ConfigDict(extra="allow")

    items: list[Any]


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


# Items are kept as the wire dicts they are (dozens of item types, each with its own
# fields): `normalize_item` checks them, the store keeps them as sent.
ConversationItemList = ListPage[dict[str, Any]]


class ConversationsApi(Protocol):
    async def create(self, request: CreateConversationRequest, user: Any) -> Conversation: ...

    async def retrieve(self, conversation_id: str, user: Any) -> Conversation: ...

    async def update(self, conversation_id: str, request: UpdateConversationRequest,
                     user: Any) -> Conversation: ...

    async def delete(self, conversation_id: str, user: Any) -> ConversationDeleted: ...

    async def create_items(self, conversation_id: str, items: list[Any],
                           user: Any) -> ConversationItemList: ...

    async def list_items(self, conversation_id: str, user: Any, *, after: str | None,
                         limit: int, order: Order) -> ConversationItemList: ...

    async def get_item(self, conversation_id: str, item_id: str,
                       user: Any) -> dict[str, Any]: ...

    async def delete_item(self, conversation_id: str, item_id: str,
                          user: Any) -> Conversation: ...

    # For the responses service (in process).
    async def get(self, conversation_id: str, user: Any) -> Conversation: ...

    async def all_items(self, conversation_id: str, user: Any) -> list[dict[str, Any]]: ...

    async def append_items(self, conversation_id: str, items: list[dict[str, Any]],
                           user: Any) -> None: ...


# --- item rules ----------------------------------------------------------------------


class ItemError(ValueError):
    """An item breaks a rule; ``param`` names the field (``items[2].content[0].text``)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


ROLES = ("user", "assistant", "system", "developer")
STATUSES = ("in_progress", "completed", "incomplete")
# Content parts by who may send them: input parts for user/system/developer, and
# assistant messages replayed from earlier turns carry output parts.
_INPUT_PARTS = ("input_text", "input_image", "input_file")
_ASSISTANT_PARTS = ("output_text", "refusal", "input_text")
# Types stored with only their own required fields checked.
_CHECKED: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "function_call": (("call_id", str), ("name", str), ("arguments", str)),
    "mcp_call": (("server_label", str), ("name", str), ("arguments", str)),
    "mcp_list_tools": (("server_label", str), ("tools", list)),
    "mcp_approval_request": (("server_label", str), ("name", str), ("arguments", str)),
    "mcp_approval_response": (("approval_request_id", str), ("approve", bool)),
    "file_search_call": (("queries", list), ("status", str)),
    "web_search_call": (("status", str),),
    "reasoning": (("summary", list),),
    "computer_call": (("call_id", str), ("action", dict)),
    "computer_call_output": (("call_id", str), ("output", dict)),
    "image_generation_call": (("status", str),),
    "code_interpreter_call": (("container_id", str), ("status", str)),
    "local_shell_call": (("call_id", str), ("action", dict), ("status", str)),
    "local_shell_call_output": (("output", str),),
    "shell_call": (("call_id", str), ("action", dict)),
    "shell_call_output": (("call_id", str), ("output", list)),
    "apply_patch_call": (("call_id", str), ("operation", dict), ("status", str)),
    "apply_patch_call_output": (("call_id", str), ("status", str)),
    "custom_tool_call": (("call_id", str), ("name", str), ("input", str)),
    "custom_tool_call_output": (("call_id", str), ("output", (str, list))),
    "tool_search_call": (("arguments", dict),),
    "tool_search_output": (("tools", list),),
    "compaction": (("encrypted_content", str),),
}
_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", bool: "a boolean"}


def _kind(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _field(item: dict[str, Any], key: str, expected: type | tuple[type, ...], param: str,
           what: str) -> Any:
    if key not in item or item[key] is None:
        raise ItemError(f"{what} needs {key!r}", f"{param}.{key}")
    value = item[key]
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ItemError(f"{what}: {key!r} must be {_kind(expected)}", f"{param}.{key}")
    return value


def _part(part: Any, role: str, param: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ItemError("a content part must be an object with a 'type'", param)
    kind = part.get("type")
    if kind not in allowed:
        raise ItemError(
            f"content part type {kind!r} is not allowed in a {role} message; use one of: "
            f"{', '.join(allowed)}", f"{param}.type")
    out = dict(part)
    if kind in ("input_text", "output_text"):
        _field(part, "text", str, param, kind)
        if kind == "output_text":
            if not isinstance(part.get("annotations", []), list):
                raise ItemError("output_text: 'annotations' must be an array",
                                f"{param}.annotations")
            out.setdefault("annotations", [])
    elif kind == "refusal":
        _field(part, "refusal", str, param, kind)
    elif kind == "input_image":
        if not any(isinstance(part.get(k), str) for k in ("image_url", "file_id")):
            raise ItemError("input_image needs 'image_url' or 'file_id'", f"{param}.image_url")
        if part.get("detail", "auto") not in ("low", "high", "auto", "original"):
            raise ItemError("input_image: 'detail' must be one of low, high, auto",
                            f"{param}.detail")
        out.setdefault("detail", "auto")
    elif kind == "input_file" and not any(
            isinstance(part.get(k), str) for k in ("file_id", "file_data", "file_url")):
        raise ItemError("input_file needs 'file_id', 'file_data' or 'file_url'",
                        f"{param}.file_id")
    return out


def _content(value: Any, role: str, param: str) -> list[dict[str, Any]]:
    assistant = role == "assistant"
    if isinstance(value, str):
        # The "easy" form: one text part, as OpenAI stores it.
        if assistant:
            return [{"type": "output_text", "text": value, "annotations": []}]
        return [{"type": "input_text", "text": value}]
    if not isinstance(value, list):
        raise ItemError("message 'content' must be a string or an array of content parts",
                        f"{param}.content")
    if not value:
        raise ItemError("message 'content' must not be empty", f"{param}.content")
    allowed = _ASSISTANT_PARTS if assistant else _INPUT_PARTS
    return [_part(p, role, f"{param}.content[{i}]", allowed) for i, p in enumerate(value)]


def _status(item: dict[str, Any], param: str) -> str:
    status = item.get("status") or "completed"
    if status not in STATUSES:
        raise ItemError(f"'status' must be one of {', '.join(STATUSES)}", f"{param}.status")
    return str(status)


def normalize_item(item: Any, param: str, new_id: Callable[[str], str]) -> dict[str, Any]:
    """The stored form of one item, or `ItemError`. ``new_id(prefix)`` makes the id of an
    item sent without one."""
    if not isinstance(item, dict):
        raise ItemError("an item must be an object", param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"  # the easy form {"role", "content"} carries no type
    if kind == "item_reference":
        raise ItemError(
            "item_reference items cannot be stored in a conversation; send the item itself",
            f"{param}.type")
    if not isinstance(kind, str) or kind not in ITEM_ID_PREFIXES:
        raise ItemError(f"unknown item type {kind!r}; use one of: "
                        f"{', '.join(sorted(ITEM_ID_PREFIXES))}", f"{param}.type")
    item_id = item.get("id")
    if item_id is not None and (not isinstance(item_id, str)
                                or not _ITEM_ID.fullmatch(item_id)):
        # Ids go into URL paths (GET .../items/{item_id}): no "/", "?", "#" or spaces.
        raise ItemError(f"an item id is 1-{MAX_ITEM_ID} of A-Z a-z 0-9 _ - . :",
                        f"{param}.id")
    out = {k: v for k, v in item.items() if v is not None}
    out["type"] = kind
    out["id"] = item_id or new_id(ITEM_ID_PREFIXES[kind])
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise ItemError(f"message role {role!r} is not one of {', '.join(ROLES)}",
                            f"{param}.role")
        if "content" not in item:
            raise ItemError("a message needs 'content'", f"{param}.content")
        out["content"] = _content(item["content"], role, param)
        out["status"] = _status(item, param)
    elif kind == "function_call_output":
        _field(item, "call_id", str, param, kind)
        output = _field(item, "output", (str, list), param, kind)
        if isinstance(output, list):
            out["output"] = [_part(p, "function_call_output", f"{param}.output[{i}]",
                                   _INPUT_PARTS) for i, p in enumerate(output)]
        out["status"] = _status(item, param)
    else:
        for key, expected in _CHECKED[kind]:
            _field(item, key, expected, param, kind)
        if kind == "function_call":
            out["status"] = _status(item, param)
    return out
