"""The batches API: OpenAI's /v1/batches wire models and the service Protocol.

https://platform.openai.com/docs/api-reference/batch
A batch runs every request line of a ``purpose=batch`` JSONL file against one endpoint
and writes the answers to an output file (and the failures to an error file).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from fnstack.api.common import ListPage, Metadata, Order

__all__ = [
    "ENDPOINTS",
    "Batch",
    "BatchError",
    "BatchErrors",
    "BatchList",
    "BatchRequestCounts",
    "BatchStatus",
    "BatchesApi",
    "CreateBatchRequest",
]

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed",
                      "expired", "cancelling", "cancelled"]
# The endpoints OpenAI's batches accept; /v1/responses is refused until fnstack serves it.
ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                              "/v1/responses")


class CreateBatchRequest(BaseModel):
    # https://platform.openai.com/docs/api-reference/batch/create
    model_config = ConfigDict(extra="allow")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Metadata | None = None


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(BaseModel):
    # https://platform.openai.com/docs/api-reference/batch/object
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None


BatchList = ListPage[Batch]


class BatchesApi(Protocol):
    async def create(self, request: CreateBatchRequest, user: Any) -> Batch: ...

    async def get(self, batch_id: str, user: Any) -> Batch: ...

    async def list_batches(self, user: Any, *, after: str | None, limit: int,
                           order: Order = "desc") -> BatchList: ...

    async def cancel(self, batch_id: str, user: Any) -> Batch: ...
