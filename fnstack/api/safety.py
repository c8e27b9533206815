"""Safety: OpenAI's moderations and Llama Stack's shields.

https://platform.openai.com/docs/api-reference/moderations/create
https://llama-stack.readthedocs.io (Safety: /v1/shields, /v1/safety/run-shield)

A *shield* is a registered safety check (a routing-table entry: provider + the
provider's own id + params). ``run-shield`` answers a violation or none; a moderation
asks the same shield for OpenAI's per-category verdict. Guardrails on chat completions
run shields on the input and on the output (`fnstack.guardrails`).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.common import ProviderModel
from fnstack.api.inference import ImageURL, Message

__all__ = [
    "MODERATION_CATEGORIES",
    "ModerationInput",
    "ModerationRequest",
    "ModerationResponse",
    "ModerationResult",
    "ProviderShield",
    "RegisterShieldRequest",
    "RunShieldRequest",
    "RunShieldResponse",
    "Safety",
    "SafetyProvider",
    "SafetyViolation",
    "Shield",
    "ShieldDeleted",
    "ShieldList",
]

# OpenAI's moderation categories (omni-moderation), always present in a result.
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

InputType = Literal["text", "image"]

# --- moderations (OpenAI) -----------------------------------------------------------


class TextInput(BaseModel):
    type: Literal["text"]
    text: str


class ImageInput(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ModerationPart = Annotated[TextInput | ImageInput, Field(discriminator="type")]


class ModerationRequest(BaseModel):
    """https://platform.openai.com/docs/api-reference/moderations/create

    ``model`` names a shield (its id, or the provider's id of it); omitted, the first
    shield of the run config answers."""

    model_config = ConfigDict(extra="forbid")

    input: str | Annotated[list[str], Field(min_length=1)] | Annotated[
        list[ModerationPart], Field(min_length=1)]
    model: str | None = Field(default=None, min_length=1)


class ModerationInput(BaseModel):
    """One input to classify: a string, or one content-part array (text + images)."""

    text: str
    image_urls: list[str] = []


class ModerationResult(BaseModel):
    flagged: bool
    # OpenAI's categories, plus any the provider adds ("pii/email", "S6", ...).
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[InputType]]

    @classmethod
    def of(cls, scores: dict[str, float], flagged: set[str],
           input_types: list[InputType] | None = None) -> ModerationResult:
        """A result from the provider's own scores and flagged categories; OpenAI's
        categories are filled in (false, 0.0) where the provider says nothing."""
        types: list[InputType] = input_types or ["text"]
        names = list(MODERATION_CATEGORIES) + [
            n for n in [*scores, *sorted(flagged)] if n not in MODERATION_CATEGORIES
        ]
        names = list(dict.fromkeys(names))
        return cls(
            flagged=bool(flagged),
            categories={n: n in flagged for n in names},
            category_scores={n: float(scores.get(n, 1.0 if n in flagged else 0.0))
                             for n in names},
            category_applied_input_types={n: list(types) if n in flagged else []
                                          for n in names},
        )


class ModerationResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"modr-{uuid.uuid4().hex}")
    model: str
    results: list[ModerationResult]


# --- shields (Llama Stack) ------------------------------------------------------------


class Shield(BaseModel):
    identifier: str
    provider_id: str
    provider_resource_id: str
    type: Literal["shield"] = "shield"
    params: dict[str, Any] = {}
    # fnstack extensions
    created: int = Field(default_factory=lambda: int(time.time()))
    source: Literal["config", "api", "provider"] = "api"


class ShieldList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Shield]


class ShieldDeleted(BaseModel):
    id: str
    object: Literal["shield"] = "shield"
    deleted: bool = True


class RegisterShieldRequest(BaseModel):
    """``POST /v1/shields``, as Llama Stack's ``client.shields.register``."""

    model_config = ConfigDict(extra="forbid")

    # No whitespace or control characters: an id goes into paths and keys.
    shield_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    provider_shield_id: str | None = Field(default=None, min_length=1)
    provider_id: str | None = None
    params: dict[str, Any] | None = None


class RunShieldRequest(BaseModel):
    """``POST /v1/safety/run-shield``."""

    model_config = ConfigDict(extra="forbid")

    shield_id: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    params: dict[str, Any] = {}


class SafetyViolation(BaseModel):
    # info: noted; warn: let through with a warning; error: blocked.
    violation_level: Literal["info", "warn", "error"]
    user_message: str | None = None
    metadata: dict[str, Any] = {}


class RunShieldResponse(BaseModel):
    violation: SafetyViolation | None = None


class ProviderShield(BaseModel):
    """A shield a provider says it serves (reported into the routing table)."""

    provider_resource_id: str
    params: dict[str, Any] = {}


# --- the contracts --------------------------------------------------------------------


class SafetyProvider(Protocol):
    """What a safety provider implements. ``params`` of a call override the shield's."""

    async def list_models(self) -> list[ProviderModel]: ...

    async def list_shields(self) -> list[ProviderShield]:
        """The shields this provider serves without registration ([] when none)."""
        ...

    async def run_shield(
        self, shield: Shield, messages: list[Message], params: dict[str, Any]
    ) -> RunShieldResponse:
        """A violation or none. With no messages, only check the params: an
        `InvalidRequestError`-style 400 for params the provider cannot use."""
        ...

    async def moderate(
        self, shield: Shield, inputs: list[ModerationInput]
    ) -> list[ModerationResult]:
        """One result per input, in order."""
        ...

    async def shutdown(self) -> None: ...


class Safety(Protocol):
    """The safety service, as other services call it (``user`` is the caller)."""

    async def run_shield(self, request: RunShieldRequest, user: Any) -> RunShieldResponse: ...

    async def moderate(self, request: ModerationRequest, user: Any) -> ModerationResponse: ...

    async def check(
        self, shield_ids: list[str], messages: list[Message], user: Any
    ) -> tuple[Shield, SafetyViolation] | None:
        """The first blocking (``error``) violation of these shields, or None."""
        ...
