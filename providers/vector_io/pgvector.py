"""``remote::pgvector``: PostgreSQL with the pgvector extension, for more than one machine.

One table per index (``vio_<md5 of the index id>``; the ids and dimensions live in
``fnstack_vector_indexes``): the chunk, its attributes as ``jsonb``, its embedding as
``vector(D)`` under an HNSW index (cosine), and its ``tsvector`` under a GIN index.

- Vector search orders by ``<=>`` (cosine distance) with pgvector's iterative index
  scan on, so a selective filter still yields ``k`` rows.
- Keyword search is **Okapi BM25 computed in SQL** over the tsvector statistics
  (PostgreSQL's own ``ts_rank_cd`` is cover density, not BM25): the query's lexemes
  (``to_tsvector`` with the same text search configuration), each one's document
  frequency from the GIN index, term frequency from the positions in each matching
  row's tsvector, the row's token count stored at insert, the index's size and mean
  length (kept by triggers in ``vio_<hash>_stats``); k1=1.2, b=0.75,
  idf = ln(1 + (N - df + 0.5) / (df + 0.5)). Positions past 16,383 in a chunk are not
  counted by PostgreSQL, far beyond a chunk's size.
- Filters become SQL over the jsonb column, typed as OpenAI's reference semantics say
  (`fnstack.api.vector_io.matches`): ``jsonb_typeof`` guards, jsonb equality (2 = 2.0,
  "2" != 2), strings ordered by code point (``COLLATE "C"``), a missing key false.

Example run config::

    providers:
      vector_io:
        - provider_id: pgvector
          provider_type: remote::pgvector
          config:
            dsn: ${env.PGVECTOR_DSN:=postgresql://postgres@127.0.0.1:5432/postgres}
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fnstack.api.vector_io import Chunk, CompoundFilter, Filter, ScoredChunk, SearchMode
from fnstack.errors import (
    ConfigError,
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from fnstack.spec import Api, ProviderContext, ProviderModel, ProviderSpec
from providers.vector_io._common import check_chunks, check_index_id, check_query, unit

__all__ = ["PgVectorConfig", "PgVectorProvider", "create", "spec"]

_REGISTRY = "fnstack_vector_indexes"
_K1, _B = 1.2, 0.75


# BM25 needs the index's size and mean chunk length on every keyword query: kept in a
# one-row table by statement triggers (transition tables), not counted per query.
# (An upsert's INSERT and UPDATE triggers see only the rows each one touched.)
_STATS_SQL = """
CREATE TABLE IF NOT EXISTS {t}_stats (n bigint NOT NULL, total_len bigint NOT NULL);
INSERT INTO {t}_stats SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM {t}_stats);
CREATE OR REPLACE FUNCTION {t}_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE {t}_stats SET n = n + (SELECT count(*) FROM new_rows),
            total_len = total_len + (SELECT COALESCE(sum(doc_len), 0) FROM new_rows);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE {t}_stats SET n = n - (SELECT count(*) FROM old_rows),
            total_len = total_len - (SELECT COALESCE(sum(doc_len), 0) FROM old_rows);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER {t}_ins AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {t}_count();
