"""Anthropic's Messages API: the wire models of ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

Fields follow Anthropic's reference, in its order:
https://docs.anthropic.com/en/api/messages
https://docs.anthropic.com/en/api/messages-count-tokens
https://docs.anthropic.com/en/api/messages-streaming

Requests accept unknown fields (a newer SDK may send more); blocks fnstack cannot
serve (documents, thinking, server tools) are a 400 naming the block type.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CountTokensRequest",
    "Message",
    "MessageParam",
    "MessagesRequest",
    "TextBlock",
    "TokenCount",
    "ToolUseBlock",
    "Usage",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- content blocks (request side) ------------------------------------------------


class TextBlockParam(_Wire):
    type: Literal["text"]
    text: str


class Base64ImageSource(_Wire):
    type: Literal["base64"]
    media_type: str
    data: str


class URLImageSource(_Wire):
    type: Literal["url"]
    url: str


class ImageBlockParam(_Wire):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]


class ToolUseBlockParam(_Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlockParam(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlockParam | ImageBlockParam,
                                  Field(discriminator="type")]] | None = None
    is_error: bool | None = None


ContentBlockParam = Annotated[
    TextBlockParam | ImageBlockParam | ToolUseBlockParam | ToolResultBlockParam,
    Field(discriminator="type"),
]


class MessageParam(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


# --- tools ---------------------------------------------------------------------------


class ToolParam(_Wire):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(_Wire):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Wire):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Wire):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Wire):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class RequestMetadata(_Wire):
    user_id: str | None = None


class JSONOutputFormat(_Wire):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Wire):
    """Structured outputs: the answer is JSON matching ``format.schema``."""

    format: JSONOutputFormat | None = None


# --- requests ------------------------------------------------------------------------


class _Conversation(_Wire):
    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tool_choice: ToolChoice | None = None
    tools: list[ToolParam] | None = None


class MessagesRequest(_Conversation):
    """https://docs.anthropic.com/en/api/messages"""

    # Required by Anthropic: a missing max_tokens is a 400, as there; 0 generates nothing
    # (Anthropic's cache pre-warming): the model is checked and an empty message returned.
    max_tokens: int = Field(ge=0, strict=True)
    metadata: RequestMetadata | None = None
    output_config: OutputConfig | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)


class CountTokensRequest(_Conversation):
    """https://docs.anthropic.com/en/api/messages-count-tokens"""


# --- responses -----------------------------------------------------------------------


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str = Field(default_factory=new_message_id)
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int
