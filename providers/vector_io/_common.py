"""What every vector IO provider checks the same way: ids, query arguments, query terms."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from fnstack.api.vector_io import Chunk, CompoundFilter, Filter, SearchMode
from fnstack.errors import InvalidRequestError

__all__ = [
    "check_chunks", "check_index_id", "check_query", "mongo_filter", "terms", "unit",
]

# Index ids become folder names, table names and remote index names: keep them plain.
_INDEX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_TERM = re.compile(r"\w+", re.UNICODE)


def check_index_id(index_id: str) -> str:
    if not _INDEX_ID.match(index_id):
        raise InvalidRequestError(
            f"index id {index_id!r} must be 1-63 letters, digits, '_' or '-', "
            "starting with a letter or digit",
            param="index_id",
        )
    return index_id


def check_chunks(chunks: Iterable[Chunk], dimension: int) -> None:
    for chunk in chunks:
        if len(chunk.embedding) != dimension:
            raise InvalidRequestError(
                f"chunk {chunk.chunk_id!r} has an embedding of {len(chunk.embedding)} "
                f"dimensions; this index holds {dimension}",
                param="embedding",
            )
        if not all(math.isfinite(v) for v in chunk.embedding):
            raise InvalidRequestError(
                f"chunk {chunk.chunk_id!r} has a NaN or infinite embedding value",
                param="embedding",
            )


def check_query(
    *,
    mode: SearchMode,
    k: int,
    embedding: list[float] | None,
    text: str | None,
    dimension: int,
    modes: frozenset[SearchMode],
    provider: str,
    nonzero: bool = False,
) -> None:
    """Raise InvalidRequestError for a query this provider cannot answer as asked.

    ``nonzero``: the engine refuses a zero query vector (its cosine is undefined)."""
    if mode not in modes:
        raise InvalidRequestError(
            f"{provider} has no {mode} search; it answers {', '.join(sorted(modes))} "
            "(use search_mode vector with this vector store)",
            param="search_mode",
            code="unsupported_search_mode",
        )
    if k < 1:
        raise InvalidRequestError(f"k must be at least 1, got {k}", param="max_num_results")
    if mode == "vector":
        if embedding is None:
            raise InvalidRequestError("a vector query needs an embedding", param="embedding")
        if len(embedding) != dimension:
            raise InvalidRequestError(
                f"the query embedding has {len(embedding)} dimensions; "
                f"this index holds {dimension}",
                param="embedding",
            )
        if nonzero and not any(embedding):
            raise InvalidRequestError("the query embedding is a zero vector", param="embedding")
    elif text is None:
        raise InvalidRequestError("a keyword query needs text", param="query")


def terms(text: str) -> list[str]:
    """The words of a keyword query, lower-cased, without duplicates, in order."""
    return list(dict.fromkeys(t.lower() for t in _TERM.findall(text)))


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else list(vector)


def mongo_filter(flt: Filter) -> tuple[dict[str, Any], bool]:
    """The Mongo-style metadata filter of S3 Vectors and Pinecone for ``flt``: a superset
    of its matches, and whether it is exact.

    Their $ne/$nin also match a vector without the key (OpenAI's: false), so those get
    an ``$exists`` guard; their $gt/$gte/$lt/$lte take numbers only, so a string range
    widens to ``$exists``. The caller re-checks every answer with `matches`.
    """
    if isinstance(flt, CompoundFilter):
        parts = [mongo_filter(f) for f in flt.filters]
        return ({f"${flt.type}": [p for p, _ in parts]}, all(exact for _, exact in parts))
    key, want = flt.key, flt.value
    exists = {key: {"$exists": True}}
    if flt.type in ("in", "nin"):
        values = want if isinstance(want, list) else [want]
        if flt.type == "in":
            return ({key: {"$in": values}}, True) if values else (exists, False)
        return ({"$and": [exists, {key: {"$nin": values}}]} if values else exists), True
    if isinstance(want, list):  # eq/ne against a list: no attribute equals a list
        return exists, flt.type == "ne"
    if flt.type == "eq":
        return {key: {"$eq": want}}, True
    if flt.type == "ne":
        return {"$and": [exists, {key: {"$ne": want}}]}, True
    if isinstance(want, int | float) and not isinstance(want, bool):
        return {key: {f"${flt.type}": want}}, True
    return exists, False  # strings (and booleans) are not ordered there
