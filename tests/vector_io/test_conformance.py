"""One suite every vector IO provider passes (parametrized by tests/vector_io/conftest.py).

Capabilities are what each provider declares in ``search_modes``: a declared mode is
tested for its behaviour, an undeclared one for its clean refusal - nothing is skipped.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import TypeAdapter

from fnstack.api.vector_io import Chunk, Filter, VectorIOProvider, matches
from fnstack.errors import ConflictError, InvalidRequestError, NotFoundError
from tests.vector_io.conftest import Backend

DIM = 8


def vec(*weights: float) -> list[float]:
    """A DIM-dimensional vector with the given leading components."""
    return [*weights, *[0.0] * (DIM - len(weights))]


def chunk(cid: str, file_id: str, content: str, embedding: list[float],
          **attributes: Any) -> Chunk:
    return Chunk(chunk_id=cid, file_id=file_id, content=content, attributes=attributes,
                 embedding=embedding)


async def ids(provider: VectorIOProvider, index_id: str, **query: Any) -> list[str]:
    query.setdefault("k", 10)
    query.setdefault("mode", "vector")
    if query["mode"] == "vector":
        query.setdefault("embedding", vec(1.0))
    return [r.chunk_id for r in await provider.query(index_id, **query)]


@pytest.fixture
async def three(provider: VectorIOProvider, index_id: str) -> str:
    await provider.create_index(index_id, DIM)
    await provider.insert(index_id, [
        chunk("a:0", "a", "the quick brown fox", vec(1.0, 0.0)),
        chunk("b:0", "b", "a lazy dog sleeps", vec(0.8, 0.6)),
        chunk("c:0", "c", "foxes and dogs", vec(0.0, 1.0)),
    ])
    return index_id


def keyword(provider: VectorIOProvider) -> bool:
    return "keyword" in provider.search_modes


async def test_declares_search_modes(provider: VectorIOProvider) -> None:
    assert "vector" in provider.search_modes
    assert provider.search_modes <= {"vector", "keyword"}


async def test_vector_ranking_best_first(provider: VectorIOProvider, three: str) -> None:
    res = await provider.query(three, mode="vector", k=3, embedding=vec(1.0, 0.1))
    assert [r.chunk_id for r in res] == ["a:0", "b:0", "c:0"]
    assert res[0].file_id == "a" and res[0].content == "the quick brown fox"
    assert all(-1.0 - 1e-5 <= r.score <= 1.0 + 1e-5 for r in res)
    assert res[0].score > res[1].score > res[2].score
    # Cosine, not raw inner product: the query's length does not matter.
    res2 = await provider.query(three, mode="vector", k=3, embedding=vec(10.0, 1.0))
    assert math.isclose(res2[0].score, res[0].score, abs_tol=1e-3)
    assert math.isclose(res[0].score, 1.0 / math.sqrt(1.01), abs_tol=1e-3)
    assert await ids(provider, three, embedding=vec(0.0, 1.0), k=1) == ["c:0"]


async def test_insert_replaces_by_chunk_id(provider: VectorIOProvider, three: str) -> None:
    await provider.insert(three, [chunk("a:0", "a", "a zebra now", vec(0.0, 1.0), v=2)])
    res = await provider.query(three, mode="vector", k=10, embedding=vec(0.0, 1.0))
    assert sorted(r.chunk_id for r in res) == ["a:0", "b:0", "c:0"]  # no duplicate
    top = {r.chunk_id: r for r in res}["a:0"]
    assert top.content == "a zebra now" and top.attributes == {"v": 2}
    assert top.score > 0.99
    if keyword(provider):
        assert await ids(provider, three, mode="keyword", text="quick") == []
        assert await ids(provider, three, mode="keyword", text="zebra") == ["a:0"]
    # Re-inserting the same batch (a resumed ingestion) changes nothing.
    await provider.insert(three, [chunk("a:0", "a", "a zebra now", vec(0.0, 1.0), v=2)])
    assert len(await ids(provider, three)) == 3


async def test_delete_file(provider: VectorIOProvider, index_id: str) -> None:
    await provider.create_index(index_id, DIM)
    await provider.insert(index_id, [
        chunk(f"{f}:{n}", f, f"{f} part {n} text", vec(1.0, n / 10)) for f in "xy" for n in range(5)
    ])
    await provider.delete_file(index_id, "x")
    left = await ids(provider, index_id)
    assert sorted(left) == [f"y:{n}" for n in range(5)]
    if keyword(provider):
        assert all(c.startswith("y:") for c in
                   await ids(provider, index_id, mode="keyword", text="x y part text"))
    await provider.delete_file(index_id, "x")  # absent: not an error
    await provider.delete_file(index_id, "never-there")
    await provider.delete_file(index_id, "y")
    assert await ids(provider, index_id) == []


async def test_keyword_bm25(provider: VectorIOProvider, index_id: str) -> None:
    await provider.create_index(index_id, DIM)
    docs = [chunk(f"f:{n}", "f", f"common words here number{n} filler", vec(1.0))
            for n in range(8)]
    docs.append(chunk("f:rare", "f", "common words here platypus filler", vec(1.0)))
    docs.append(chunk("f:none", "f", "nothing relevant at all", vec(1.0)))
    await provider.insert(index_id, docs)
    if not keyword(provider):
        with pytest.raises(InvalidRequestError) as err:
            await provider.query(index_id, mode="keyword", k=5, text="platypus")
        assert err.value.code == "unsupported_search_mode"
        assert err.value.status == 400
        return
    res = await provider.query(index_id, mode="keyword", k=20, text="Platypus COMMON")
    # The rare term outweighs the common one (IDF), and chunks with neither are absent.
    assert res[0].chunk_id == "f:rare"
    assert "f:none" not in [r.chunk_id for r in res]
    assert len(res) == 9
    assert res[0].score > res[1].score > 0
    assert all(math.isclose(r.score, res[1].score, rel_tol=1e-6) for r in res[1:])
    # Term frequency counts, and punctuation is no query syntax.
    await provider.insert(index_id, [chunk("g:0", "g", "wombat wombat wombat filler", vec(1.0)),
                                     chunk("g:1", "g", "wombat filler filler filler", vec(1.0))])
    assert await ids(provider, index_id, mode="keyword", text='wombat" OR (*') == ["g:0", "g:1"]
    assert await ids(provider, index_id, mode="keyword", text="  ?! ") == []
    assert await ids(provider, index_id, mode="keyword", text="platypus", k=1) == ["f:rare"]


# --- filters: every operator, nesting, missing keys, numbers vs strings, booleans ---

ATTRS: dict[str, dict[str, Any]] = {
    "a": {"author": "ada", "year": 2020, "score": 1.5, "draft": False, "tag": "x"},
    "b": {"author": "bob", "year": 2021, "score": 2, "draft": True},
    "c": {"author": "cy", "year": "2022", "tag": "y"},
    "d": {},
}

FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"type": "eq", "key": "author", "value": "ada"}, {"a"}),
    ({"type": "ne", "key": "author", "value": "ada"}, {"b", "c"}),  # d lacks the key
    ({"type": "gt", "key": "year", "value": 2020}, {"b"}),  # c's year is a string
    ({"type": "gte", "key": "year", "value": 2020}, {"a", "b"}),
    ({"type": "lt", "key": "score", "value": 2}, {"a"}),
    ({"type": "lte", "key": "score", "value": 2}, {"a", "b"}),
    ({"type": "eq", "key": "score", "value": 2.0}, {"b"}),  # 2 == 2.0
    ({"type": "gt", "key": "score", "value": 1.49}, {"a", "b"}),
    ({"type": "in", "key": "author", "value": ["ada", "cy"]}, {"a", "c"}),
    ({"type": "nin", "key": "author", "value": ["ada"]}, {"b", "c"}),
    ({"type": "in", "key": "year", "value": [2021, 2022]}, {"b"}),
    ({"type": "eq", "key": "year", "value": "2022"}, {"c"}),
    ({"type": "eq", "key": "year", "value": 2022}, set()),
    ({"type": "gt", "key": "author", "value": "b"}, {"b", "c"}),  # strings order too
    ({"type": "lt", "key": "author", "value": 5}, set()),  # string vs number: false
    ({"type": "eq", "key": "draft", "value": False}, {"a"}),
    ({"type": "eq", "key": "draft", "value": True}, {"b"}),
    ({"type": "eq", "key": "draft", "value": 0}, set()),  # a boolean is not a number
    ({"type": "eq", "key": "missing", "value": 1}, set()),
    ({"type": "ne", "key": "missing", "value": 1}, set()),
    ({"type": "nin", "key": "missing", "value": [1]}, set()),
    ({"type": "and", "filters": [{"type": "eq", "key": "author", "value": "ada"},
                                 {"type": "gte", "key": "year", "value": 2020}]}, {"a"}),
    ({"type": "or", "filters": [{"type": "eq", "key": "author", "value": "bob"},
                                {"type": "eq", "key": "tag", "value": "y"}]}, {"b", "c"}),
    ({"type": "and", "filters": [
        {"type": "or", "filters": [{"type": "eq", "key": "tag", "value": "x"},
                                   {"type": "eq", "key": "tag", "value": "y"}]},
        {"type": "ne", "key": "author", "value": "cy"}]}, {"a"}),
    ({"type": "or", "filters": [
        {"type": "and", "filters": [{"type": "eq", "key": "draft", "value": True},
                                    {"type": "lt", "key": "year", "value": 3000}]},
        {"type": "in", "key": "tag", "value": ["y"]}]}, {"b", "c"}),
]

FILTER = TypeAdapter(Filter)


@pytest.fixture
async def attributed(provider: VectorIOProvider, index_id: str) -> str:
    await provider.create_index(index_id, DIM)
    await provider.insert(index_id, [
        chunk(f"{name}:0", name, f"shared text of {name}", vec(1.0, 0.1 * n), **attrs)
        for n, (name, attrs) in enumerate(ATTRS.items())
    ])
    return index_id


@pytest.mark.parametrize(("raw", "expected"), FILTERS, ids=[str(f[0]) for f in FILTERS])
async def test_filter(provider: VectorIOProvider, attributed: str, raw: dict[str, Any],
                      expected: set[str]) -> None:
    flt = FILTER.validate_python(raw)
    # The table agrees with the reference semantics (so it tests what the contract says).
    assert {n for n, a in ATTRS.items() if matches(flt, a)} == expected
    got = await provider.query(attributed, mode="vector", k=10, embedding=vec(1.0), filters=flt)
    assert {r.file_id for r in got} == expected
    if keyword(provider):
        got = await provider.query(attributed, mode="keyword", k=10, text="shared text",
                                   filters=flt)
        assert {r.file_id for r in got} == expected


async def test_attributes_round_trip(provider: VectorIOProvider, attributed: str) -> None:
    res = await provider.query(attributed, mode="vector", k=10, embedding=vec(1.0))
    got = {r.file_id: r.attributes for r in res}
    assert got == ATTRS
    assert got["a"]["draft"] is False and got["b"]["draft"] is True


async def test_filter_with_k_returns_k_best(provider: VectorIOProvider, index_id: str) -> None:
    await provider.create_index(index_id, DIM)
    await provider.insert(index_id, [
        chunk(f"f:{n}", "f", f"text {n}", vec(1.0, n / 100), n=n, even=n % 2 == 0)
        for n in range(60)
    ])
    flt = FILTER.validate_python({"type": "eq", "key": "even", "value": True})
    got = await ids(provider, index_id, k=5, filters=flt)
    assert got == ["f:0", "f:2", "f:4", "f:6", "f:8"]


async def test_k_bounds(provider: VectorIOProvider, three: str) -> None:
    assert len(await ids(provider, three, k=1)) == 1
    assert len(await ids(provider, three, k=1000)) == 3
    for k in (0, -1):
        with pytest.raises(InvalidRequestError):
            await provider.query(three, mode="vector", k=k, embedding=vec(1.0))


async def test_bad_queries_are_400(provider: VectorIOProvider, three: str) -> None:
    with pytest.raises(InvalidRequestError):  # wrong dimension
        await provider.query(three, mode="vector", k=3, embedding=[1.0, 0.0])
    with pytest.raises(InvalidRequestError):
        await provider.query(three, mode="vector", k=3)
    with pytest.raises(InvalidRequestError):
        await provider.insert(three, [chunk("z:0", "z", "t", [1.0, 2.0])])
    with pytest.raises(InvalidRequestError):
        await provider.insert(three, [chunk("z:0", "z", "t", vec(float("nan")))])
    assert len(await ids(provider, three)) == 3  # nothing half-written


async def test_empty_index(provider: VectorIOProvider, index_id: str) -> None:
    await provider.create_index(index_id, DIM)
    assert await ids(provider, index_id) == []
    if keyword(provider):
        assert await ids(provider, index_id, mode="keyword", text="anything") == []
    await provider.insert(index_id, [])
    await provider.delete_file(index_id, "nothing")
    assert await ids(provider, index_id) == []


async def test_create_index_idempotent_and_conflicting(provider: VectorIOProvider,
                                                       three: str) -> None:
    await provider.create_index(three, DIM)  # exists already: no-op, data kept
    assert len(await ids(provider, three)) == 3
    with pytest.raises(ConflictError):
        await provider.create_index(three, DIM * 2)


async def test_unknown_index(provider: VectorIOProvider, index_id: str) -> None:
    with pytest.raises(NotFoundError):
        await provider.query(index_id, mode="vector", k=3, embedding=vec(1.0))
    with pytest.raises(NotFoundError):
        await provider.insert(index_id, [chunk("a:0", "a", "t", vec(1.0))])
    with pytest.raises(NotFoundError):
        await provider.delete_file(index_id, "a")
    await provider.delete_index(index_id)  # absent: not an error


async def test_delete_index(provider: VectorIOProvider, three: str) -> None:
    await provider.delete_index(three)
    with pytest.raises(NotFoundError):
        await provider.query(three, mode="vector", k=3, embedding=vec(1.0))
    await provider.create_index(three, DIM)  # the id can be used again, empty
    assert await ids(provider, three) == []


async def test_persistence_across_restart(backend: Backend, index_id: str) -> None:
    first = await backend.open()
    await first.create_index(index_id, DIM)
    await first.insert(index_id, [
        chunk(f"f{n % 3}:{n}", f"f{n % 3}", f"document {n} about topic{n % 3}",
              vec(1.0, n / 50), n=n)
        for n in range(40)
    ])
    await first.delete_file(index_id, "f2")
    before = await first.query(index_id, mode="vector", k=5, embedding=vec(1.0, 0.3))
    await first.shutdown()

    second = await backend.open()
    after = await second.query(index_id, mode="vector", k=5, embedding=vec(1.0, 0.3))
    assert [r.chunk_id for r in after] == [r.chunk_id for r in before]
    assert after[0].attributes == before[0].attributes
    assert not any(r.file_id == "f2" for r in
                   await second.query(index_id, mode="vector", k=40, embedding=vec(1.0)))
    if keyword(second):
        assert len(await ids(second, index_id, mode="keyword", text="topic1", k=40)) == 13
    # The reopened index takes writes.
    await second.delete_file(index_id, "f1")
    await second.insert(index_id, [chunk("g:0", "g", "new", vec(0.0, 1.0))])
    assert (await ids(second, index_id, embedding=vec(0.0, 1.0), k=1)) == ["g:0"]
    assert len(await ids(second, index_id, k=100)) == 15
