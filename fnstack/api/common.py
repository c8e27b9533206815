"""Shapes every API contract shares: list pages, deleted objects, provider-reported models.

Like every module of ``fnstack.api`` this imports nothing of fnstack: the contract is
readable on its own, and a provider or client may import it without the runtime.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = [
    "DeletedObject",
    "ErrorResponse",
    "ListPage",
    "Metadata",
    "ModelType",
    "Order",
    "ProviderModel",
]

T = TypeVar("T")

ModelType = Literal["llm", "embedding"]
Order = Literal["asc", "desc"]


# OpenAI's limits on `metadata`, the same on every create and update:
# https://platform.openai.com/docs/api-reference/chat/create#chat-create-metadata
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"metadata holds at most {METADATA_MAX_PAIRS} pairs, got {len(value)}")
    for k, v in value.items():
        if len(k) > METADATA_MAX_KEY:
            raise ValueError(f"metadata keys are at most {METADATA_MAX_KEY} characters "
                             f"({k[:20]!r}... has {len(k)})")
        if len(v) > METADATA_MAX_VALUE:
            raise ValueError(f"metadata values are at most {METADATA_MAX_VALUE} characters "
                             f"(the value of {k!r} has {len(v)})")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]


class ListPage(BaseModel, Generic[T]):
    """OpenAI's cursor-paginated list: pass ``last_id`` back as ``after`` for the next page."""

    model_config = ConfigDict(extra="allow")

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error fnstack answers: OpenAI's ``{"error": {message, type, param, code}}``."""

    error: ErrorDetail


class DeletedObject(BaseModel):
    """What a delete answers: ``{"id", "object", "deleted": true}``."""

    id: str
    object: str
    deleted: bool = True


class ProviderModel(BaseModel):
    """A model a provider says it serves (reported into the routing table)."""

    provider_resource_id: str
    model_type: ModelType = "llm"
    metadata: dict[str, Any] = {}
