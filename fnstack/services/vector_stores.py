"""The vector stores service: OpenAI's /v1/vector_stores on vector IO providers.

A vector store is an owned record plus one index in a vector IO provider. Attaching a
file creates its vector-store-file record (``in_progress``) and submits an ``ingest``
job; the job (a background task locally, the SQS worker function on AWS) parses the
file, chunks it with the embedding model's own tokenizer, embeds the chunks through the
inference service in batches and inserts them. Ingestion never blocks a request.

Resumable and never indexed twice:

- chunk ids are ``{file_id}:{n}``, so re-inserting after a crash replaces, never adds;
- a worker claims the file with a lease (a conditional write): a second delivery of the
  same job while the lease is held retries later instead of indexing in parallel;
- after each batch the count of indexed chunks is checkpointed, so a resumed job
  starts where the dead one stopped.

``file_counts`` and ``status`` are computed from the file records on every read, so
they are always true. Search runs vector, keyword (BM25) or hybrid queries; hybrid fuses
the two rankings by reciprocal rank or by weighted normalised scores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.inference import EmbeddingRequest
from fnstack.api.vector_io import Chunk, ScoredChunk, VectorIOProvider
from fnstack.api.vector_stores import (
    ChunkingStrategy,
    ContentPart,
    CreateVectorStoreFileBatchRequest,
    CreateVectorStoreFileRequest,
    CreateVectorStoreRequest,
    FileContentPage,
    FileCounts,
    RankingOptions,
    SearchRequest,
    SearchResult,
    SearchResultsPage,
    StaticChunking,
    UpdateVectorStoreRequest,
    VectorStore,
    VectorStoreFile,
    VectorStoreFileBatch,
)
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    ServiceUnavailableError,
)
from fnstack.jobs import JobQueue, LocalJobQueue
from fnstack.ranking import rank, rewrite
from fnstack.records import RecordPage, RecordStore, authorize, claim, mutate
from fnstack.routing import RoutingEntry
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.services.files import FilesService
from fnstack.services.inference import InferenceService
from fnstack.services.models import ModelsService
from fnstack.spec import Api
from fnstack.storage import KVRecord, KVStore, Owner

__all__ = ["VectorStoresService", "spec"]

log = logging.getLogger("fnstack.vector_stores")

STORE = "vector_stores"
KIND = "vector_store"
FILE_KIND = "vector_store.file"
BATCH_KIND = "vector_store.file_batch"
EMBED_BATCH = 64
# How long a worker owns a file it is indexing before another may take over: shorter
# than the queue's visibility timeout (720 s), so SQS's redelivery of a job whose worker
# died finds the lease expired and resumes from the last checkpoint. Every checkpoint
# renews it.
LEASE_S = 600.0
# last_active_at is written at most this often (a search must not always write).
ACTIVE_EVERY_S = 3600
def _now() -> int:
    return int(time.time())


def _strategy(cs: ChunkingStrategy | None, context: int | None) -> dict[str, Any]:
    """The chunking strategy as stored: auto resolves against the embedding model."""
    if cs is not None and cs.type == "static":
        static = cs.static
        if context is not None and static.max_chunk_size_tokens > context - 2:
            raise InvalidRequestError(
                f"chunking_strategy.static.max_chunk_size_tokens "
                f"{static.max_chunk_size_tokens} exceeds what the embedding model reads "
                f"({context - 2} tokens); pick a smaller size or another embedding model",
                param="chunking_strategy",
            )
        return {"type": "static", "static": static.model_dump()}
    # OpenAI's auto is 800/400; a small embedding model reads fewer tokens, and half
    # of a small window as overlap doubles the work for little gain.
    size = 800 if context is None else max(100, min(800, context - 2))
    overlap = 400 if size == 800 else size // 4
    return {"type": "static", "static": {"max_chunk_size_tokens": size,
                                         "chunk_overlap_tokens": overlap}}


class VectorStoresService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.files = ctx.dep("files", FilesService)
        self.inference = ctx.dep("inference", InferenceService)
        self.models = ctx.dep("models", ModelsService)
        self.providers: dict[str, VectorIOProvider] = ctx.providers
        self.jobs: JobQueue | None = ctx.jobs
        self.policy = ctx.policy
        self.kv: KVStore = ctx.stores.kv(STORE)
        self.records = RecordStore(self.kv, kind=KIND, id_prefix="vs_", key_prefix="vs:",
                                   policy=ctx.policy)
        self.batches = RecordStore(self.kv, kind=BATCH_KIND, id_prefix="vsfb_",
                                   key_prefix="vsb:", policy=ctx.policy)

    def _file_records(self, vs_id: str) -> RecordStore:
        # The files of one store, owned like the store: the policy sees the same owner.
        return RecordStore(self.kv, kind=FILE_KIND, id_prefix="", key_prefix=f"vsf:{vs_id}:",
                           policy=self.policy)

    # --- vector stores ------------------------------------------------------------------

    async def create(self, request: CreateVectorStoreRequest, user: Owner) -> VectorStore:
        provider_id = self._provider_id(request.provider_id)
        model, dimension, context = await self._embedding_model(
            request.embedding_model, request.embedding_dimension, user)
        strategy = _strategy(request.chunking_strategy, context)
        for file_id in request.file_ids:
            await self.files.get(file_id, user)  # 404 before anything is created
        vs_id = self.records.new_id()
        authorize(self.policy, "create", KIND, vs_id, user, user)
        now = _now()
        await self.providers[provider_id].create_index(vs_id, dimension)
        value: dict[str, Any] = {
            "id": vs_id, "created_at": now, "name": request.name,
            "description": request.description,
            "metadata": request.metadata or {}, "last_active_at": now,
            "expires_after": request.expires_after.model_dump() if request.expires_after
            else None,
            "provider_id": provider_id, "embedding_model": model,
            "embedding_dimension": dimension, "context_length": context,
            "chunking_strategy": strategy,
        }
        await self.records.create(vs_id, value, user)
        for file_id in request.file_ids:
            await self._attach(value, file_id, None, strategy, user)
        return await self._view(value)

    async def list_stores(self, user: Owner, *, after: str | None, before: str | None, limit: int,
                   order: Literal["asc", "desc"]) -> tuple[list[VectorStore], RecordPage]:
        page = await self.records.list(user, after=after, before=before, limit=limit,
                                       order=order)
        return [await self._view(r.value) for r in page.records], page

    async def get(self, vs_id: str, user: Owner) -> VectorStore:
        return await self._view((await self._get(vs_id, user)).value)

    async def update(self, vs_id: str, request: UpdateVectorStoreRequest,
                     user: Owner) -> VectorStore:
        fields = request.model_fields_set

        def apply(value: dict[str, Any]) -> dict[str, Any]:
            if "name" in fields:
                value["name"] = request.name
            if "metadata" in fields:
                value["metadata"] = request.metadata or {}
            if "expires_after" in fields:
                value["expires_after"] = (request.expires_after.model_dump()
                                          if request.expires_after else None)
            value["last_active_at"] = _now()
            return value

        try:
            value = await self.records.update(vs_id, user, apply)
        except NotFoundError:
            raise _no_store(vs_id) from None
        return await self._view(value)

    async def delete(self, vs_id: str, user: Owner) -> dict[str, Any]:
        rec = await self._get(vs_id, user)
        authorize(self.policy, "delete", KIND, vs_id, rec.owner, user)
        # Files first (their jobs then find nothing to do), the index, the record last:
        # a delete interrupted half way can be repeated.
        records = self._file_records(vs_id)
        while True:
            page = await self.kv.list(records.key_prefix, limit=1000)
            for r in page.records:
                await self.kv.delete(r.key)
            if not page.has_more:
                break
        provider = self.providers.get(rec.value["provider_id"])
        if provider is not None:
            await provider.delete_index(vs_id)
        await self.records.delete(vs_id, user)
        return {"id": vs_id, "object": "vector_store.deleted", "deleted": True}

    async def _get(self, vs_id: str, user: Owner) -> KVRecord:
        try:
            return await self.records.get(vs_id, user)
        except NotFoundError:
            raise _no_store(vs_id) from None

    async def _view(self, value: dict[str, Any]) -> VectorStore:
        counts = await self._counts(value["id"])
        expires_at = None
        if value.get("expires_after"):
            expires_at = int(value["last_active_at"]) + 86400 * int(
                value["expires_after"]["days"])
        status: Literal["expired", "in_progress", "completed"] = (
            "in_progress" if counts[0].in_progress else "completed")
        if expires_at is not None and expires_at <= _now():
            status = "expired"
        return VectorStore(
            id=value["id"], created_at=value["created_at"], name=value.get("name"),
            description=value.get("description"),
            usage_bytes=counts[1], file_counts=counts[0], status=status,
            expires_after=value.get("expires_after"), expires_at=expires_at,
            last_active_at=value.get("last_active_at"), metadata=value.get("metadata") or {},
            provider_id=value["provider_id"], embedding_model=value["embedding_model"],
            embedding_dimension=value["embedding_dimension"],
        )

    async def _counts(self, vs_id: str,
                      only: set[str] | None = None) -> tuple[FileCounts, int]:
        counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
        usage = 0
        cursor: str | None = None
        prefix = f"vsf:{vs_id}:"
        while True:
            page = await self.kv.list(prefix, limit=1000, after=cursor)
            for r in page.records:
                if only is not None and r.value["id"] not in only:
                    continue
                counts[r.value["status"]] += 1
                usage += int(r.value.get("usage_bytes") or 0)
            if not page.has_more:
                break
            cursor = page.last_cursor
        return FileCounts(**counts, total=sum(counts.values())), usage

    def _provider_id(self, asked: str | None) -> str:
        if not self.providers:
            raise InvalidRequestError(
                "no vector_io provider is configured; add one under providers.vector_io "
                "(e.g. inline::vector)", param="provider_id")
        if asked is None:
            return next(iter(self.providers))
        if asked not in self.providers:
            raise InvalidRequestError(
                f"unknown vector_io provider {asked!r}; configured: "
                f"{', '.join(self.providers)}", param="provider_id")
        return asked

    async def _embedding_model(
        self, asked: str | None, dimension: int | None, user: Owner
    ) -> tuple[str, int, int | None]:
        if asked is not None:
            entry = await self.models.resolve(asked, user)
            if entry.resource_type != "embedding":
                raise InvalidRequestError(
                    f"model {asked!r} is not an embedding model", param="embedding_model")
        else:
            entries = [e for e in await self.models.table.all_entries()
                       if e.resource_type == "embedding"]
            if not entries:
                raise InvalidRequestError(
                    "no embedding model is configured; register one or name it with "
                    "extra_body={'embedding_model': ...}", param="embedding_model")
            entry = entries[0]
        known = entry.metadata.get("embedding_dimension")
        if dimension is not None and known is not None and int(known) != dimension:
            raise InvalidRequestError(
                f"embedding model {entry.identifier!r} makes {known}-dimensional vectors, "
                f"not {dimension}", param="embedding_dimension")
        dim = dimension or (int(known) if known is not None else None)
        if dim is None:
            raise InvalidRequestError(
                f"the dimension of {entry.identifier!r} is unknown; pass "
                "extra_body={'embedding_dimension': N}", param="embedding_dimension")
        context = entry.metadata.get("context_length")
        return entry.identifier, dim, int(context) if context else None

    # --- files of a store -------------------------------------------------------------------

    async def attach(self, vs_id: str, request: CreateVectorStoreFileRequest,
                     user: Owner) -> VectorStoreFile:
        rec = await self._get(vs_id, user)
        authorize(self.policy, "update", KIND, vs_id, rec.owner, user)
        await self.files.get(request.file_id, user)
        strategy = (_strategy(request.chunking_strategy, rec.value.get("context_length"))
                    if request.chunking_strategy else rec.value["chunking_strategy"])
        return await self._attach(rec.value, request.file_id, request.attributes, strategy,
                                  rec.owner)

    async def _attach(self, vs: dict[str, Any], file_id: str,
                      attributes: dict[str, Any] | None, strategy: dict[str, Any],
                      owner: Owner) -> VectorStoreFile:
        value = {
            "id": file_id, "vector_store_id": vs["id"], "created_at": _now(),
            "status": "in_progress", "attributes": attributes or {},
            "chunking_strategy": strategy, "usage_bytes": 0, "done_chunks": 0,
            "lease_until": 0,
        }
        key = f"vsf:{vs['id']}:{file_id}"
        try:
            await self.kv.put(key, value, owner=owner, if_absent=True)
        except PreconditionFailedError:
            # Attached already: attaching again changes nothing (OpenAI answers the file).
            existing = await self.kv.get(key)
            if existing is not None:
                return _file_view(existing.value)
        await self._submit(vs["id"], file_id)
        return _file_view(value)

    async def _submit(self, vs_id: str, file_id: str) -> None:
        if self.jobs is None:
            raise ServiceUnavailableError("no job queue: files cannot be indexed")
        await self.jobs.submit("vector_stores.ingest",
                               {"vector_store_id": vs_id, "file_id": file_id})

    async def list_files(
        self, vs_id: str, user: Owner, *, after: str | None, before: str | None, limit: int,
        order: Literal["asc", "desc"], status: str | None,
        only: set[str] | None = None,
    ) -> tuple[list[VectorStoreFile], RecordPage]:
        await self._get(vs_id, user)

        def where(v: dict[str, Any]) -> bool:
            return (status is None or v["status"] == status) and (
                only is None or v["id"] in only)

        page = await self._file_records(vs_id).list(user, after=after, before=before,
                                                    limit=limit, order=order, where=where)
        return [_file_view(r.value) for r in page.records], page

    async def get_file(self, vs_id: str, file_id: str, user: Owner) -> VectorStoreFile:
        return _file_view((await self._get_file(vs_id, file_id, user)).value)

    async def _get_file(self, vs_id: str, file_id: str, user: Owner) -> KVRecord:
        await self._get(vs_id, user)
        try:
            return await self._file_records(vs_id).get(file_id, user)
        except NotFoundError:
            raise NotFoundError(f"file {file_id!r} is not in vector store {vs_id!r}",
                                param="file_id") from None

    async def update_file(self, vs_id: str, file_id: str,
                          attributes: dict[str, Any] | None, user: Owner) -> VectorStoreFile:
        await self._get_file(vs_id, file_id, user)

        def apply(value: dict[str, Any]) -> dict[str, Any]:
            value["attributes"] = attributes or {}
            return value

        value = await self._file_records(vs_id).update(file_id, user, apply)
        if value["status"] == "completed":
            # The chunks carry the attributes that filters test: index them again.
            value = await self._reindex(vs_id, file_id)
        return _file_view(value)

    async def _reindex(self, vs_id: str, file_id: str) -> dict[str, Any]:
        key = f"vsf:{vs_id}:{file_id}"
        for _ in range(5):
            rec = await self.kv.get(key)
            if rec is None:
                raise NotFoundError(f"file {file_id!r} is not in vector store {vs_id!r}")
            value = {**rec.value, "status": "in_progress", "done_chunks": 0, "lease_until": 0}
            try:
                await self.kv.put(key, value, owner=rec.owner, if_version=rec.version)
            except PreconditionFailedError:
                continue
            await self._submit(vs_id, file_id)
            return value
        raise ConflictError(f"file {file_id!r} is being changed concurrently; retry")

    async def detach(self, vs_id: str, file_id: str, user: Owner) -> dict[str, Any]:
        rec = await self._get_file(vs_id, file_id, user)
        vs = await self._get(vs_id, user)
        authorize(self.policy, "update", KIND, vs_id, rec.owner, user)
        await self.kv.delete(rec.key)
        provider = self.providers.get(vs.value["provider_id"])
        if provider is not None:
            await provider.delete_file(vs_id, file_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    async def file_content(self, vs_id: str, file_id: str, user: Owner) -> FileContentPage:
        rec = await self._get_file(vs_id, file_id, user)
        vs = await self._get(vs_id, user)
        chunks = await self._chunks(vs.value, file_id, rec.value["chunking_strategy"],
                                    vs.owner)
        return FileContentPage(data=[ContentPart(text=c.text) for c in chunks])

    # --- file batches --------------------------------------------------------------------

    async def create_batch(self, vs_id: str, request: CreateVectorStoreFileBatchRequest,
                           user: Owner) -> VectorStoreFileBatch:
        rec = await self._get(vs_id, user)
        authorize(self.policy, "update", KIND, vs_id, rec.owner, user)
        for file_id in request.file_ids:
            await self.files.get(file_id, user)
        strategy = (_strategy(request.chunking_strategy, rec.value.get("context_length"))
                    if request.chunking_strategy else rec.value["chunking_strategy"])
        batch_id = self.batches.new_id()
        file_ids = list(dict.fromkeys(request.file_ids))
        value = {"id": batch_id, "vector_store_id": vs_id, "created_at": _now(),
                 "file_ids": file_ids, "cancelled": False}
        await self.batches.create(batch_id, value, rec.owner)
        for file_id in file_ids:
            await self._attach(rec.value, file_id, request.attributes, strategy, rec.owner)
        return await self._batch_view(value)

    async def get_batch(self, vs_id: str, batch_id: str, user: Owner) -> VectorStoreFileBatch:
        return await self._batch_view(await self._batch(vs_id, batch_id, user))

    async def _batch(self, vs_id: str, batch_id: str, user: Owner) -> dict[str, Any]:
        await self._get(vs_id, user)
        try:
            value = (await self.batches.get(batch_id, user)).value
        except NotFoundError:
            value = None
        if value is None or value["vector_store_id"] != vs_id:
            raise NotFoundError(f"file batch {batch_id!r} not found in vector store {vs_id!r}",
                                param="batch_id")
        return value

    async def cancel_batch(self, vs_id: str, batch_id: str,
                           user: Owner) -> VectorStoreFileBatch:
        value = await self._batch(vs_id, batch_id, user)

        def apply(v: dict[str, Any]) -> dict[str, Any]:
            v["cancelled"] = True
            return v

        value = await self.batches.update(batch_id, user, apply)
        for file_id in value["file_ids"]:
            await self._set_status(vs_id, file_id, "cancelled", only_if="in_progress")
        return await self._batch_view(value)

    async def list_batch_files(
        self, vs_id: str, batch_id: str, user: Owner, **kw: Any
    ) -> tuple[list[VectorStoreFile], RecordPage]:
        value = await self._batch(vs_id, batch_id, user)
        return await self.list_files(vs_id, user, only=set(value["file_ids"]), **kw)

    async def _batch_view(self, value: dict[str, Any]) -> VectorStoreFileBatch:
        counts, _ = await self._counts(value["vector_store_id"], set(value["file_ids"]))
        status: Literal["in_progress", "completed", "cancelled", "failed"] = "completed"
        if counts.in_progress:
            status = "in_progress"
        elif value.get("cancelled"):
            status = "cancelled"
        elif counts.failed and not counts.completed:
            status = "failed"
        return VectorStoreFileBatch(id=value["id"], created_at=value["created_at"],
                                    vector_store_id=value["vector_store_id"], status=status,
                                    file_counts=counts)

    # --- search ------------------------------------------------------------------------

    async def search(self, vs_id: str, request: SearchRequest,
                     user: Owner) -> SearchResultsPage:
        rec = await self._get(vs_id, user)
        view = await self._view(rec.value)
        if view.status == "expired":
            raise InvalidRequestError(f"vector store {vs_id!r} has expired",
                                      param="vector_store_id")
        vs = rec.value
        provider = self.providers.get(vs["provider_id"])
        if provider is None:
            raise ServiceUnavailableError(
                f"vector store {vs_id!r} lives in provider {vs['provider_id']!r}, which is "
                "not configured here")
        wanted: set[str] = {"vector", "keyword"} if request.search_mode == "hybrid" else {
            request.search_mode}
        missing = wanted - set(provider.search_modes)
        if missing:
            raise InvalidRequestError(
                f"vector store {vs_id!r} lives in provider {vs['provider_id']!r}, which has no "
                f"{' or '.join(sorted(missing))} search; use search_mode "
                f"{sorted(provider.search_modes)[0]!r}",
                param="search_mode", code="unsupported_search_mode")
        queries = [request.query] if isinstance(request.query, str) else list(request.query)
        if request.rewrite_query:
            queries = [rewrite(q) for q in queries]
        ranking = request.ranking_options or RankingOptions()
        k = request.max_num_results
        mode = request.search_mode
        fetch = k * 3 if mode == "hybrid" else k
        vector: list[list[ScoredChunk]] = []
        keyword: list[list[ScoredChunk]] = []
        if mode in ("vector", "hybrid"):
            embeddings = await self.inference.embeddings(
                EmbeddingRequest(model=vs["embedding_model"], input=queries), rec.owner)
            for e in embeddings.data:
                vec = e.embedding
                assert isinstance(vec, list)
                vector.append(await provider.query(vs_id, mode="vector", k=fetch,
                                                   embedding=vec, filters=request.filters))
        if mode in ("keyword", "hybrid"):
            for q in queries:
                keyword.append(await provider.query(vs_id, mode="keyword", k=fetch, text=q,
                                                    filters=request.filters))
        scored = rank(vector, keyword, mode, ranking)
        results = [
            SearchResult(
                file_id=c.file_id, filename=str(c.attributes.get("_filename", "")),
                score=score,
                attributes={a: v for a, v in c.attributes.items() if not a.startswith("_")},
                content=[ContentPart(text=c.content)],
            )
            for c, score in scored
            if score >= ranking.score_threshold
        ][:k]
        await self._touch(rec)
        return SearchResultsPage(search_query=queries, data=results)

    async def _touch(self, rec: KVRecord) -> None:
        if _now() - int(rec.value.get("last_active_at") or 0) < ACTIVE_EVERY_S:
            return
        value = {**rec.value, "last_active_at": _now()}
        # Someone else touched it first: active either way.
        with contextlib.suppress(PreconditionFailedError):
            await self.kv.put(rec.key, value, owner=rec.owner, if_version=rec.version)

    # --- ingestion (jobs) ----------------------------------------------------------------

    async def start(self) -> None:
        """Locally, jobs live in this process's memory: resume what a killed server left
        in progress. (On AWS the queue keeps them and SQS redelivers.)"""
        if isinstance(self.jobs, LocalJobQueue):
            self._recovery = asyncio.create_task(self._resume_unfinished())

    async def _resume_unfinished(self) -> None:
        cursor: str | None = None
        resumed = 0
        while True:
            page = await self.kv.list("vsf:", limit=1000, after=cursor)
            for r in page.records:
                if r.value["status"] == "in_progress":
                    assert self.jobs is not None
                    # No worker of this process holds it yet: a lease left behind was
                    # a dead server's.
                    await self.jobs.submit("vector_stores.ingest", {
                        "vector_store_id": r.value["vector_store_id"],
                        "file_id": r.value["id"], "reclaim": True})
                    resumed += 1
            if not page.has_more:
                break
            cursor = page.last_cursor
        if resumed:
            log.info("resuming unfinished indexing", extra={"files": resumed})

    async def close(self) -> None:
        task = getattr(self, "_recovery", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_job(self, name: str, args: dict[str, Any]) -> None:
        if name != "ingest":
            raise InvalidRequestError(f"unknown vector_stores job {name!r}")
        await self.ingest(str(args["vector_store_id"]), str(args["file_id"]),
                          reclaim=bool(args.get("reclaim")))

    async def ingest(self, vs_id: str, file_id: str, *, reclaim: bool = False) -> None:
        """Index one file of one store: idempotent, resumable, one worker at a time."""
        vs_rec = await self.kv.get(f"vs:{vs_id}")
        claimed = await self._claim(vs_id, file_id, reclaim=reclaim)
        if vs_rec is None or claimed is None:
            return  # deleted, finished, cancelled, or (retried later) leased elsewhere
        vs = vs_rec.value
        provider = self.providers[vs["provider_id"]]
        try:
            chunks = await self._chunks(vs, file_id, claimed.value["chunking_strategy"],
                                        vs_rec.owner, claimed.value.get("attributes") or {})
            done = int(claimed.value.get("done_chunks") or 0)
            for start in range(done, len(chunks), EMBED_BATCH):
                batch = chunks[start:start + EMBED_BATCH]
                embedded = await self.inference.embeddings(
                    EmbeddingRequest(model=vs["embedding_model"], input=[c.text for c in batch]),
                    vs_rec.owner)
                await provider.insert(vs_id, [
                    Chunk(chunk_id=f"{file_id}:{c.index}", file_id=file_id, content=c.text,
                          attributes=c.attributes, embedding=list(e.embedding))  # type: ignore[arg-type]
                    for c, e in zip(batch, embedded.data, strict=True)
                ])
                if not await self._checkpoint(vs_id, file_id, start + len(batch)):
                    # Detached or cancelled meanwhile: take back what was inserted.
                    await provider.delete_file(vs_id, file_id)
                    return
            usage = sum(len(c.text.encode()) for c in chunks)
            await self._finish(vs_id, file_id, usage)
        except _FileFailed as failed:
            await self._set_status(vs_id, file_id, "failed", only_if="in_progress",
                                   last_error={"code": failed.code, "message": failed.message})
        except FnstackError as exc:
            if exc.status < 500:
                await self._set_status(vs_id, file_id, "failed", only_if="in_progress",
                                       last_error={"code": "server_error",
                                                   "message": exc.message})
                return
            raise

    async def _chunks(self, vs: dict[str, Any], file_id: str, strategy: dict[str, Any],
                      owner: Owner, attributes: dict[str, Any] | None = None) -> list[_Piece]:
        from fnstack import ingest

        try:
            meta = await self.files.get(file_id, owner)
            content = await self.files.content(file_id, owner)
        except NotFoundError:
            raise _FileFailed("invalid_file", f"file {file_id!r} no longer exists") from None
        data = b"".join([part async for part in content.chunks])
        static = StaticChunking(**strategy["static"])
        tokenizer = await self._tokenizer(vs["embedding_model"], owner)
        try:
            doc = await asyncio.to_thread(ingest.parse, data, filename=meta.filename,
                                          content_type=content.content_type)
            pieces = await asyncio.to_thread(
                ingest.chunk_document, doc, tokenizer=tokenizer,
                max_tokens=static.max_chunk_size_tokens, overlap=static.chunk_overlap_tokens)
        except ingest.IngestError as exc:
            raise _FileFailed(exc.code, exc.message) from None
        if not pieces:
            raise _FileFailed("empty_file", f"file {file_id!r} holds no text to index")
        attrs = {**(attributes or {}), "_filename": meta.filename}
        return [_Piece(i, p.text, attrs) for i, p in enumerate(pieces)]

    async def _tokenizer(self, model: str, user: Owner) -> Any:
        from fnstack import ingest

        entry: RoutingEntry = await self.models.resolve(model, user)
        if "tokenizer" in self.models.hooks(entry.provider_id):
            provider = self.models.provider(entry.provider_id)
            return ingest.hf_tokenizer(await provider.tokenizer(entry.provider_resource_id))
        return ingest.whitespace_tokenizer()

    async def _claim(self, vs_id: str, file_id: str, *, reclaim: bool = False
                     ) -> KVRecord | None:
        return await claim(self.kv, f"vsf:{vs_id}:{file_id}", lease_s=LEASE_S, reclaim=reclaim,
                           name=file_id, work="indexed",
                           active=lambda v: v["status"] == "in_progress")

    async def _checkpoint(self, vs_id: str, file_id: str, done: int) -> bool:
        return await self._mutate(vs_id, file_id, lambda v: {
            **v, "done_chunks": done, "lease_until": time.time() + LEASE_S,
        } if v["status"] == "in_progress" else None)

    async def _finish(self, vs_id: str, file_id: str, usage: int) -> None:
        await self._mutate(vs_id, file_id, lambda v: {
            **v, "status": "completed", "usage_bytes": usage, "lease_until": 0,
            "last_error": None,
        } if v["status"] == "in_progress" else None)

    async def _set_status(self, vs_id: str, file_id: str, status: str, *, only_if: str,
                          last_error: dict[str, str] | None = None) -> None:
        await self._mutate(vs_id, file_id, lambda v: {
            **v, "status": status, "lease_until": 0, "last_error": last_error,
        } if v["status"] == only_if else None)

    async def _mutate(self, vs_id: str, file_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
        return await mutate(self.kv, f"vsf:{vs_id}:{file_id}", change) is not None


class _FileFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in ("unsupported_file", "invalid_file", "empty_file") else (
            "invalid_file")
        self.message = message


class _Piece:
    __slots__ = ("attributes", "index", "text")

    def __init__(self, index: int, text: str, attributes: dict[str, Any]) -> None:
        self.index = index
        self.text = text
        self.attributes = {**attributes, "_chunk": index}


def _file_view(value: dict[str, Any]) -> VectorStoreFile:
    return VectorStoreFile(
        id=value["id"], usage_bytes=int(value.get("usage_bytes") or 0),
        created_at=value["created_at"], vector_store_id=value["vector_store_id"],
        status=value["status"], last_error=value.get("last_error"),
        chunking_strategy=value.get("chunking_strategy"),
        attributes=value.get("attributes") or {},
    )


def _no_store(vs_id: str) -> NotFoundError:
    return NotFoundError(f"vector store {vs_id!r} not found", param="vector_store_id")


async def _build(ctx: ServiceContext) -> VectorStoresService:
    return VectorStoresService(ctx)


def _router() -> APIRouter:
    from fnstack.routes.vector_stores import router

    result: APIRouter = router
    return result


spec = ServiceSpec(
    name="vector_stores",
    apis=(Api.vector_io,),
    factory=_build,
    router=_router,
    depends=("files", "inference", "models"),
    stores=(StoreNeed(STORE),),
    provider_api=Api.vector_io,
    provider_protocol=VectorIOProvider,
    description="vector stores: files parsed, chunked, embedded and searched",
)

