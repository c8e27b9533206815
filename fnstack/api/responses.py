"""Responses: OpenAI's /v1/responses, the server-side agent loop.

Wire models follow the OpenAI API reference (and the ``openai`` SDK's
``types/responses``) field by field:
https://platform.openai.com/docs/api-reference/responses/create

Input and output *items* travel as plain JSON objects (``{"type": "message", ...}``,
``{"type": "function_call", ...}``, ``{"type": "file_search_call", ...}``, the MCP and web
search items...): the built-in tools add item types of their own, and items are stored
and replayed as they are. The item types the core understands have models here
(`InputMessage`, `FunctionCallItem`, `FunctionCallOutputItem`, `ItemReference`, the
output message and its parts) and are validated against them; the others must be a type
some built-in tool declares.

Streaming events are JSON objects too, each with ``type`` and ``sequence_number``
(consecutive from 0 in one response); `EVENT_TYPES` lists those the core emits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.common import Metadata

__all__ = [
    "EVENT_TYPES",
    "CreateResponseRequest",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "IncompleteDetails",
    "InputItemList",
    "InputMessage",
    "InputTokens",
    "ItemReference",
    "OutputMessage",
    "OutputText",
    "PromptParam",
    "Response",
    "ResponseDeleted",
    "ResponseError",
    "ResponseList",
    "ResponseStatus",
    "ResponseUsage",
    "TextConfig",
]

ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "incomplete",
                         "cancelled"]
TERMINAL: tuple[ResponseStatus, ...] = ("completed", "failed", "incomplete", "cancelled")

# Values of ``include`` the service honours (the others OpenAI lists are accepted and
# have nothing to add here).
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- content parts --------------------------------------------------------------------


class InputText(_Wire):
    type: Literal["input_text"]
    text: str


class InputImage(_Wire):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] = "auto"


class InputFile(_Wire):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


class FileCitation(_Wire):
    type: Literal["file_citation"] = "file_citation"
    file_id: str
    filename: str
    index: int


class UrlCitation(_Wire):
    type: Literal["url_citation"] = "url_citation"
    url: str
    title: str
    start_index: int
    end_index: int


class OutputText(_Wire):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] | None = None


class Refusal(_Wire):
    type: Literal["refusal"] = "refusal"
    refusal: str


InputPart = Annotated[InputText | InputImage | InputFile, Field(discriminator="type")]
AssistantPart = Annotated[OutputText | Refusal | InputText, Field(discriminator="type")]


# --- items ------------------------------------------------------------------------------


class InputMessage(_Wire):
    """A message of the input: an easy ``{"role", "content"}`` or a full message item.
    Assistant messages (earlier turns) carry ``output_text`` parts."""

    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart] | list[AssistantPart]
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class OutputMessage(_Wire):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText | Refusal] = []


class FunctionCallItem(_Wire):
    type: Literal["function_call"] = "function_call"
    id: str | None = None
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    call_id: str
    output: str | list[dict[str, Any]]
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ItemReference(_Wire):
    """An item of an earlier response of the same principal, by id."""

    type: Literal["item_reference"]
    id: str


# --- tools and formats ---------------------------------------------------------------------


class FormatText(_Wire):
    type: Literal["text"] = "text"


class FormatJSONObject(_Wire):
    type: Literal["json_object"]


class FormatJSONSchema(_Wire):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[FormatText | FormatJSONObject | FormatJSONSchema,
                       Field(discriminator="type")]


class TextConfig(_Wire):
    format: TextFormat = Field(default_factory=FormatText)
    verbosity: Literal["low", "medium", "high"] | None = None


class PromptParam(_Wire):
    """A stored prompt template (/v1/prompts) with its variables."""

    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class ConversationParam(_Wire):
    id: str


class CreateResponseRequest(_Request):
    """https://platform.openai.com/docs/api-reference/responses/create"""

    input: str | list[dict[str, Any]] | None = None
    model: str | None = None
    # Booleans are strict: "yes" is a 400, never coerced.
    background: bool | None = Field(default=None, strict=True)
    conversation: str | ConversationParam | None = None
    include: list[str] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_tool_calls: int | None = Field(default=None, ge=1, strict=True)
    metadata: Metadata | None = None
    parallel_tool_calls: bool | None = Field(default=None, strict=True)
    previous_response_id: str | None = None
    prompt: PromptParam | None = None
    store: bool | None = Field(default=None, strict=True)
    stream: bool | None = Field(default=None, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    text: TextConfig | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    def conversation_id(self) -> str | None:
        c = self.conversation
        return c if isinstance(c, str) or c is None else c.id


# --- the response ----------------------------------------------------------------------------


class InputTokensDetails(_Wire):
    cached_tokens: int = 0


class OutputTokensDetails(_Wire):
    reasoning_tokens: int = 0


class ResponseUsage(_Wire):
    """Summed over every inference call the response made."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class ResponseError(_Wire):
    code: str
    message: str


class IncompleteDetails(_Wire):
    # OpenAI's "max_output_tokens" and "content_filter", and fnstack's
    # "max_inference_calls": the agent loop reached its limit of model calls.
    reason: str


class Response(_Wire):
    """https://platform.openai.com/docs/api-reference/responses/object"""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool | None = None
    completed_at: int | None = None
    conversation: ConversationParam | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    metadata: dict[str, str] = {}
    model: str
    output: list[dict[str, Any]] = []
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt: PromptParam | None = None
    store: bool = True
    temperature: float | None = None
    text: TextConfig = Field(default_factory=TextConfig)
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = []
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class ResponseDeleted(_Wire):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseList(_Wire):
    """Llama Stack's ``GET /v1/responses``: the caller's stored responses."""

    object: Literal["list"] = "list"
    data: list[Response]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class InputTokens(_Wire):
    """``POST /v1/responses/input_tokens``: the input tokens a request would use."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class InputItemList(_Wire):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# --- streaming ---------------------------------------------------------------------------------

EVENT_TYPES = (
    "response.queued",
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_text.annotation.added",
    "response.refusal.delta",
    "response.refusal.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.file_search_call.in_progress",
    "response.file_search_call.searching",
    "response.file_search_call.completed",
    "response.completed",
    "response.failed",
    "response.incomplete",
    "error",
)
