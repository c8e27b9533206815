"""inline::vector specifics: the HNSW paths, a stale graph, the blob-store copy."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from fnstack.api.vector_io import Chunk, Filter, matches
from fnstack.spec import ProviderContext
from fnstack.storage import KVSqliteConfig, LocalFSConfig, StorageConfig, StoreRef, Stores
from tests.vector_io.conftest import open_spec

DIM = 16
FILTER = TypeAdapter(Filter)


def _chunks(n: int, seed: int = 0) -> list[Chunk]:
    rng = random.Random(seed)
    return [
        Chunk(chunk_id=f"f{i % 10}:{i}", file_id=f"f{i % 10}", content=f"chunk {i}",
              attributes={"n": i, "third": i % 3 == 0},
              embedding=[rng.gauss(0, 1) for _ in range(DIM)])
        for i in range(n)
    ]


def _exact(chunks: list[Chunk], q: list[float], k: int, flt: Any = None) -> list[str]:
    def cos(a: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, q, strict=True))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in q) ** 0.5)

    ok = [c for c in chunks if matches(flt, c.attributes)]
    return [c.chunk_id for c in sorted(ok, key=lambda c: -cos(c.embedding))[:k]]


async def _inline(tmp: Path, **config: Any) -> Any:
    # ef above the index's size: HNSW then visits every node, so small tests are exact.
    config = {"root": str(tmp / "vio"), "expansion_search": 1024, **config}
    ctx = ProviderContext(provider_id="inline", cache_dir=tmp)
    return await open_spec("inline::vector", config, ctx)


async def test_filtered_paths_agree_with_exact(tmp_path: Path) -> None:
    chunks = _chunks(600)
    flt = FILTER.validate_python({"type": "eq", "key": "third", "value": True})
    rng = random.Random(1)
    queries = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(10)]
    # Default: 200 matches <= exact_below, so filtered queries are exact (numpy).
    p = await _inline(tmp_path / "exact")
    await p.create_index("vs", DIM)
    await p.insert("vs", chunks)
    for q in queries:
        got = await p.query("vs", mode="vector", k=10, embedding=q, filters=flt)
        assert [r.chunk_id for r in got] == _exact(chunks, q, 10, flt)
    await p.shutdown()
    # exact_below=0: the oversampled HNSW path; approximate, so judged by recall.
    p = await _inline(tmp_path / "hnsw", exact_below=0, expansion_search=64)
    await p.create_index("vs", DIM)
    await p.insert("vs", chunks)
    hits = 0
    for q in queries:
        got = await p.query("vs", mode="vector", k=10, embedding=q, filters=flt)
        assert len(got) == 10 and all(r.attributes["third"] is True for r in got)
        assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
        hits += len({r.chunk_id for r in got} & set(_exact(chunks, q, 10, flt)))
        unfiltered = await p.query("vs", mode="vector", k=10, embedding=q)
        hits += len({r.chunk_id for r in unfiltered} & set(_exact(chunks, q, 10)))
    assert hits / 200 >= 0.95
    await p.shutdown()


async def test_a_stale_graph_is_rebuilt(tmp_path: Path) -> None:
    chunks = _chunks(100)
    p = await _inline(tmp_path)
    await p.create_index("vs", DIM)
    await p.insert("vs", chunks)
    await p.shutdown()
    # As if the process died between the SQLite commit and the graph's save.
    (tmp_path / "vio" / "vs" / "vectors.gen").write_text("0")
    p = await _inline(tmp_path)
    q = chunks[7].embedding
    assert [r.chunk_id for r in await p.query("vs", mode="vector", k=3, embedding=q)] == \
        _exact(chunks, q, 3)
    await p.shutdown()
    assert (tmp_path / "vio" / "vs" / "vectors.gen").read_text().startswith("g1-")


async def test_concurrent_writes_and_reads(tmp_path: Path) -> None:
    chunks = _chunks(200)
    p = await _inline(tmp_path)
    await p.create_index("vs", DIM)
    await asyncio.gather(
        *(p.insert("vs", chunks[i : i + 20]) for i in range(0, 200, 20)),
        *(p.query("vs", mode="keyword", k=5, text="chunk") for _ in range(10)),
    )
    assert len(await p.query("vs", mode="vector", k=500, embedding=chunks[0].embedding)) == 200
    await p.shutdown()


async def test_blob_store_copy_is_shared_and_pruned(tmp_path: Path) -> None:
    stores = Stores(StorageConfig(
        backends={"b": LocalFSConfig(type="blob_localfs", root=str(tmp_path / "blobs"))},
        stores={"vio": StoreRef(backend="b", prefix="vio/")},
    ))
    ctx = ProviderContext(provider_id="inline", cache_dir=tmp_path, stores=stores)

    async def function(name: str) -> Any:  # one Lambda instance: its own /tmp
        config = {"root": str(tmp_path / name), "blob_store": "vio", "sync_interval_s": 0}
        return await open_spec("inline::vector", config, ctx)

    writer, reader = await function("writer"), await function("reader")
    chunks = _chunks(30)
    await writer.create_index("vs", DIM)
    await writer.insert("vs", chunks[:20])
    q = chunks[25].embedding
    assert len(await reader.query("vs", mode="vector", k=100, embedding=q)) == 20
    await writer.insert("vs", chunks[20:])
    await writer.delete_file("vs", "f0")
    got = await reader.query("vs", mode="vector", k=100, embedding=q)  # takes the new generation
    assert len(got) == 27 and got[0].chunk_id == chunks[25].chunk_id
    keys = sorted(i.key.split("-")[0] for i in await stores.blob("vio").list("vs/"))
    assert keys == ["vs/g3", "vs/g3", "vs/manifest.json"]  # older generations pruned
    await reader.delete_index("vs")
    assert await stores.blob("vio").list("vs/") == []
    await writer.shutdown()
    await reader.shutdown()
    await stores.close()


async def test_concurrent_writers_with_a_manifest_store(tmp_path: Path) -> None:
    """Two functions ingesting into one index at once: with the kv manifest store a
    writer that loses the race takes the other's generation and applies its change
    again, so no write is lost."""
    stores = Stores(StorageConfig(
        backends={"b": LocalFSConfig(type="blob_localfs", root=str(tmp_path / "blobs")),
                  "kv": KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db"))},
        stores={"vio": StoreRef(backend="b", prefix="vio/"),
                "ptr": StoreRef(backend="kv", namespace="vio")},
    ))
    ctx = ProviderContext(provider_id="inline", cache_dir=tmp_path, stores=stores)

    async def function(name: str) -> Any:
        config = {"root": str(tmp_path / name), "blob_store": "vio", "manifest_store": "ptr",
                  "sync_interval_s": 0, "write_attempts": 50}
        return await open_spec("inline::vector", config, ctx)

    a, b = await function("a"), await function("b")
    await a.create_index("vs", DIM)
    await b.create_index("vs", DIM)  # exists: no-op on the shared index
    chunks = _chunks(80)
    await asyncio.gather(*(
        (a if i % 2 else b).insert("vs", chunks[i * 10 : i * 10 + 10]) for i in range(8)))
    for p in (a, b):
        got = await p.query("vs", mode="vector", k=100, embedding=chunks[0].embedding)
        assert len(got) == 80
    keys = [i.key for i in await stores.blob("vio").list("vs/")]
    assert len(keys) == 2  # one generation's two files; losers cleaned up their uploads
    await a.shutdown()
    await b.shutdown()
    await stores.close()


async def test_a_crash_before_the_graph_is_saved_loses_nothing(tmp_path: Path) -> None:
    chunks = _chunks(120)
    first = await _inline(tmp_path)  # saves its graph at most every 30 s
    await first.create_index("vs", DIM)
    await first.insert("vs", chunks[:60])
    await first.insert("vs", chunks[60:])
    await first.delete_file("vs", "f3")
    # No shutdown: the process "dies" here; SQLite has every write, the graph file not.
    second = await _inline(tmp_path)
    q = chunks[5].embedding
    live = [c for c in chunks if c.file_id != "f3"]
    got = await second.query("vs", mode="vector", k=10, embedding=q)
    assert [r.chunk_id for r in got] == _exact(live, q, 10)
    await second.shutdown()
    await first.shutdown()
