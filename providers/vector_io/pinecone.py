"""``remote::pinecone``: a Pinecone index through the ``pinecone`` SDK's async HTTP client.

One Pinecone index (dense, cosine; made in Pinecone's console or control plane, its
host in the config) serves every fnstack index: one **namespace** each
(``<namespace_prefix><index_id>``), so creating a vector store costs no index. A
namespace exists only while it holds vectors, so ``create_index`` writes a marker
vector (id ``__fnstack_index__``) that tells an empty index from an unknown one and is
never returned by a query.

A chunk is one vector keyed by its ``chunk_id`` (upsert overwrites by id) with
metadata: its attributes under their own names (filterable), ``fnstack_file_id``
(delete_file deletes by this filter), ``fnstack_content``, and ``fnstack_attributes``
(the attributes as exact JSON: Pinecone's numbers come back as floats).

Filters are pushed into the query with the translation S3 Vectors shares
(`providers.vector_io._common.mongo_filter`): exact where the operators agree, widened
where Pinecone cannot say it (string ranges), and every answer re-checked with the
reference `matches`.

**Keyword search: none.** Pinecone ranks text only through sparse vectors in a
``dotproduct`` index fed by a sparse encoder, which this dense cosine index is not; the
provider declares ``search_modes = {"vector"}`` and refuses keyword queries with a 400.

Pinecone serverless is eventually consistent: a write is visible to queries after a
short delay (seconds), which ingestion status cannot observe.

Example run config::

    providers:
      vector_io:
        - provider_id: pinecone
          provider_type: remote::pinecone
          config:
            api_key: ${env.PINECONE_API_KEY}
            host: ${env.PINECONE_INDEX_HOST}   # https://<index>-<project>.svc.<region>.pinecone.io
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fnstack.api.vector_io import Chunk, Filter, ScoredChunk, SearchMode, matches
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.vector_io._common import check_chunks, check_index_id, check_query, mongo_filter

__all__ = ["PineconeConfig", "PineconeProvider", "create", "spec"]

_FILE, _CONTENT, _ATTRS = "fnstack_file_id", "fnstack_content", "fnstack_attributes"
_MARKER = "__fnstack_index__"
_BATCH = 100  # vectors per upsert: Pinecone caps a request at 2 MB; chunks carry text
_MAX_TOP_K = 10_000


class PineconeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr
    host: str = Field(min_length=1, description="The index's data-plane host (describe_index)")
    namespace_prefix: str = Field(default="", max_length=200)
    timeout: float = Field(default=30.0, gt=0)


@asynccontextmanager
async def _errors(what: str) -> AsyncIterator[None]:
    """The SDK's exceptions as `fnstack.errors` (one boundary)."""
    from pinecone.errors import exceptions as pe

    try:
        yield
    except FnstackError:
        raise
    except pe.NotFoundError as exc:
        raise NotFoundError(f"Pinecone {what}: {exc}", param="index_id") from exc
    except pe.RateLimitError as exc:
        raise RateLimitError(f"Pinecone is throttling {what}: {exc}; retry later") from exc
    except pe.PayloadTooLargeError as exc:
        raise PayloadTooLargeError(f"Pinecone {what}: {exc}") from exc
    except (pe.UnauthorizedError, pe.ForbiddenError) as exc:
        raise UpstreamError(f"Pinecone refused the API key for {what}: {exc}; "
                            "check api_key in the provider config") from exc
    except pe.ApiError as exc:
        if 400 <= exc.status_code < 500:
            raise InvalidRequestError(f"Pinecone rejected {what}: {exc}") from exc
        raise UpstreamError(f"Pinecone {what} failed: {exc}") from exc
    except pe.PineconeTimeoutError as exc:
        raise UpstreamTimeoutError(f"Pinecone {what} timed out: {exc}") from exc
    except pe.PineconeValueError as exc:
        raise InvalidRequestError(f"Pinecone {what}: {exc}") from exc
    except pe.PineconeError as exc:
        raise UpstreamError(f"Pinecone {what} failed: {exc}") from exc