CREATE OR REPLACE TRIGGER {t}_upd AFTER UPDATE ON {t}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {t}_count();
CREATE OR REPLACE TRIGGER {t}_del AFTER DELETE ON {t} REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {t}_count();
"""


class PgVectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: SecretStr = Field(description="postgresql://user:password@host:port/database")
    min_connections: int = Field(default=1, ge=0)
    max_connections: int = Field(default=10, ge=1)
    text_search_config: str = Field(
        default="english", pattern=r"^[a-z_]+$", description="PostgreSQL text search config"
    )
    hnsw_m: int = Field(default=16, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000)
    connect_timeout: float = Field(default=10.0, gt=0)


def _table(index_id: str) -> str:
    return "vio_" + hashlib.md5(index_id.encode()).hexdigest()[:24]


def _vector(values: list[float]) -> Any:
    import numpy as np

    return np.asarray(unit(values), dtype=np.float32)


class _Sql:
    """Positional parameters for one statement ($1, $2, ...)."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def add(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def filter_sql(flt: Filter, sql: _Sql) -> str:
    """A condition over ``t.attributes`` true exactly where `matches` is (never NULL)."""
    if isinstance(flt, CompoundFilter):
        glue = " AND " if flt.type == "and" else " OR "
        return "(" + glue.join(filter_sql(f, sql) for f in flt.filters) + ")"
    field = f"t.attributes -> {sql.add(flt.key)}::text"
    want = flt.value
    if flt.type in ("in", "nin", "eq", "ne"):
        values = want if isinstance(want, list) else [want]
        if flt.type in ("eq", "ne") and isinstance(want, list):
            values = []  # a list equals no scalar attribute
        arr = sql.add([json.dumps(v) for v in values])
        found = f"COALESCE({field} = ANY({arr}::jsonb[]), false)"
        negate = flt.type in ("ne", "nin")
        return f"({field} IS NOT NULL AND NOT {found})" if negate else found
    op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[flt.type]
    if isinstance(want, bool | list):
        return "false"  # booleans and lists have no order
    if isinstance(want, str):
        return (f"COALESCE(jsonb_typeof({field}) = 'string' AND "
                f"(t.attributes ->> {sql.add(flt.key)}::text) COLLATE \"C\" {op} "
                f"{sql.add(want)}::text COLLATE \"C\", false)")
    return (f"COALESCE(jsonb_typeof({field}) = 'number' AND "
            f"{field} {op} {sql.add(json.dumps(want))}::jsonb, false)")


