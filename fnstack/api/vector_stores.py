"""Vector stores: OpenAI's /v1/vector_stores, its files, file batches and search.

Wire models follow the OpenAI API reference, in its order:
https://platform.openai.com/docs/api-reference/vector-stores
https://platform.openai.com/docs/api-reference/vector-stores-files
https://platform.openai.com/docs/api-reference/vector-stores-file-batches

Llama Stack's extensions ride in ``extra_body``: ``provider_id`` (which vector IO
provider holds the store), ``embedding_model`` and ``embedding_dimension``, and
``search_mode`` (vector, keyword, hybrid) on search.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fnstack.api.common import Metadata
from fnstack.api.vector_io import AttributeValue, Filter

__all__ = [
    "ChunkingStrategy",
    "CreateVectorStoreFileBatchRequest",
    "CreateVectorStoreFileRequest",
    "CreateVectorStoreRequest",
    "FileCounts",
    "SearchRequest",
    "SearchResult",
    "SearchResultsPage",
    "UpdateVectorStoreFileRequest",
    "UpdateVectorStoreRequest",
    "VectorStore",
    "VectorStoreFile",
    "VectorStoreFileBatch",
]

MAX_ATTRIBUTES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- chunking ------------------------------------------------------------------------


class StaticChunking(BaseModel):
    max_chunk_size_tokens: int = Field(default=800, ge=100, le=4096, strict=True)
    chunk_overlap_tokens: int = Field(default=400, ge=0, strict=True)

    @model_validator(mode="after")
    def _overlap(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class StaticChunkingStrategy(BaseModel):
    type: Literal["static"]
    static: StaticChunking


class AutoChunkingStrategy(BaseModel):
    type: Literal["auto"]


ChunkingStrategy = Annotated[
    AutoChunkingStrategy | StaticChunkingStrategy, Field(discriminator="type")
]


class ExpiresAfter(BaseModel):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365, strict=True)


def _check_attributes(value: dict[str, AttributeValue] | None) -> None:
    if value is None:
        return
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes hold at most {MAX_ATTRIBUTES} pairs")
    for k, v in value.items():
        if len(k) > 64:
            raise ValueError("attribute keys are at most 64 characters")
        if isinstance(v, str) and len(v) > 512:
            raise ValueError("string attribute values are at most 512 characters")


# --- requests -------------------------------------------------------------------------


class CreateVectorStoreRequest(_Request):
    chunking_strategy: ChunkingStrategy | None = None
    description: str | None = Field(default=None, max_length=512)
    file_ids: list[str] = Field(default=[], max_length=500)
    name: str | None = Field(default=None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: Metadata | None = None
    # Llama Stack extensions
    provider_id: str | None = None
    embedding_model: str | None = None
    embedding_dimension: int | None = Field(default=None, ge=1, strict=True)


class UpdateVectorStoreRequest(_Request):
    name: str | None = Field(default=None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: Metadata | None = None


class CreateVectorStoreFileRequest(_Request):
    file_id: str = Field(min_length=1)
    attributes: dict[str, AttributeValue] | None = None
    chunking_strategy: ChunkingStrategy | None = None

    @model_validator(mode="after")
    def _attrs(self) -> CreateVectorStoreFileRequest:
        _check_attributes(self.attributes)
        return self


class UpdateVectorStoreFileRequest(_Request):
    attributes: dict[str, AttributeValue] | None

    @model_validator(mode="after")
    def _attrs(self) -> UpdateVectorStoreFileRequest:
        _check_attributes(self.attributes)
        return self


class CreateVectorStoreFileBatchRequest(_Request):
    file_ids: list[str] = Field(min_length=1, max_length=500)
    attributes: dict[str, AttributeValue] | None = None
    chunking_strategy: ChunkingStrategy | None = None

    @model_validator(mode="after")
    def _attrs(self) -> CreateVectorStoreFileBatchRequest:
        _check_attributes(self.attributes)
        return self


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # OpenAI's rankers, plus the two fusions of hybrid search (Llama Stack's names).
    ranker: Literal["auto", "default-2024-11-15", "none", "rrf", "weighted"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    # rrf: 1 / (impact_factor + rank); weighted: alpha * vector + (1 - alpha) * keyword
    impact_factor: float = Field(default=60.0, gt=0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)


class SearchRequest(_Request):
    query: str | list[str]
    filters: Filter | None = None
    max_num_results: int = Field(default=10, ge=1, le=50, strict=True)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False
    # Llama Stack extension
    search_mode: Literal["vector", "keyword", "hybrid"] = "vector"

    @model_validator(mode="after")
    def _query(self) -> SearchRequest:
        queries = [self.query] if isinstance(self.query, str) else self.query
        if not queries or any(not q.strip() for q in queries):
            raise ValueError("query must be a non-empty string or a list of them")
        return self


# --- objects ---------------------------------------------------------------------------


class FileCounts(BaseModel):
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class VectorStore(_Wire):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str | None = None
    description: str | None = None
    usage_bytes: int = 0
    file_counts: FileCounts = FileCounts()
    status: Literal["expired", "in_progress", "completed"] = "completed"
    expires_after: ExpiresAfter | None = None
    expires_at: int | None = None
    last_active_at: int | None = None
    metadata: dict[str, str] = {}
    # Llama Stack extensions
    provider_id: str | None = None
    embedding_model: str | None = None
    embedding_dimension: int | None = None


class LastError(BaseModel):
    code: Literal["server_error", "unsupported_file", "invalid_file", "empty_file"]
    message: str


class VectorStoreFile(_Wire):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int = 0
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"] = "in_progress"
    last_error: LastError | None = None
    chunking_strategy: dict[str, Any] | None = None
    attributes: dict[str, AttributeValue] = {}


class VectorStoreFileBatch(_Wire):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"] = "in_progress"
    file_counts: FileCounts = FileCounts()


class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, AttributeValue] = {}
    content: list[ContentPart]


class SearchResultsPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: str | None = None


class FileContentPage(BaseModel):
    """``GET .../files/{id}/content``: the parsed chunks of one file."""

    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[ContentPart]
    has_more: bool = False
    next_page: str | None = None
