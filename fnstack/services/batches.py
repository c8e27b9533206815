"""The batches service: OpenAI's /v1/batches, run by a resumable background job.

``POST /v1/batches`` stores the batch (``validating``) and submits a ``batches.run``
job; the job (a background task locally, the SQS worker function on AWS) validates the
input file, then runs its lines in chunks of ``batches.chunk_lines``, up to
``batches.concurrency`` requests at a time, in-process as the batch's owner.

Never a line lost or written twice, whatever dies when::

    record: done_chunks = k          blob batch_parts/<id>/<k>  (the chunk's lines)
    run:  claim (lease) -> chunk k -> put part k -> checkpoint done_chunks = k+1 -> ...

- a part is keyed by its chunk index, so a chunk redone after a crash between its part
  and its checkpoint replaces its part, never adds a second one;
- one worker at a time: the record holds a lease (a conditional write), renewed at
  every checkpoint; a second delivery while it is held fails and is retried later;
- a run stops after ``batches.run_budget_s`` (Lambda's timeout is 120 s), releases the
  lease and re-enqueues itself for the rest;
- the output and error files are assembled from the parts in chunk order at the end,
  and their ids checkpointed before the status moves, so a redone finalization reuses
  them.

An upstream 429 slows the job (the line is retried with backoff; past the run's budget
the unfinished chunk is left for the next run), it never fails the line. Cancelling
stops the job between chunks; a batch not done by its ``expires_at`` expires, its
unfinished lines in the error file as ``batch_expired``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ValidationError

from fnstack.api.batches import (
    ENDPOINTS,
    Batch,
    BatchList,
    CreateBatchRequest,
)
from fnstack.api.inference import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from fnstack.config import BatchesConfig
from fnstack.errors import (
    ConfigError,
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from fnstack.jobs import JobQueue, LocalJobQueue
from fnstack.records import RecordStore, authorize, claim, mutate
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.services.files import FilesService
from fnstack.services.inference import InferenceService
from fnstack.services.models import ModelsService
from fnstack.spec import Api
from fnstack.storage import BlobStore, KVRecord, KVStore, Owner

__all__ = ["BatchesService", "spec"]

log = logging.getLogger("fnstack.batches")

STORE = "batches"
KIND = "batch"
# Longer than a run's budget, shorter than the queue's visibility timeout (720 s): SQS's
# redelivery of a job whose worker died finds the lease expired and resumes.
LEASE_S = 300.0
WINDOWS = {"24h": 24 * 3600}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
# A user owning the batches started by dropping a file under the bucket's inbox/.
INBOX_OWNER = Owner(principal="system:inbox")
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _now() -> int:
    return int(time.time())


class BatchesService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.files = ctx.dep("files", FilesService)
        self.inference = ctx.dep("inference", InferenceService)
        self.models = ctx.dep("models", ModelsService)
        self.jobs: JobQueue | None = ctx.jobs
        self.policy = ctx.policy
        self.limits: BatchesConfig = ctx.config.batches
        self.kv: KVStore = ctx.stores.kv(STORE)
        self.records = RecordStore(self.kv, kind=KIND, id_prefix="batch_", key_prefix="batch:",
                                   policy=ctx.policy)
        self._config = ctx.config

    @property
    def parts(self) -> BlobStore:
        # The chunks' output lives beside the files it becomes (the files' blob store).
        blobs: BlobStore = self.files.blobs
        return blobs

    # --- the API ------------------------------------------------------------------------

    async def create(self, request: CreateBatchRequest, user: Owner,
                     extra: dict[str, Any] | None = None) -> Batch:
        if request.endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint {request.endpoint!r} is not supported; use one of: "
                f"{', '.join(e for e in ENDPOINTS if e != '/v1/responses')}",
                param="endpoint", code="invalid_value")
        if request.endpoint == "/v1/responses":
            raise InvalidRequestError(
                "endpoint /v1/responses is not served by this deployment yet; use "
                "/v1/chat/completions, /v1/completions or /v1/embeddings",
                param="endpoint", code="unsupported_value")
        if request.completion_window not in WINDOWS:
            raise InvalidRequestError(
                f"completion_window {request.completion_window!r} is not supported; use '24h'",
                param="completion_window", code="invalid_value")
        try:
            file = await self.files.get(request.input_file_id, user)
        except NotFoundError:
            raise NotFoundError(f"input file {request.input_file_id!r} not found",
                                param="input_file_id") from None
        if file.purpose != "batch":
            raise InvalidRequestError(
                f"input file {file.id!r} has purpose {file.purpose!r}; upload the JSONL "
                "with purpose 'batch'", param="input_file_id", code="invalid_file")
        batch_id = self.records.new_id()
        authorize(self.policy, "create", KIND, batch_id, user, user)
        now = _now()
        value: dict[str, Any] = {
            "id": batch_id, "endpoint": request.endpoint, "errors": None,
            "input_file_id": file.id, "completion_window": request.completion_window,
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "expires_at": now + WINDOWS[request.completion_window],
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": request.metadata, "done_chunks": 0, "lease_until": 0,
            **(extra or {}),
        }
        await self.records.create(batch_id, value, user)
        await self._submit(batch_id)
        return _view(value)

    async def get(self, batch_id: str, user: Owner) -> Batch:
        return _view((await self._get(batch_id, user)).value)

    async def list_batches(self, user: Owner, *, after: str | None, limit: int,
                           order: Literal["asc", "desc"] = "desc") -> BatchList:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", param="limit")
        page = await self.records.list(user, after=after, limit=limit, order=order)
        data = [_view(r.value) for r in page.records]
        return BatchList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=page.has_more)

    async def cancel(self, batch_id: str, user: Owner) -> Batch:
        rec = await self._get(batch_id, user)
        authorize(self.policy, "update", KIND, batch_id, rec.owner, user)
        status = rec.value["status"]
        if status in ("cancelling", "cancelled"):
            return _view(rec.value)
        if status not in ("validating", "in_progress", "finalizing"):
            raise ConflictError(f"batch {batch_id!r} is {status} and cannot be cancelled",
                                param="batch_id", code="invalid_state")

        def cancelling(v: dict[str, Any]) -> dict[str, Any] | None:
            if v["status"] not in ("validating", "in_progress", "finalizing"):
                return None
            return {**v, "status": "cancelling", "cancelling_at": _now()}

        await self._mutate(batch_id, cancelling)
        # A worker running it stops at its next chunk; this job finishes it otherwise.
        await self._submit(batch_id)
        return _view((await self._get(batch_id, user)).value)

    async def _get(self, batch_id: str, user: Owner) -> KVRecord:
        try:
            return await self.records.get(batch_id, user)
        except NotFoundError:
            raise NotFoundError(f"batch {batch_id!r} not found", param="batch_id") from None

    async def _submit(self, batch_id: str) -> None:
        if self.jobs is None:
            raise ServiceUnavailableError("no job queue: batches cannot run")
        await self.jobs.submit("batches.run", {"batch_id": batch_id})

    # --- jobs -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Locally, jobs live in this process's memory: resume what a killed server left
        unfinished. (On AWS the queue keeps them and SQS redelivers.)"""
        if isinstance(self.jobs, LocalJobQueue):
            self._recovery = asyncio.create_task(self._resume_unfinished())

    async def _resume_unfinished(self) -> None:
        cursor: str | None = None
        while True:
            page = await self.kv.list("batch:", limit=1000, after=cursor)
            for r in page.records:
                if r.value["status"] in ACTIVE and self.jobs is not None:
                    # No worker of this process holds it yet: a lease left behind was
                    # a dead server's.
                    await self.jobs.submit("batches.run",
                                           {"batch_id": r.value["id"], "reclaim": True})
            if not page.has_more:
                break
            cursor = page.last_cursor

    async def close(self) -> None:
        task = getattr(self, "_recovery", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_job(self, name: str, args: dict[str, Any]) -> None:
        from fnstack.batch_worker import BatchRun, start_inbox_batch

        if name == "run":
            await BatchRun(self, str(args["batch_id"])).run(reclaim=bool(args.get("reclaim")))
        elif name == "inbox":
            await start_inbox_batch(self, str(args["bucket"]), str(args["key"]))
        else:
            raise InvalidRequestError(f"unknown batches job {name!r}")

    # --- the record, changed only by conditional writes -------------------------------------

    async def _mutate(self, batch_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any] | None]
                      ) -> dict[str, Any] | None:
        """Apply ``change`` (None: leave it) with a conditional write; the new value."""
        return await mutate(self.kv, f"batch:{batch_id}", change)

    async def claim(self, batch_id: str, *, reclaim: bool) -> KVRecord | None:
        return await claim(self.kv, f"batch:{batch_id}", lease_s=LEASE_S, reclaim=reclaim,
                           name=batch_id, active=lambda v: v["status"] in ACTIVE)

    # --- requests ---------------------------------------------------------------------------

    async def call(self, endpoint: str, body: dict[str, Any], user: Owner) -> BaseModel:
        """One request line, in-process as the batch's owner (never streamed)."""
        try:
            if endpoint == "/v1/chat/completions":
                chat = ChatCompletionRequest.model_validate({**body, "stream": False})
                result: Any = await self.inference.chat_completion(chat, user)
            elif endpoint == "/v1/completions":
                comp = CompletionRequest.model_validate({**body, "stream": False})
                result = await self.inference.completion(comp, user)
            else:
                result = await self.inference.embeddings(
                    EmbeddingRequest.model_validate(body), user)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidRequestError(
                f"invalid body: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}",
                param=".".join(str(p) for p in first["loc"]) or None) from None
        if not isinstance(result, BaseModel):
            raise InvalidRequestError("the endpoint answered a stream; batches run unstreamed")
        return result