class PgVectorProvider:
    search_modes: frozenset[SearchMode] = frozenset({"vector", "keyword"})

    def __init__(self, config: PgVectorConfig, pool: Any) -> None:
        self.config = config
        self.pool = pool
        self._dims: dict[str, int] = {}

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def shutdown(self) -> None:
        await self.pool.close()

    async def _dimension(self, index_id: str) -> int:
        check_index_id(index_id)
        if index_id not in self._dims:
            async with self._conn() as conn:
                dim = await conn.fetchval(
                    f"SELECT dimension FROM {_REGISTRY} WHERE index_id = $1", index_id)
            if dim is None:
                raise NotFoundError(f"vector index {index_id!r} not found", param="index_id")
            self._dims[index_id] = int(dim)
        return self._dims[index_id]

    def _conn(self) -> Any:
        return _Guard(self)

    async def create_index(self, index_id: str, dimension: int) -> None:
        check_index_id(index_id)
        if not 1 <= dimension <= 16000:
            raise InvalidRequestError("dimension must be 1-16000 for pgvector", param="dimension")
        t, ts = _table(index_id), self.config.text_search_config
        async with self._conn() as conn, conn.transaction():
            # One creator at a time per index id, across every process.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", index_id)
            have = await conn.fetchval(
                f"SELECT dimension FROM {_REGISTRY} WHERE index_id = $1", index_id)
            if have is not None:
                if have != dimension:
                    raise ConflictError(
                        f"index {index_id!r} exists with dimension {have}, not {dimension}")
                return
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} ("
                " chunk_id text PRIMARY KEY, file_id text NOT NULL, content text NOT NULL,"
                f" attributes jsonb NOT NULL, embedding vector({dimension}) NOT NULL,"
                f" tsv tsvector GENERATED ALWAYS AS (to_tsvector('{ts}', content)) STORED,"
                " doc_len integer NOT NULL)")
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw "
                f"(embedding vector_cosine_ops) WITH (m = {self.config.hnsw_m}, "
                f"ef_construction = {self.config.hnsw_ef_construction})")
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_tsv ON {t} USING gin (tsv)")
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_file ON {t} (file_id)")
            await conn.execute(_STATS_SQL.format(t=t))
            await conn.execute(f"INSERT INTO {_REGISTRY} VALUES ($1, $2)", index_id, dimension)
        self._dims[index_id] = dimension

    async def delete_index(self, index_id: str) -> None:
        check_index_id(index_id)
        async with self._conn() as conn, conn.transaction():
            t = _table(index_id)
            await conn.execute(f"DROP TABLE IF EXISTS {t}")
            await conn.execute(f"DROP TABLE IF EXISTS {t}_stats")
            await conn.execute(f"DROP FUNCTION IF EXISTS {t}_count()")
            await conn.execute(f"DELETE FROM {_REGISTRY} WHERE index_id = $1", index_id)
        self._dims.pop(index_id, None)

    async def insert(self, index_id: str, chunks: list[Chunk]) -> None:
        dim = await self._dimension(index_id)
        check_chunks(chunks, dim)
        if not chunks:
            return
        by_id = {c.chunk_id: c for c in chunks}  # the last of duplicate ids wins
        rows = [(c.chunk_id, c.file_id, c.content, json.dumps(c.attributes),
                 _vector(c.embedding)) for c in by_id.values()]
        t, ts = _table(index_id), self.config.text_search_config
        # doc_len: the chunk's token count (positions), BM25's document length.
        async with self._conn() as conn, conn.transaction():
            await conn.executemany(
                f"INSERT INTO {t} (chunk_id, file_id, content, attributes, embedding, doc_len) "
                "VALUES ($1, $2, $3, $4::jsonb, $5::vector, (SELECT COALESCE(sum("
                f"array_length(positions, 1)), 0) FROM unnest(to_tsvector('{ts}', $3)))) "
                "ON CONFLICT (chunk_id) DO UPDATE SET file_id = excluded.file_id, "
                "content = excluded.content, attributes = excluded.attributes, "
                "embedding = excluded.embedding, doc_len = excluded.doc_len",
                rows,
            )

    async def delete_file(self, index_id: str, file_id: str) -> None:
        await self._dimension(index_id)
        async with self._conn() as conn:
            await conn.execute(f"DELETE FROM {_table(index_id)} WHERE file_id = $1", file_id)

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
                    modes=self.search_modes, provider="remote::pgvector")
        sql = _Sql()
        where = "true" if filters is None else filter_sql(filters, sql)
        t = _table(index_id)
        if mode == "vector":
            assert embedding is not None
            q = sql.add(_vector(embedding))
            statement = (
                f"SELECT chunk_id, file_id, content, attributes::text, "
                f"1 - (embedding <=> {q}::vector) AS score FROM {t} t WHERE {where} "
                f"ORDER BY embedding <=> {q}::vector LIMIT {sql.add(k)}")
        else:
            assert text is not None
            statement = self._bm25(t, where, sql, text, k)
        async with self._conn() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL hnsw.ef_search = {self.config.hnsw_ef_search}")
            # pgvector >= 0.8: keep scanning the graph until k rows pass the filter.
            await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            rows = await conn.fetch(statement, *sql.params)
        return [
            ScoredChunk(chunk_id=r[0], file_id=r[1], content=r[2], attributes=json.loads(r[3]),
                        score=float(r[4]))
            for r in rows
        ]

    def _bm25(self, t: str, where: str, sql: _Sql, text: str, k: int) -> str:
        ts = self.config.text_search_config
        q = sql.add(text)
        return f"""
            WITH q AS (
                SELECT DISTINCT lexeme, quote_literal(lexeme)::tsquery AS tq
                FROM unnest(to_tsvector('{ts}', {q}))
            ), stats AS (
                SELECT n::float8 AS n,
                       CASE WHEN n > 0 THEN total_len::float8 / n ELSE 1 END AS avgdl
                FROM {t}_stats
            ), idf AS (
                SELECT q.lexeme, ln(1 + (s.n - d.df + 0.5) / (d.df + 0.5)) AS idf
                FROM q CROSS JOIN stats s
                CROSS JOIN LATERAL (SELECT count(*)::float8 AS df FROM {t} WHERE tsv @@ q.tq) d
            ), hits AS (
                SELECT t.* FROM {t} t
                WHERE t.tsv @@ (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM q)
                  AND {where}
            )
            SELECT h.chunk_id, h.file_id, h.content, h.attributes::text,
                   sum(idf.idf * (array_length(u.positions, 1) * {_K1 + 1}) /
                       (array_length(u.positions, 1)
                        + {_K1} * (1 - {_B} + {_B} * h.doc_len / s.avgdl))) AS score
            FROM hits h CROSS JOIN stats s
            CROSS JOIN LATERAL unnest(h.tsv) AS u(lexeme, positions, weights)
            JOIN idf ON idf.lexeme = u.lexeme
            GROUP BY h.chunk_id, h.file_id, h.content, h.attributes
            ORDER BY score DESC, h.chunk_id LIMIT {sql.add(k)}
        """


