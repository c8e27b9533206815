"""``inline::vector``: the embedded vector IO provider (local server and Lambda functions).

One index is one folder holding two files (the engine choice and its figures are in
docs/vector_io.md):

- ``chunks.sqlite``: the source of truth. Chunks with their text, attributes (JSON) and
  float32 embeddings, and an FTS5 table over the text whose ``bm25()`` ranks keyword
  queries (Okapi BM25, k1=1.2, b=0.75). Filters become SQL over ``json_each``, typed as
  OpenAI's reference semantics say (`fnstack.api.vector_io.matches`).
- ``vectors.usearch``: a usearch HNSW graph over the embeddings, keyed by the chunk's
  SQLite rowid - a derived structure. ``vectors.gen`` names the SQLite generation it was
  saved at; on open a graph of another generation is rebuilt from SQLite, so a crash
  between the two writes costs a rebuild, never a wrong answer.

Filtered vector queries take the exact path (numpy over the matching rows' embeddings)
when at most ``exact_below`` chunks match, otherwise HNSW with an oversampled ``k``
post-filtered by the matching rowids.

With ``blob_store`` set (S3 on AWS), the folder is a cache and the blob store holds the
index: every write uploads ``g<generation>.sqlite`` and ``g<generation>.usearch`` and
then ``manifest.json`` naming them, so a reader never sees half an index; a function
that opens an index (cold start), or finds the manifest moved on (checked at most every
``sync_interval_s``), downloads the generation the manifest names. One writer per index
at a time (the ingestion worker), as the vector stores service arranges.

Example run config::

    providers:
      vector_io:
        - provider_id: inline
          provider_type: inline::vector
          config:
            root: ${env.FNSTACK_HOME:=~/.fnstack}/local/vector_io
            # on AWS: root: /tmp/vector_io and blob_store: vector_io (a store in storage.stores)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from fnstack.api.vector_io import (
    Chunk,
    CompoundFilter,
    Filter,
    ScoredChunk,
    SearchMode,
)
from fnstack.errors import (
    ConfigError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.vector_io._common import check_chunks, check_index_id, check_query, terms

if TYPE_CHECKING:
    from fnstack.storage.base import BlobStore

__all__ = ["InlineVectorIOConfig", "InlineVectorIOProvider", "create", "spec"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: it keys the HNSW graph
    chunk_id TEXT NOT NULL UNIQUE,
    file_id TEXT NOT NULL,
    content TEXT NOT NULL,
    attributes TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5 (
    content, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO fts (fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
"""


class InlineVectorIOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        default="~/.fnstack/local/vector_io",
        description="Folder of the indexes (a cache of the blob store when blob_store is set)",
    )
    blob_store: str | None = Field(
        default=None, description="Blob store (storage.stores) that holds the indexes, e.g. S3"
    )
    sync_interval_s: float = Field(
        default=2.0, ge=0, description="How often a reader checks the blob store for new writes"
    )
    connectivity: int = Field(default=16, ge=4, le=64, description="HNSW M")
    expansion_add: int = Field(default=128, ge=8, description="HNSW efConstruction")
    expansion_search: int = Field(default=64, ge=8, description="HNSW ef at query time")
    exact_below: int = Field(
        default=20_000, ge=0, description="Filtered queries matching at most this many run exact"
    )


