"""``remote::s3vectors``: Amazon S3 Vectors through boto3's ``s3vectors`` client.

One fnstack index is one S3 Vectors index (cosine, float32) in the configured vector
bucket, named ``<index_prefix><slug>-<hash>`` (S3 Vectors allows 3-63 lowercase letters,
digits, '-' and '.'). A chunk is one vector keyed by its ``chunk_id`` (PutVectors
overwrites by key, so inserts are idempotent) with metadata:

- the chunk's attributes under their own names (filterable);
- ``fnstack_file_id`` (filterable: delete_file queries by it);
- ``fnstack_content`` and ``fnstack_attributes`` (the attributes as exact JSON: S3
  Vectors' numbers do not keep int vs float), declared non-filterable at CreateIndex so
  chunk text does not count against the 2 KB of filterable metadata.

**Keyword search: none.** S3 Vectors has no text index; this provider declares
``search_modes = {"vector"}`` and answers a keyword query with a 400
(``unsupported_search_mode``), so vector stores on it offer vector search only. (A BM25
side index would need a second store kept in step with every write; use
``inline::vector`` or ``remote::pgvector`` where keyword or hybrid search matters.)

Filters are pushed into QueryVectors: exactly where S3 Vectors' operators mean what
OpenAI's do ($ne/$nin get an ``$exists`` guard: a missing key is false), as a wider
filter where they cannot (S3 Vectors orders numbers only: a string range becomes
``$exists``). Every answer is then checked with the reference `matches` on the exact
attributes; a widened query asks for ``topK`` 100 (the service's maximum) to leave room.

Example run config::

    providers:
      vector_io:
        - provider_id: s3vectors
          provider_type: remote::s3vectors
          config:
            vector_bucket: ${env.FNSTACK_VECTOR_BUCKET}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.api.vector_io import Chunk, Filter, ScoredChunk, SearchMode, matches
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.inference._aws import create_client, map_aws_errors
from providers.vector_io._common import check_chunks, check_index_id, check_query, mongo_filter

__all__ = ["S3VectorsConfig", "S3VectorsProvider", "create", "spec"]

_FILE, _CONTENT, _ATTRS = "fnstack_file_id", "fnstack_content", "fnstack_attributes"
_MAX_TOP_K = 100  # QueryVectors' limit
_BATCH = 500  # PutVectors / DeleteVectors limit


class S3VectorsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vector_bucket: str = Field(min_length=3, max_length=63, description="The vector bucket")
    index_prefix: str = Field(default="fnstack-", pattern=r"^[a-z0-9][a-z0-9.-]{0,20}$")
    region: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    max_connections: int = Field(default=20, ge=1)

    @field_validator("region", "endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


def index_name(prefix: str, index_id: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", index_id.lower()).strip("-")
    digest = hashlib.sha256(index_id.encode()).hexdigest()[:10]
    return f"{prefix}{slug}"[: 63 - 11].rstrip("-.") + f"-{digest}"


def _classify(code: str, message: str, response: dict[str, Any]) -> FnstackError | None:
    if code == "NotFoundException":
        return NotFoundError(f"S3 Vectors: {message}", param="index_id")
    if code == "ConflictException":
        return ConflictError(f"S3 Vectors: {message}")
    return None


class S3VectorsProvider:
    search_modes: frozenset[SearchMode] = frozenset({"vector"})

    def __init__(self, config: S3VectorsConfig, client: Any) -> None:
        self.config = config
        self.client = client
        self._dims: dict[str, int] = {}

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.client.close)

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with map_aws_errors(f"S3 Vectors {operation}", _classify):
                result: dict[str, Any] = getattr(self.client, operation)(
                    vectorBucketName=self.config.vector_bucket, **kwargs)
                return result

        return await asyncio.to_thread(run)

    def _name(self, index_id: str) -> str:
        return index_name(self.config.index_prefix, check_index_id(index_id))

    async def _dimension(self, index_id: str) -> int:
        if index_id not in self._dims:
            got = await self._call("get_index", indexName=self._name(index_id))
            self._dims[index_id] = int(got["index"]["dimension"])
        return self._dims[index_id]

    async def create_index(self, index_id: str, dimension: int) -> None:
        if not 1 <= dimension <= 4096:
            raise InvalidRequestError("dimension must be 1-4096 for S3 Vectors",
                                      param="dimension")
        name = self._name(index_id)
        for _ in range(2):
            try:
                have = await self._dimension(index_id)
            except NotFoundError:
                try:
                    await self._call(
                        "create_index", indexName=name, dataType="float32",
                        dimension=dimension, distanceMetric="cosine",
                        metadataConfiguration={"nonFilterableMetadataKeys": [_CONTENT, _ATTRS]},
                    )
                except ConflictError:  # created meanwhile by another caller: compare
                    continue
                self._dims[index_id] = dimension
                return
            if have != dimension:
                raise ConflictError(
                    f"index {index_id!r} exists with dimension {have}, not {dimension}")
            return

    async def delete_index(self, index_id: str) -> None:
        self._dims.pop(index_id, None)
        with contextlib.suppress(NotFoundError):  # absent: not an error
            await self._call("delete_index", indexName=self._name(index_id))

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        dim = await self._dimension(index_id)
        check_chunks(chunks, dim)
        for c in chunks:
            if not any(c.embedding):
                raise InvalidRequestError(
                    f"chunk {c.chunk_id!r} has a zero embedding; S3 Vectors' cosine metric "
                    "refuses zero vectors", param="embedding")
        by_id = {c.chunk_id: c for c in chunks}
        vectors = [
            {"key": c.chunk_id, "data": {"float32": [float(v) for v in c.embedding]},
             "metadata": {**c.attributes, _FILE: c.file_id, _CONTENT: c.content,
                          _ATTRS: json.dumps(c.attributes)}}
            for c in by_id.values()
        ]
        name = self._name(index_id)
        for start in range(0, len(vectors), _BATCH):
            await self._call("put_vectors", indexName=name,
                             vectors=vectors[start : start + _BATCH])

    async def delete_file(self, index_id: str, file_id: str) -> None:
        dim = await self._dimension(index_id)
        name = self._name(index_id)
        probe = [1.0] + [0.0] * (dim - 1)  # any non-zero vector: the filter does the work
        while True:
            found = await self._call(
                "query_vectors", indexName=name, topK=_MAX_TOP_K,
                queryVector={"float32": probe}, filter={_FILE: {"$eq": file_id}})
            keys = [v["key"] for v in found["vectors"]]
            if not keys:
                return
            await self._call("delete_vectors", indexName=name, keys=keys)

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
        dim = await self._dimension(index_id)
        check_query(mode=mode, k=k, embedding=embedding, text=text, dimension=dim,
                    modes=self.search_modes, provider="remote::s3vectors", nonzero=True)
        assert embedding is not None
        args: dict[str, Any] = {}
        exact = True
        if filters is not None:
            args["filter"], exact = mongo_filter(filters)
        found = await self._call(
            "query_vectors", indexName=self._name(index_id),
            topK=min(k, _MAX_TOP_K) if exact else _MAX_TOP_K,
            queryVector={"float32": [float(v) for v in embedding]},
            returnMetadata=True, returnDistance=True, **args)
        out: list[ScoredChunk] = []
        for v in found["vectors"]:
            meta = v.get("metadata") or {}
            attributes = json.loads(meta.get(_ATTRS, "{}"))
            if filters is not None and not matches(filters, attributes):
                continue
            out.append(ScoredChunk(
                chunk_id=v["key"], file_id=str(meta.get(_FILE, "")),
                content=str(meta.get(_CONTENT, "")), attributes=attributes,
                score=1.0 - float(v.get("distance", 1.0))))
        return out[:k]


async def create(config: S3VectorsConfig, ctx: ProviderContext) -> S3VectorsProvider:
    return S3VectorsProvider(config, await create_client("s3vectors", config))


spec = ProviderSpec(
    api=Api.vector_io,
    provider_type="remote::s3vectors",
    config_class=S3VectorsConfig,
    factory=create,
    description="Amazon S3 Vectors (cosine, metadata filters); vector search only.",
    extras=("aws",),
)