class _Guard:
    """A pooled connection whose driver errors become `fnstack.errors` types."""

    def __init__(self, provider: PgVectorProvider) -> None:
        self.provider = provider
        self._cm: Any = None

    async def __aenter__(self) -> Any:
        try:
            self._cm = self.provider.pool.acquire()
            return await self._cm.__aenter__()
        except (OSError, TimeoutError) as exc:
            raise ServiceUnavailableError(f"PostgreSQL is unreachable: {exc}") from exc

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        import asyncpg

        await self._cm.__aexit__(exc_type, exc, tb)
        if exc is None or isinstance(exc, FnstackError):
            return False
        if isinstance(exc, asyncpg.UndefinedTableError):
            self.provider._dims.clear()  # dropped by another process
            raise NotFoundError("vector index not found", param="index_id") from exc
        if isinstance(exc, asyncpg.DataError):
            raise InvalidRequestError(f"PostgreSQL refused the value: {exc}") from exc
        if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.CannotConnectNowError):
            raise ServiceUnavailableError(f"PostgreSQL is unreachable: {exc}") from exc
        return False


async def create(config: PgVectorConfig, ctx: ProviderContext) -> PgVectorProvider:
    try:
        import asyncpg
    except ImportError as exc:
        raise ConfigError(
            "remote::pgvector needs asyncpg: pip install 'fnstack[pgvector]'", path="dsn"
        ) from exc
    from pgvector.asyncpg import register_vector

    dsn = config.dsn.get_secret_value()
    try:
        # The extension first: the pool's connections register its types' codecs.
        conn = await asyncpg.connect(dsn, timeout=config.connect_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ConfigError(f"cannot connect to PostgreSQL: {exc}", path="dsn") from exc
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        if tuple(int(p) for p in str(version).split(".")[:2]) < (0, 8):
            # hnsw.iterative_scan (filtered queries that still return k rows) is 0.8's.
            raise ConfigError(
                f"pgvector {version} is too old: remote::pgvector needs 0.8 or later "
                "(ALTER EXTENSION vector UPDATE)", path="dsn")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_REGISTRY} "
            "(index_id text PRIMARY KEY, dimension integer NOT NULL)")
    except asyncpg.PostgresError as exc:
        raise ConfigError(
            f"PostgreSQL has no usable pgvector extension ({exc}); install pgvector and "
            "run CREATE EXTENSION vector as a superuser", path="dsn",
        ) from exc
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=config.min_connections, max_size=config.max_connections,
        timeout=config.connect_timeout, init=register_vector,
    )
    return PgVectorProvider(config, pool)


spec = ProviderSpec(
    api=Api.vector_io,
    provider_type="remote::pgvector",
    config_class=PgVectorConfig,
    factory=create,
    description="PostgreSQL + pgvector: HNSW cosine search, BM25 keyword search in SQL, "
    "jsonb attribute filters.",
    extras=("pgvector",),
)