def request_id(batch_id: str, custom_id: str) -> str:
    # The same id for the same line however often it is redone.
    digest = hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]
    return f"batch_req_{digest}"


def error_body(exc: FnstackError) -> dict[str, Any]:
    return exc.to_dict()


def retryable(exc: FnstackError) -> bool:
    return exc.status in _RETRY_STATUSES


def _view(value: dict[str, Any]) -> Batch:
    fields = {k: v for k, v in value.items()
              if k not in ("done_chunks", "lease_until", "chunks", "inbox", "owner_note")}
    return Batch.model_validate(fields)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _build(ctx: ServiceContext) -> Service:
    if not ctx.stores.has(STORE):
        if ctx.config.apis is not None and Api.batches in ctx.config.apis:
            raise ConfigError(f"the batches API needs a kv store {STORE!r}: add it under "
                              "storage.stores", path=f"storage.stores.{STORE}")
        return _Unconfigured()
    return BatchesService(ctx)


class _Unconfigured(Service):
    """Served where the run config has no batches store: every call says what to add."""

    async def run_job(self, name: str, args: dict[str, Any]) -> None:
        raise NotFoundError(f"the batches API is not configured: no {STORE!r} store",
                            code="not_configured")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise NotFoundError(f"the batches API is not configured: the run config has no "
                                f"{STORE!r} store under storage.stores", code="not_configured")

        return refuse


def _router() -> APIRouter:
    from fnstack.routes.batches import router

    return router


spec = ServiceSpec(
    name="batches",
    apis=(Api.batches,),
    factory=_build,
    router=_router,
    depends=("files", "inference", "models"),
    stores=(StoreNeed(STORE, required=False),),
    description="batches: JSONL request files run in the background, resumable",
)