class PineconeProvider:
    search_modes: frozenset[SearchMode] = frozenset({"vector"})

    def __init__(self, config: PineconeConfig, client: Any, index: Any) -> None:
        self.config = config
        self.client = client
        self.index = index
        self._dimension: int | None = None
        self._known: set[str] = set()

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def shutdown(self) -> None:
        await self.index.close()
        await self.client.close()

    def _ns(self, index_id: str) -> str:
        return self.config.namespace_prefix + check_index_id(index_id)

    async def _index_dimension(self) -> int:
        if self._dimension is None:
            async with _errors("describe_index_stats"):
                stats = await self.index.describe_index_stats()
            if stats.metric not in (None, "cosine"):
                raise UpstreamError(
                    f"the Pinecone index uses the {stats.metric} metric; "
                    "remote::pinecone needs a cosine index")
            self._dimension = int(stats.dimension)
        return self._dimension

    async def _check(self, index_id: str) -> int:
        """The dimension, once the index is known to exist (its marker)."""
        dim = await self._index_dimension()
        ns = self._ns(index_id)
        if ns not in self._known:
            async with _errors("fetch"):
                got = await self.index.fetch(ids=[_MARKER], namespace=ns)
            if _MARKER not in got.vectors:
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            self._known.add(ns)
        return dim

    async def create_index(self, index_id: str, dimension: int) -> None:
        dim = await self._index_dimension()
        if dimension != dim:
            raise ConflictError(
                f"the Pinecone index holds {dim}-dimensional vectors, not {dimension}; "
                "use an embedding model of that dimension or another Pinecone index")
        ns = self._ns(index_id)
        async with _errors("upsert"):
            await self.index.upsert(
                vectors=[{"id": _MARKER, "values": [1.0] + [0.0] * (dim - 1),
                          "metadata": {"fnstack_marker": True}}],
                namespace=ns, show_progress=False)
        self._known.add(ns)

    async def delete_index(self, index_id: str) -> None:
        ns = self._ns(index_id)
        self._known.discard(ns)
        try:
            async with _errors("delete_namespace"):
                await self.index.delete_namespace(namespace=ns)
        except NotFoundError:
            pass  # absent: not an error

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        dim = await self._check(index_id)
        check_chunks(chunks, dim)
        for c in chunks:
            if not any(c.embedding):
                raise InvalidRequestError(
                    f"chunk {c.chunk_id!r} has a zero embedding; Pinecone refuses dense "
                    "vectors without a non-zero value", param="embedding")
        by_id = {c.chunk_id: c for c in chunks}
        vectors: list[dict[str, Any]] = []
        for c in by_id.values():
            metadata: dict[str, Any] = dict(c.attributes)
            metadata.update({_FILE: c.file_id, _CONTENT: c.content,
                             _ATTRS: json.dumps(c.attributes)})
            vectors.append({"id": c.chunk_id, "values": [float(v) for v in c.embedding],
                            "metadata": metadata})
        ns = self._ns(index_id)
        for start in range(0, len(vectors), _BATCH):
            async with _errors("upsert"):
                await self.index.upsert(vectors=vectors[start : start + _BATCH], namespace=ns,
                                        show_progress=False)

    async def delete_file(self, index_id: str, file_id: str) -> None:
        await self._check(index_id)
        async with _errors("delete"):
            await self.index.delete(filter={_FILE: {"$eq": file_id}},
                                    namespace=self._ns(index_id))

    async def query(
        self,
        index_id: str,
        *,
        mode: SearchMode,
        k: int,
        embedding: list[float] | None = None,
        text: str | None = None,
        filters: Filter | None = None,
    ) -> list[ScoredChunk]:
        dim = await self._check(index_id)
        check_query(mode=mode, k=k, embedding=embedding, text=text, dimension=dim,
                    modes=self.search_modes, provider="remote::pinecone", nonzero=True)
        assert embedding is not None
        pushed, exact = (None, True) if filters is None else mongo_filter(filters)
        # +1: the marker may be among the nearest; a widened filter asks for more.
        top_k = min(_MAX_TOP_K, k + 1 if exact else max(100, 20 * k))
        async with _errors("query"):
            found = await self.index.query(
                top_k=top_k, vector=[float(v) for v in embedding], namespace=self._ns(index_id),
                filter=pushed, include_metadata=True)
        out: list[ScoredChunk] = []
        for m in found.matches:
            if m.id == _MARKER:
                continue
            meta = m.metadata or {}
            attributes = json.loads(meta.get(_ATTRS, "{}"))
            if filters is not None and not matches(filters, attributes):
                continue
            out.append(ScoredChunk(chunk_id=m.id, file_id=str(meta.get(_FILE, "")),
                                   content=str(meta.get(_CONTENT, "")), attributes=attributes,
                                   score=float(m.score)))
        return out[:k]


async def create(config: PineconeConfig, ctx: ProviderContext) -> PineconeProvider:
    from pinecone import AsyncPinecone

    client = AsyncPinecone(api_key=config.api_key.get_secret_value(), timeout=config.timeout)
    index = await client.index(host=config.host)
    return PineconeProvider(config, client, index)


spec = ProviderSpec(
    api=Api.vector_io,
    provider_type="remote::pinecone",
    config_class=PineconeConfig,
    factory=create,
    description="A Pinecone index (one namespace per vector store); vector search only.",
    extras=("pinecone",),
)
