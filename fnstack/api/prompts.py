"""The prompts API: Llama Stack's /v1/prompts, versioned prompt templates.

A prompt is text with ``{{ variable }}`` placeholders and the list of variables it
declares. Every update makes a new version (1, 2, 3...); one version is the default,
the one a response's ``prompt: {"id": ...}`` uses when it names no version. Updates
carry the version they were made from, so two editors never silently overwrite each
other (the second gets a 409).

`placeholders` and `render_text` hold the template rules, shared by the service's
validation and its rendering.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

__all__ = [
    "MAX_PROMPT_BYTES",
    "MAX_VARIABLES",
    "VARIABLE_NAME",
    "CreatePromptRequest",
    "Prompt",
    "PromptList",
    "PromptsApi",
    "RenderedPrompt",
    "SetDefaultVersionRequest",
    "UpdatePromptRequest",
    "placeholders",
    "render_text",
]

MAX_PROMPT_BYTES = 100_000
MAX_VARIABLES = 100
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# {{ name }}: spaces inside the braces are allowed; anything else between them is an
# invalid placeholder (the service says so rather than leaving it in the text).
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class Prompt(BaseModel):
    # Llama Stack's Prompt: https://llamastack.github.io/docs/api/prompts
    prompt_id: str  # "pmpt_" + 48 hex digits
    version: int  # 1, 2, 3... one per create/update
    is_default: bool = False
    prompt: str | None = None
    variables: list[str] = []


class PromptList(BaseModel):
    data: list[Prompt]


class CreatePromptRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    variables: list[str] | None = None


class UpdatePromptRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    # The version this update was made from: it must still be the latest.
    version: int
    set_as_default: bool = True
    # None keeps the variables of the version it was made from.
    variables: list[str] | None = None


class SetDefaultVersionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int


class RenderedPrompt(BaseModel):
    """A prompt version with its variables filled in (for the responses service)."""

    prompt_id: str
    version: int
    text: str


class PromptsApi(Protocol):
    async def create(self, request: CreatePromptRequest, user: Any) -> Prompt: ...

    async def list_prompts(self, user: Any) -> PromptList: ...

    async def retrieve(self, prompt_id: str, version: int | None, user: Any) -> Prompt: ...

    async def update(self, prompt_id: str, request: UpdatePromptRequest,
                     user: Any) -> Prompt: ...

    async def set_default_version(self, prompt_id: str, version: int,
                                  user: Any) -> Prompt: ...

    async def list_versions(self, prompt_id: str, user: Any) -> PromptList: ...

    async def delete(self, prompt_id: str, user: Any) -> None: ...

    async def render(self, prompt_id: str, version: int | None,
                     variables: dict[str, Any] | None, user: Any) -> RenderedPrompt: ...


def placeholders(text: str) -> list[str]:
    """The placeholder names of ``text`` in order of first use; ValueError names an
    invalid one (``{{ 1x }}``, ``{{ }}``)."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1).strip()
        if not VARIABLE_NAME.fullmatch(name):
            raise ValueError(
                f"invalid placeholder {match.group(0)!r}: a variable name is a letter or _ "
                "then letters, digits or _ (at most 64)")
        if name not in names:
            names.append(name)
    return names


def render_text(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``{{ name }}`` replaced by ``values[name]``, in one pass (a
    value holding ``{{ x }}`` stays as it is: values are never expanded again)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1).strip()], text)
