"""Models: the routing table's public face, shaped as OpenAI's model objects.

https://platform.openai.com/docs/api-reference/models/object
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Model", "ModelDeleted", "ModelList", "Models", "RegisterModelRequest"]

ModelType = Literal["llm", "embedding"]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # fnstack extensions
    provider_id: str
    provider_resource_id: str
    model_type: ModelType
    metadata: dict[str, Any] = {}
    # Llama Stack / OGX: clients read provider and type from custom_metadata (with the
    # metadata merged in) on listed models, and identifier/type on a retrieved one.
    identifier: str | None = None
    type: Literal["model"] = "model"
    custom_metadata: dict[str, Any] = {}


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class RegisterModelRequest(BaseModel):
    """``POST /v1/models`` (a fnstack extension; OpenAI has no such call)."""

    model_config = ConfigDict(extra="forbid")

    # No whitespace and no control characters (a NUL in an id breaks logs and stores).
    model_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    provider_id: str | None = None
    provider_model_id: str | None = Field(default=None, min_length=1)
    model_type: ModelType = "llm"
    metadata: dict[str, Any] = {}


class Models(Protocol):
    async def list_models(self) -> ModelList: ...

    async def get_model(self, model_id: str) -> Model: ...

    async def register_model(self, request: RegisterModelRequest) -> Model: ...

    async def unregister_model(self, model_id: str) -> ModelDeleted: ...
