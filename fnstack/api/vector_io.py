"""Vector IO: the provider contract behind vector stores (chunks in, scored chunks out).

A vector store (OpenAI's ``/v1/vector_stores``) is one *index* in one vector IO
provider. The vector stores service owns files, parsing, chunking and embedding; a
provider only stores chunks with their embeddings and searches them:

- ``vector`` search: the ``k`` chunks nearest to a query embedding (cosine similarity,
  higher is better, in [-1, 1]);
- ``keyword`` search: BM25 over the chunks' text (higher is better, unbounded);
- both filtered by the chunk attributes with OpenAI's filter grammar.

Hybrid search (reciprocal rank fusion or weighted) is done by the service on top of the
two, so every provider that implements both supports it.

Filters: https://platform.openai.com/docs/api-reference/vector-stores/search
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.common import ProviderModel

__all__ = [
    "AttributeValue",
    "Chunk",
    "ComparisonFilter",
    "CompoundFilter",
    "Filter",
    "ScoredChunk",
    "SearchMode",
    "VectorIOProvider",
    "matches",
]

# What a file's `attributes` may hold (OpenAI: strings, numbers, booleans).
AttributeValue = str | int | float | bool
SearchMode = Literal["vector", "keyword"]


class ComparisonFilter(BaseModel):
    """``{"type": "eq", "key": "author", "value": "ada"}``; ``in``/``nin`` take a list."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    key: str = Field(min_length=1)
    value: AttributeValue | list[AttributeValue]


class CompoundFilter(BaseModel):
    """``{"type": "and", "filters": [...]}``: comparison or compound filters."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["and", "or"]
    filters: list[Filter] = Field(min_length=1)


Filter = Annotated[ComparisonFilter | CompoundFilter, Field(discriminator="type")]
CompoundFilter.model_rebuild()


class Chunk(BaseModel):
    """One piece of one file, as stored in an index."""

    # Unique in its index; the service makes it f"{file_id}:{n}".
    chunk_id: str
    file_id: str
    content: str
    # The file's attributes (what filters test) plus the service's own keys
    # (filename, chunk index, token count) under names starting with "_".
    attributes: dict[str, AttributeValue] = {}
    embedding: list[float]


class ScoredChunk(BaseModel):
    chunk_id: str
    file_id: str
    content: str
    attributes: dict[str, AttributeValue] = {}
    score: float


class VectorIOProvider(Protocol):
    """What a vector IO provider implements. Raise `fnstack.errors` types only.

    Every method is idempotent where it can be: inserting a chunk id that exists
    replaces it (a resumed ingestion never duplicates), deleting what is absent is not
    an error. An index outlives the process (persistence is part of the contract).
    """

    # The search modes this provider answers. A query in any other mode raises
    # InvalidRequestError (code "unsupported_search_mode"), never a 500; the service
    # reads this to refuse hybrid search where keyword search is missing.
    search_modes: frozenset[SearchMode]

    async def list_models(self) -> list[ProviderModel]: ...

    async def create_index(self, index_id: str, dimension: int) -> None:
        """Create an empty index for vectors of ``dimension`` (no-op if it exists)."""
        ...

    async def delete_index(self, index_id: str) -> None: ...

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        """Add or replace chunks (by ``chunk_id``)."""
        ...

    async def delete_file(self, index_id: str, file_id: str) -> None:
        """Remove every chunk of ``file_id``."""
        ...

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
        """The best ``k`` chunks, best first: by ``embedding`` (mode vector) or by BM25
        on ``text`` (mode keyword), among those matching ``filters``."""
        ...

    async def shutdown(self) -> None: ...


def matches(flt: Filter | None, attributes: dict[str, Any]) -> bool:
    """The reference semantics of a filter, for providers that filter in Python.

    A comparison on a missing key is false (``ne``/``nin`` included); ordering
    comparisons between a number and a string are false, never an error."""
    if flt is None:
        return True
    if isinstance(flt, CompoundFilter):
        results = (matches(f, attributes) for f in flt.filters)
        return all(results) if flt.type == "and" else any(results)
    if flt.key not in attributes:
        return False
    have = attributes[flt.key]
    want = flt.value
    if flt.type in ("in", "nin"):
        values = want if isinstance(want, list) else [want]
        found = any(_equal(have, v) for v in values)
        return found if flt.type == "in" else not found
    if flt.type == "eq":
        return _equal(have, want)
    if flt.type == "ne":
        return not _equal(have, want)
    if isinstance(want, list) or not _comparable(have, want):
        return False
    a: Any = have
    if flt.type == "gt":
        return bool(a > want)
    if flt.type == "gte":
        return bool(a >= want)
    if flt.type == "lt":
        return bool(a < want)
    return bool(a <= want)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _comparable(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))