class _Index:
    """One open index. Blocking: called in a worker thread, one call at a time (the lock)."""

    def __init__(self, folder: Path, config: InlineVectorIOConfig) -> None:
        self.folder = folder
        self.config = config
        self.db = sqlite3.connect(folder / "chunks.sqlite", check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.dimension = int(self._meta("dimension") or 0)
        self.graph: Any = None
        self.graph_gen = -1
        self.lock = asyncio.Lock()
        self.synced_at = time.monotonic()

    # --- state ---

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def generation(self) -> int:
        return int(self._meta("generation") or 0)

    def init(self, dimension: int) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?)", (dimension,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        self.dimension = int(self._meta("dimension") or 0)

    def _new_graph(self) -> Any:
        from usearch.index import Index

        return Index(
            ndim=self.dimension,
            metric="cos",
            dtype="f32",
            connectivity=self.config.connectivity,
            expansion_add=self.config.expansion_add,
            expansion_search=self.config.expansion_search,
        )

    def ensure_graph(self) -> Any:
        """The HNSW graph of the current SQLite generation: loaded, or rebuilt and saved."""
        import numpy as np

        gen = self.generation()
        if self.graph is not None and self.graph_gen == gen:
            return self.graph
        graph = self._new_graph()
        path, marker = self.folder / "vectors.usearch", self.folder / "vectors.gen"
        if path.is_file() and marker.is_file() and marker.read_text().strip() == str(gen):
            graph.load(str(path))
        else:  # absent or stale (a crash between the two writes): rebuild from SQLite
            rows = self.db.execute("SELECT id, embedding FROM chunks").fetchall()
            if rows:
                keys = np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                graph.add(keys, vecs.reshape(len(rows), self.dimension))
            self.graph = graph
            self._save_graph(gen)
        self.graph, self.graph_gen = graph, gen
        return graph

    def _save_graph(self, gen: int) -> None:
        tmp = self.folder / "vectors.usearch.tmp"
        self.graph.save(str(tmp))
        os.replace(tmp, self.folder / "vectors.usearch")
        (self.folder / "vectors.gen").write_text(str(gen))
        self.graph_gen = gen

    # --- writes ---

    def insert(self, chunks: list[Chunk]) -> None:
        import numpy as np

        graph = self.ensure_graph()
        by_id = {c.chunk_id: c for c in chunks}  # the last of duplicate ids wins
        ids = list(by_id)
        old: list[int] = []
        new: list[int] = []
        vecs = np.array([by_id[i].embedding for i in ids], dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        with self.db:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                old += [r[0] for r in self.db.execute(
                    f"SELECT id FROM chunks WHERE chunk_id IN ({marks})", part)]
                self.db.execute(f"DELETE FROM chunks WHERE chunk_id IN ({marks})", part)
            for i, cid in enumerate(ids):
                c = by_id[cid]
                cur = self.db.execute(
                    "INSERT INTO chunks (chunk_id, file_id, content, attributes, embedding) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (cid, c.file_id, c.content, json.dumps(c.attributes), vecs[i].tobytes()),
                )
                new.append(int(cur.lastrowid or 0))
            gen = self._bump()
        for key in old:
            graph.remove(key)
        if new:
            graph.add(np.array(new, dtype=np.uint64), vecs)
        self._save_graph(gen)

    def delete_file(self, file_id: str) -> None:
        graph = self.ensure_graph()
        with self.db:
            old = [r[0] for r in self.db.execute(
                "SELECT id FROM chunks WHERE file_id = ?", (file_id,))]
            if not old:
                return
            self.db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
            gen = self._bump()
        for key in old:
            graph.remove(key)
        self._save_graph(gen)

    def _bump(self) -> int:
        gen = self.generation() + 1
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen),))
        return gen

    # --- reads ---

    def vector_query(self, embedding: list[float], k: int, flt: Filter | None) -> list[ScoredChunk]:
        import numpy as np

        q = np.asarray(embedding, dtype=np.float32)
        norm = float(np.linalg.norm(q))
        q = q / norm if norm > 0 else q
        graph = self.ensure_graph()
        total = len(graph)
        if total == 0:
            return []
        if flt is None:
            found = graph.search(q, min(k, total))
            return self._rows([int(key) for key in found.keys],
                              [1.0 - float(d) for d in found.distances])
        where, params = filter_sql(flt)
        allowed = [r[0] for r in self.db.execute(
            f"SELECT id FROM chunks c WHERE {where}", params)]
        if not allowed:
            return []
        if len(allowed) <= self.config.exact_below:
            rows = []
            for start in range(0, len(allowed), 900):
                part = allowed[start : start + 900]
                rows += self.db.execute(
                    f"SELECT id, embedding FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            sims = mat.reshape(len(rows), self.dimension) @ q
            top = np.argsort(-sims, kind="stable")[:k]
            return self._rows([rows[i][0] for i in top], [float(sims[i]) for i in top])
        # Many match: HNSW with k oversampled by the inverse selectivity, widened until
        # k matching chunks come back or the whole graph has been asked.
        ok = set(allowed)
        count = min(total, k * max(2, 2 * total // len(allowed)))
        while True:
            found = graph.search(q, count)
            keys = [(int(key), 1.0 - float(d))
                    for key, d in zip(found.keys, found.distances, strict=True) if int(key) in ok]
            if len(keys) >= k or count >= total:
                keys = keys[:k]
                return self._rows([key for key, _ in keys], [s for _, s in keys])
            count = min(total, count * 4)

    def keyword_query(self, text: str, k: int, flt: Filter | None) -> list[ScoredChunk]:
        words = terms(text)
        if not words:
            return []
        # Each word a quoted FTS5 string (no query syntax from users), OR-ed: BM25 sums
        # the words' weights, so a chunk need not hold every word to rank.
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        where, params = ("1", []) if flt is None else filter_sql(flt)
        rows = self.db.execute(
            "SELECT c.chunk_id, c.file_id, c.content, c.attributes, -bm25(fts) AS score "
            f"FROM fts JOIN chunks c ON c.id = fts.rowid WHERE fts MATCH ? AND {where} "
            "ORDER BY bm25(fts), c.id LIMIT ?",
            [match, *params, k],
        ).fetchall()
        return [
            ScoredChunk(chunk_id=r[0], file_id=r[1], content=r[2],
                        attributes=json.loads(r[3]), score=float(r[4]))
            for r in rows
        ]

    def _rows(self, ids: list[int], scores: list[float]) -> list[ScoredChunk]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        by_id = {r[0]: r for r in self.db.execute(
            f"SELECT id, chunk_id, file_id, content, attributes FROM chunks WHERE id IN ({marks})",
            ids)}
        return [
            ScoredChunk(chunk_id=r[1], file_id=r[2], content=r[3],
                        attributes=json.loads(r[4]), score=s)
            for i, s in zip(ids, scores, strict=True)
            if (r := by_id.get(i)) is not None
        ]

    def close(self) -> None:
        self.db.close()


# --- filters as SQL over the attributes JSON (OpenAI's reference semantics) ---

_NUMBER = "j.type IN ('integer', 'real')"


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _equals(v: object, params: list[Any]) -> str:
    if isinstance(v, bool):
        return "j.type = 'true'" if v else "j.type = 'false'"
    if _is_number(v):
        params.append(v)
        return f"({_NUMBER} AND j.value = ?)"
    if isinstance(v, str):
        params.append(v)
        return "(j.type = 'text' AND j.value = ?)"
    return "0"  # a list never equals a scalar attribute


def filter_sql(flt: Filter) -> tuple[str, list[Any]]:
    """A WHERE clause over ``chunks c`` true exactly where `matches` is."""
    if isinstance(flt, CompoundFilter):
        parts = [filter_sql(f) for f in flt.filters]
        glue = " AND " if flt.type == "and" else " OR "
        return "(" + glue.join(p for p, _ in parts) + ")", [x for _, ps in parts for x in ps]
    params: list[Any] = [flt.key]
    want = flt.value
    if flt.type in ("in", "nin"):
        values = want if isinstance(want, list) else [want]
        cond = " OR ".join(_equals(v, params) for v in values) or "0"
        cond = cond if flt.type == "in" else f"NOT ({cond})"
    elif flt.type == "eq":
        cond = _equals(want, params)
    elif flt.type == "ne":
        cond = f"NOT {_equals(want, params)}"
    else:
        op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[flt.type]
        if _is_number(want):
            cond = f"({_NUMBER} AND j.value {op} ?)"
        elif isinstance(want, str):
            cond = f"(j.type = 'text' AND j.value {op} ?)"
        else:  # booleans and lists have no order
            cond = "0"
        if cond != "0":
            params.append(want)
    # A missing key is false for every operator (ne and nin included): EXISTS.
    return f"EXISTS (SELECT 1 FROM json_each(c.attributes) j WHERE j.key = ? AND {cond})", params


class InlineVectorIOProvider:
    search_modes: frozenset[SearchMode] = frozenset({"vector", "keyword"})

    def __init__(
        self, config: InlineVectorIOConfig, root: Path, blobs: BlobStore | None
    ) -> None:
        self.config = config
        self.root = root
        self.blobs = blobs
        self._open: dict[str, _Index] = {}
        self._opening = asyncio.Lock()

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def create_index(self, index_id: str, dimension: int) -> None:
        check_index_id(index_id)
        if dimension < 1:
            raise InvalidRequestError("dimension must be at least 1", param="dimension")
        index = await self._get(index_id, create=True)
        async with index.lock:
            if index.dimension == 0:
                await asyncio.to_thread(index.init, dimension)
                await self._publish(index_id, index)
            elif index.dimension != dimension:
                raise ConflictError(
                    f"index {index_id!r} exists with dimension {index.dimension}, "
                    f"not {dimension}"
                )

    async def delete_index(self, index_id: str) -> None:
        check_index_id(index_id)
        async with self._opening:
            index = self._open.pop(index_id, None)
        if index is not None:
            async with index.lock:
                await asyncio.to_thread(index.close)
        await asyncio.to_thread(shutil.rmtree, self.root / index_id, True)
        if self.blobs is not None:
            for info in await self.blobs.list(f"{index_id}/"):
                await self.blobs.delete(info.key)

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        index = await self._get(index_id)
        check_chunks(chunks, index.dimension)
        if not chunks:
            return
        async with index.lock:
            await self._refresh(index_id, index, force=True)
            await asyncio.to_thread(index.insert, chunks)
            await self._publish(index_id, index)

    async def delete_file(self, index_id: str, file_id: str) -> None:
        index = await self._get(index_id)
        async with index.lock:
            await self._refresh(index_id, index, force=True)
            before = index.generation()
            await asyncio.to_thread(index.delete_file, file_id)
            if index.generation() != before:
                await self._publish(index_id, index)

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
        index = await self._get(index_id)
        check_query(mode=mode, k=k, embedding=embedding, text=text, dimension=index.dimension,
                    modes=self.search_modes, provider="inline::vector")
        async with index.lock:
            await self._refresh(index_id, index)
            if mode == "vector":
                assert embedding is not None
                return await asyncio.to_thread(index.vector_query, embedding, k, filters)
            assert text is not None
            return await asyncio.to_thread(index.keyword_query, text, k, filters)

    async def shutdown(self) -> None:
        async with self._opening:
            for index in self._open.values():
                async with index.lock:
                    index.close()
            self._open.clear()

    # --- opening, and the blob store copy ---

    async def _get(self, index_id: str, *, create: bool = False) -> _Index:
        check_index_id(index_id)
        async with self._opening:
            index = self._open.get(index_id)
            if index is not None:
                return index
            folder = self.root / index_id
            manifest = await self._manifest(index_id) if self.blobs is not None else None
            if manifest is not None:
                await self._download(index_id, folder, manifest)
            elif not (folder / "chunks.sqlite").is_file() and not create:
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            index = await asyncio.to_thread(_Index, folder, self.config)
            if index.dimension == 0 and not create:  # a half-created folder
                await asyncio.to_thread(index.close)
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            self._open[index_id] = index
            return index

    async def _manifest(self, index_id: str) -> dict[str, Any] | None:
        assert self.blobs is not None
        try:
            data: dict[str, Any] = json.loads(await self.blobs.get(f"{index_id}/manifest.json"))
        except NotFoundError:
            return None
        return data

    async def _refresh(self, index_id: str, index: _Index, *, force: bool = False) -> None:
        """Take a newer generation another function wrote (blob store mode only)."""
        if self.blobs is None:
            return
        now = time.monotonic()
        if not force and now - index.synced_at < self.config.sync_interval_s:
            return
        index.synced_at = now
        manifest = await self._manifest(index_id)
        if manifest is None:
            raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
        if int(manifest["generation"]) == await asyncio.to_thread(index.generation):
            return
        await asyncio.to_thread(index.close)
        await self._download(index_id, index.folder, manifest)
        fresh = await asyncio.to_thread(_Index, index.folder, self.config)
        index.db, index.dimension, index.graph, index.graph_gen = (
            fresh.db, fresh.dimension, None, -1)

    async def _download(self, index_id: str, folder: Path, manifest: dict[str, Any]) -> None:
        for _ in range(3):
            try:
                return await self._download_generation(index_id, folder, manifest)
            except NotFoundError:
                # A writer published a newer generation and dropped this one while we
                # read it: follow the manifest again.
                fresh = await self._manifest(index_id)
                if fresh is None:
                    raise NotFoundError(
                        f"vector index {index_id!r} not found", param="index_id"
                    ) from None
                manifest = fresh
        raise ServiceUnavailableError(
            f"vector index {index_id!r} changed three times while loading; retry"
        )

    async def _download_generation(
        self, index_id: str, folder: Path, manifest: dict[str, Any]
    ) -> None:
        assert self.blobs is not None
        gen = int(manifest["generation"])
        if await asyncio.to_thread(_local_generation, folder) == gen:
            return
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        for name, target in (("sqlite", "chunks.sqlite"), ("usearch", "vectors.usearch")):
            tmp = folder / f"{target}.download"
            out = await asyncio.to_thread(tmp.open, "wb")
            try:
                async for part in await self.blobs.stream(f"{index_id}/g{gen}.{name}"):
                    await asyncio.to_thread(out.write, part)
            finally:
                await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, tmp, folder / target)
        await asyncio.to_thread((folder / "vectors.gen").write_text, str(gen))

    async def _publish(self, index_id: str, index: _Index) -> None:
        """Upload this generation, then point the manifest at it, then drop older ones."""
        if self.blobs is None:
            return
        gen = await asyncio.to_thread(index.generation)
        await asyncio.to_thread(index.ensure_graph)
        for name, source in (("sqlite", "chunks.sqlite"), ("usearch", "vectors.usearch")):
            await self.blobs.put(f"{index_id}/g{gen}.{name}", _read_file(index.folder / source))
        manifest = {"generation": gen, "dimension": index.dimension}
        await self.blobs.put(f"{index_id}/manifest.json", json.dumps(manifest).encode(),
                             content_type="application/json")
        keep = {f"{index_id}/g{gen}.sqlite", f"{index_id}/g{gen}.usearch",
                f"{index_id}/manifest.json"}
        for info in await self.blobs.list(f"{index_id}/"):
            if info.key not in keep:
                await self.blobs.delete(info.key)


def _local_generation(folder: Path) -> int | None:
    if not (folder / "chunks.sqlite").is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(folder / "chunks.sqlite")) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    except sqlite3.Error:  # a half-written or foreign file: download again
        return None
    return None if row is None else int(row[0])


async def _read_file(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while part := await asyncio.to_thread(f.read, size):
            yield part


def _make_root(root: str) -> Path:
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


async def create(config: InlineVectorIOConfig, ctx: ProviderContext) -> InlineVectorIOProvider:
    try:
        import usearch.index  # noqa: F401 - fail at start, not on the first query
    except ImportError as exc:
        raise ConfigError(
            "inline::vector needs usearch and numpy: pip install 'fnstack[vector]'", path="root"
        ) from exc
    blobs = None
    if config.blob_store is not None:
        if ctx.stores is None or not ctx.stores.has(config.blob_store):
            raise ConfigError(
                f"blob_store {config.blob_store!r} is not a store in storage.stores",
                path="blob_store",
            )
        blobs = ctx.stores.blob(config.blob_store)
    root = await asyncio.to_thread(_make_root, config.root)
    return InlineVectorIOProvider(config, root, blobs)


spec = ProviderSpec(
    api=Api.vector_io,
    provider_type="inline::vector",
    config_class=InlineVectorIOConfig,
    factory=create,
    description="In-process vector and BM25 keyword search (usearch HNSW + SQLite FTS5), "
    "persisted in a local folder or a blob store (S3).",
    extras=("vector",),
)
