"""remote::pgvector specifics: the BM25 statistics the triggers keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from fnstack.api.vector_io import Chunk
from fnstack.spec import ProviderContext
from providers.vector_io.pgvector import _table
from tests.support.pgserver import PgVectorServer
from tests.vector_io.conftest import open_spec


def _chunk(cid: str, file_id: str, text: str) -> Chunk:
    return Chunk(chunk_id=cid, file_id=file_id, content=text, embedding=[1.0, 0.0])


async def test_bm25_statistics_follow_every_write(pg_server: PgVectorServer) -> None:
    ctx = ProviderContext(provider_id="pgvector", cache_dir=Path("/nonexistent"))
    provider: Any = await open_spec("remote::pgvector", {"dsn": pg_server.dsn}, ctx)
    conn = await asyncpg.connect(pg_server.dsn)
    t = _table("vs_stats")

    async def check() -> None:
        kept = await conn.fetchrow(f"SELECT n, total_len FROM {t}_stats")
        real = await conn.fetchrow(f"SELECT count(*), COALESCE(sum(doc_len), 0) FROM {t}")
        assert (kept[0], kept[1]) == (real[0], real[1])

    try:
        await provider.create_index("vs_stats", 2)
        await check()
        await provider.insert("vs_stats", [_chunk(f"a:{n}", "a", "one two three " * n)
                                           for n in range(1, 6)])
        await check()
        # An upsert mixing new rows and replaced ones (INSERT and UPDATE triggers).
        await provider.insert("vs_stats", [_chunk("a:1", "a", "four"),
                                           _chunk("b:0", "b", "five six")])
        await check()
        await provider.delete_file("vs_stats", "a")
        await check()
        assert (await conn.fetchrow(f"SELECT n, total_len FROM {t}_stats"))[0] == 1
    finally:
        await provider.delete_index("vs_stats")
        assert await conn.fetchval("SELECT to_regclass($1)", f"{t}_stats") is None
        await conn.close()
        await provider.shutdown()
