"""``inline::vector``: the embedded vector IO provider (local server and Lambda functions).

One index is one folder holding two files (the engine choice and its figures are in
docs/vector_io.md):

- ``chunks.sqlite``: the source of truth. Chunks with their text, attributes (JSON) and
  float32 embeddings, and an FTS5 table over the text whose ``bm25()`` ranks keyword
  queries (Okapi BM25, k1=1.2, b=0.75). Filters become SQL over ``json_each``, typed as
  OpenAI's reference semantics say (`fnstack.api.vector_io.matches`).
- ``vectors.usearch``: a usearch HNSW graph over the embeddings, keyed by the chunk's
  SQLite rowid - a derived structure. ``vectors.gen`` names the SQLite generation (its
  *tag*: number + random suffix) it was saved at; on open a graph of another tag is
  rebuilt from SQLite, so a crash between the two writes costs a rebuild, never a wrong
  answer.

Filtered vector queries take the exact path (numpy over the matching rows' embeddings)
when at most ``exact_below`` chunks match, otherwise HNSW with an oversampled ``k``
post-filtered by the matching rowids.

With ``blob_store`` set (S3 on AWS), the folder is a cache and the blob store holds the
index: a write uploads ``<tag>.sqlite`` and ``<tag>.usearch``, then moves the index's
*manifest* (the current tag) to them, then deletes the generation it replaced, so a
reader never sees half an index. A function that opens an index (cold start), or finds
the manifest moved on (checked at most every ``sync_interval_s``; always before a
write), downloads the generation the manifest names.

The manifest lives in ``manifest_store`` (a kv store: DynamoDB on AWS) when set, and is
then moved with a conditional write: a function that loses the race to another writer
drops its upload, takes the winner's generation and applies its change again, so
concurrent ingestion into one index loses nothing. Without it the manifest is a blob
(``manifest.json``) and the last writer wins: one writer per index at a time.

Example run config::

    providers:
      vector_io:
        - provider_id: inline
          provider_type: inline::vector
          config:
            root: ${env.FNSTACK_HOME:=~/.fnstack}/local/vector_io
            # on AWS: root: /tmp/vector_io, blob_store: vector_io (a blob store) and
            # manifest_store: vector_io_manifests (a kv store), both in storage.stores
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
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
    PreconditionFailedError,
    ServiceUnavailableError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.vector_io._common import check_chunks, check_index_id, check_query, terms

if TYPE_CHECKING:
    from fnstack.storage.base import BlobStore, KVStore

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
    manifest_store: str | None = Field(
        default=None,
        description="Kv store (storage.stores) for each index's pointer to its current "
        "files: conditional writes let concurrent writers (functions) retry, not overwrite",
    )
    write_attempts: int = Field(default=5, ge=1, le=50)
    sync_interval_s: float = Field(
        default=2.0, ge=0, description="How often a reader checks the blob store for new writes"
    )
    graph_save_interval_s: float = Field(
        default=30.0, ge=0,
        description="Least seconds between saves of a local HNSW graph (a crash rebuilds it)",
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
        self.graph_tag = ""  # the generation the in-memory graph holds
        self.saved_tag = ""  # the generation of vectors.usearch on disk
        self.saved_at = time.monotonic()
        self.lock = asyncio.Lock()
        self.synced_at = time.monotonic()
        # The version of the manifest record this copy came from (blob store mode).
        self.manifest_version: int | None = None

    # --- state ---

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def generation(self) -> int:
        return int(self._meta("generation") or 0)

    def tag(self) -> str:
        """Names this generation's contents: two writers' generation N differ in tag."""
        return self._meta("tag") or "0"

    def init(self, dimension: int) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?)", (dimension,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('tag', ?)", (_new_tag(0),))
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

        tag = self.tag()
        if self.graph is not None and self.graph_tag == tag:
            return self.graph
        graph = self._new_graph()
        path, marker = self.folder / "vectors.usearch", self.folder / "vectors.gen"
        if path.is_file() and marker.is_file() and marker.read_text().strip() == tag:
            graph.load(str(path))
            self.saved_tag = tag
        else:  # absent or stale (a crash between the two writes): rebuild from SQLite
            rows = self.db.execute("SELECT id, embedding FROM chunks").fetchall()
            if rows:
                keys = np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                graph.add(keys, vecs.reshape(len(rows), self.dimension))
            self.graph, self.graph_tag = graph, tag
            self.flush()
        self.graph, self.graph_tag = graph, tag
        return graph

    def _changed(self, tag: str) -> None:
        """The graph now holds generation ``tag``: save it when due. Between saves a
        crash leaves a graph of an older tag on disk, which the next open rebuilds."""
        self.graph_tag = tag
        if time.monotonic() - self.saved_at >= self.config.graph_save_interval_s:
            self.flush()

    def flush(self) -> None:
        """Save the graph if the one on disk is older (before an upload, at shutdown)."""
        if self.graph is None or self.saved_tag == self.graph_tag:
            return
        tmp = self.folder / "vectors.usearch.tmp"
        self.graph.save(str(tmp))
        os.replace(tmp, self.folder / "vectors.usearch")
        (self.folder / "vectors.gen").write_text(self.graph_tag)
        self.saved_tag, self.saved_at = self.graph_tag, time.monotonic()

    # --- writes ---

    def insert(self, chunks: list[Chunk]) -> bool:
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
            tag = self._bump()
        for key in old:
            graph.remove(key)
        if new:
            graph.add(np.array(new, dtype=np.uint64), vecs)
        self._changed(tag)
        return True

    def delete_file(self, file_id: str) -> bool:
        graph = self.ensure_graph()
        with self.db:
            old = [r[0] for r in self.db.execute(
                "SELECT id FROM chunks WHERE file_id = ?", (file_id,))]
            if not old:
                return False
            self.db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
            tag = self._bump()
        for key in old:
            graph.remove(key)
        self._changed(tag)
        return True

    def _bump(self) -> str:
        gen = self.generation() + 1
        tag = _new_tag(gen)
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen),))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tag', ?)", (tag,))
        return tag

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
        # The top k by BM25 first, then their rows: ranking the matches in a subquery is
        # ~1.7x faster than ordering the join (bench: 100k chunks, ~2,400 matches).
        if flt is None:
            top = "SELECT rowid AS id, bm25(fts) AS s FROM fts WHERE fts MATCH ?"
            params: list[Any] = [match]
        else:
            where, params = filter_sql(flt)
            top = ("SELECT fts.rowid AS id, bm25(fts) AS s FROM fts JOIN chunks c "
                   f"ON c.id = fts.rowid WHERE fts MATCH ? AND {where}")
            params = [match, *params]
        rows = self.db.execute(
            "SELECT c.chunk_id, c.file_id, c.content, c.attributes, -r.s FROM "
            f"({top} ORDER BY s, id LIMIT ?) r JOIN chunks c ON c.id = r.id ORDER BY r.s, r.id",
            [*params, k],
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

    def close(self, save: bool = True) -> None:
        if save:
            self.flush()
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
        self,
        config: InlineVectorIOConfig,
        root: Path,
        blobs: BlobStore | None,
        manifests: KVStore | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.blobs = blobs
        self.manifests = manifests
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
                try:
                    await self._publish(index_id, index, previous=None)
                except PreconditionFailedError:  # created meanwhile elsewhere: take that one
                    await self._refresh(index_id, index, force=True)
            if index.dimension != dimension:
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
                await asyncio.to_thread(index.close, False)
        await asyncio.to_thread(shutil.rmtree, self.root / index_id, True)
        if self.manifests is not None:
            await self.manifests.delete(index_id)
        if self.blobs is not None:
            for info in await self.blobs.list(f"{index_id}/"):
                await self.blobs.delete(info.key)

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        index = await self._get(index_id)
        check_chunks(chunks, index.dimension)
        if not chunks:
            return
        await self._write(index_id, index, lambda: index.insert(chunks))

    async def delete_file(self, index_id: str, file_id: str) -> None:
        index = await self._get(index_id)
        await self._write(index_id, index, lambda: index.delete_file(file_id))

    async def _write(self, index_id: str, index: _Index, apply: Callable[[], bool]) -> None:
        """Apply a change to the latest generation and publish it. With a manifest store,
        a writer that lost the race to another function takes that one's generation and
        applies its change again (optimistic concurrency)."""
        async with index.lock:
            for _ in range(self.config.write_attempts):
                await self._refresh(index_id, index, force=True)
                previous = await asyncio.to_thread(index.tag)
                if not await asyncio.to_thread(apply) or self.blobs is None:
                    return
                try:
                    await self._publish(index_id, index, previous=previous)
                    return
                except PreconditionFailedError:
                    continue
        raise ServiceUnavailableError(
            f"vector index {index_id!r} is being written by other functions; retry",
            headers={"retry-after": "1"},
        )

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
                    await asyncio.to_thread(index.close)
            self._open.clear()

    # --- opening, and the blob store copy ---

    async def _get(self, index_id: str, *, create: bool = False) -> _Index:
        check_index_id(index_id)
        async with self._opening:
            index = self._open.get(index_id)
            if index is not None:
                return index
            folder = self.root / index_id
            manifest, version = (None, None)
            if self.blobs is not None:
                manifest, version = await self._manifest(index_id)
            if manifest is not None:
                await self._download(index_id, folder, manifest)
            elif self.blobs is not None:
                # Not in the blob store: whatever /tmp holds is a deleted index's.
                if not create:
                    raise NotFoundError(f"vector index {index_id!r} not found",
                                        param="index_id")
                await asyncio.to_thread(shutil.rmtree, folder, True)
            elif not (folder / "chunks.sqlite").is_file() and not create:
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            index = await asyncio.to_thread(_Index, folder, self.config)
            if index.dimension == 0 and not create:  # a half-created folder
                await asyncio.to_thread(index.close)
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            index.manifest_version = version
            self._open[index_id] = index
            return index

    async def _manifest(self, index_id: str) -> tuple[dict[str, Any] | None, int | None]:
        """The manifest naming the current generation, and its record version."""
        if self.manifests is not None:
            record = await self.manifests.get(index_id)
            return (None, None) if record is None else (record.value, record.version)
        assert self.blobs is not None
        try:
            data: dict[str, Any] = json.loads(await self.blobs.get(f"{index_id}/manifest.json"))
        except NotFoundError:
            return None, None
        return data, None

    async def _refresh(self, index_id: str, index: _Index, *, force: bool = False) -> None:
        """Take a newer generation another function wrote (blob store mode only)."""
        if self.blobs is None:
            return
        now = time.monotonic()
        if not force and now - index.synced_at < self.config.sync_interval_s:
            return
        index.synced_at = now
        manifest, version = await self._manifest(index_id)
        if manifest is None:
            raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
        index.manifest_version = version
        if manifest["tag"] == await asyncio.to_thread(index.tag):
            return
        await asyncio.to_thread(index.close, False)  # replaced by the download
        await self._download(index_id, index.folder, manifest)
        fresh = await asyncio.to_thread(_Index, index.folder, self.config)
        index.db, index.dimension, index.graph, index.graph_tag = (
            fresh.db, fresh.dimension, None, "")

    async def _download(self, index_id: str, folder: Path, manifest: dict[str, Any]) -> None:
        for _ in range(3):
            try:
                return await self._download_generation(index_id, folder, manifest)
            except NotFoundError:
                # A writer published a newer generation and dropped this one while we
                # read it: follow the manifest again.
                fresh, _ = await self._manifest(index_id)
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
        tag = str(manifest["tag"])
        if await asyncio.to_thread(_local_tag, folder) == tag:
            return
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        for name, target in (("sqlite", "chunks.sqlite"), ("usearch", "vectors.usearch")):
            tmp = folder / f"{target}.download"
            out = await asyncio.to_thread(tmp.open, "wb")
            try:
                async for part in await self.blobs.stream(f"{index_id}/{tag}.{name}"):
                    await asyncio.to_thread(out.write, part)
            finally:
                await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, tmp, folder / target)
        await asyncio.to_thread((folder / "vectors.gen").write_text, tag)

    async def _publish(self, index_id: str, index: _Index, *, previous: str | None) -> None:
        """Upload this generation, point the manifest at it, drop the one it replaced.

        With a manifest store the pointer moves only from the version this copy was read
        at (PreconditionFailedError otherwise, after removing what was uploaded)."""
        if self.blobs is None:
            return
        tag = await asyncio.to_thread(index.tag)
        await asyncio.to_thread(index.ensure_graph)
        await asyncio.to_thread(index.flush)
        keys = [f"{index_id}/{tag}.sqlite", f"{index_id}/{tag}.usearch"]
        for key, source in zip(keys, ("chunks.sqlite", "vectors.usearch"), strict=True):
            await self.blobs.put(key, _read_file(index.folder / source))
        manifest = {"tag": tag, "generation": await asyncio.to_thread(index.generation),
                    "dimension": index.dimension}
        if self.manifests is not None:
            try:
                if index.manifest_version is None:
                    record = await self.manifests.put(index_id, manifest, if_absent=True)
                else:
                    record = await self.manifests.put(
                        index_id, manifest, if_version=index.manifest_version)
            except PreconditionFailedError:
                for key in keys:  # never referenced: another function published first
                    await self.blobs.delete(key)
                raise
            index.manifest_version = record.version
        else:
            await self.blobs.put(f"{index_id}/manifest.json", json.dumps(manifest).encode(),
                                 content_type="application/json")
        if previous is not None and previous != tag:
            # Readers still loading it follow the manifest again (see _download).
            for name in ("sqlite", "usearch"):
                await self.blobs.delete(f"{index_id}/{previous}.{name}")


def _new_tag(generation: int) -> str:
    return f"g{generation}-{uuid.uuid4().hex[:8]}"


def _local_tag(folder: Path) -> str | None:
    if not (folder / "chunks.sqlite").is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(folder / "chunks.sqlite")) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'tag'").fetchone()
    except sqlite3.Error:  # a half-written or foreign file: download again
        return None
    return None if row is None else str(row[0])


async def _read_file(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while part := await asyncio.to_thread(f.read, size):
            yield part


def _make_root(root: str) -> Path:
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


async def create(config: InlineVectorIOConfig, ctx: ProviderContext) -> InlineVectorIOProvider:
    # onnxruntime first where it is installed: imported after usearch (the cp312
    # manylinux wheels of the Lambda layer), its import segfaults the process, which
    # killed every function that searched or indexed and then embedded.
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    try:
        import usearch.index  # noqa: F401 - fail at start, not on the first query
    except ImportError as exc:
        raise ConfigError(
            "inline::vector needs usearch and numpy: pip install 'fnstack[vector]'", path="root"
        ) from exc
    blobs = manifests = None
    for name, field in ((config.blob_store, "blob_store"),
                        (config.manifest_store, "manifest_store")):
        if name is not None and (ctx.stores is None or not ctx.stores.has(name)):
            raise ConfigError(f"{field} {name!r} is not a store in storage.stores", path=field)
    try:
        if config.blob_store is not None:
            assert ctx.stores is not None
            blobs = ctx.stores.blob(config.blob_store)
        if config.manifest_store is not None:
            assert ctx.stores is not None
            if blobs is None:
                raise ConfigError("manifest_store needs blob_store", path="manifest_store")
            manifests = ctx.stores.kv(config.manifest_store)
    except KeyError as exc:  # a store of the wrong family
        raise ConfigError(str(exc.args[0]), path="blob_store") from exc
    root = await asyncio.to_thread(_make_root, config.root)
    return InlineVectorIOProvider(config, root, blobs, manifests)


spec = ProviderSpec(
    api=Api.vector_io,
    provider_type="inline::vector",
    config_class=InlineVectorIOConfig,
    factory=create,
    description="In-process vector and BM25 keyword search (usearch HNSW + SQLite FTS5), "
    "persisted in a local folder or a blob store (S3).",
    extras=("vector",),
)
