"""Indexing a long PDF survives a killed server, and never indexes a chunk twice.

The local server (``fnstack run local`` with API keys on) indexes in a background job
that checkpoints after each batch of chunks. The test kills the server with SIGKILL once
the first checkpoints have landed, starts it again on the same data, and waits: the
restarted server resumes the file and completes it. Then, with the server stopped, the
inline index itself is opened: it holds each chunk exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import openai
import pytest

from tests.api.conftest import ADMIN_KEY
from tests.support.documents import make_pdf
from tests.support.servers import FnstackServer

# Enough for several checkpoints (64 chunks each) on the bundled embedding model.
PAGES = 60


def _page(n: int) -> str:
    return "\n".join(
        f"Page {n} line {i}: the survey of site {n * 100 + i} recorded soil type "
        f"{['loam', 'clay', 'sand', 'silt'][(n + i) % 4]} at depth {i * 7 % 50} cm."
        for i in range(24)
    )


def _done_chunks(db: Path) -> tuple[str, int]:
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute(
            "SELECT value FROM kv WHERE namespace='vector_stores' AND key LIKE 'vsf:%'"
        ).fetchall()
    finally:
        conn.close()
    if not rows:
        return "", 0
    value = json.loads(rows[0][0])
    return str(value["status"]), int(value.get("done_chunks") or 0)


@pytest.mark.timeout(900)
def test_killed_server_resumes_indexing_without_duplicates(tmp_path: Path) -> None:
    env = {"FNSTACK_HOME": str(tmp_path / "home"), "FNSTACK_AUTH": "api_keys",
           "FNSTACK_ADMIN_KEY": ADMIN_KEY}
    db = tmp_path / "home" / "local" / "kv.db"
    first = FnstackServer(["run", "local"], env=env, log_path=tmp_path / "first.log")
    with first:
        client = openai.OpenAI(base_url=first.base_url, api_key=ADMIN_KEY, max_retries=0)
        pdf = client.files.create(
            file=("survey.pdf", make_pdf([_page(n) for n in range(PAGES)]), "application/pdf"),
            purpose="assistants")
        vs = client.vector_stores.create(file_ids=[pdf.id])
        deadline = time.monotonic() + 300
        while True:
            status, done = _done_chunks(db)
            if done > 0:
                break
            assert status != "completed", "indexed before the kill: make the document longer"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    status, done_at_kill = _done_chunks(db)
    assert status == "in_progress" and done_at_kill > 0
    with FnstackServer(["run", "local"], env=env, log_path=tmp_path / "second.log") as again:
        client = openai.OpenAI(base_url=again.base_url, api_key=ADMIN_KEY, max_retries=0)
        deadline = time.monotonic() + 600
        while (current := client.vector_stores.retrieve(vs.id)).file_counts.in_progress:
            assert time.monotonic() < deadline, "the restarted server did not finish"
            time.sleep(1)
        assert current.file_counts.completed == 1
        hits = client.vector_stores.search(vs.id, query="site 4207",
                                           extra_body={"search_mode": "keyword"})
        assert hits.data and "site 4207 " in hits.data[0].content[0].text
        chunks = [p.text for p in client.vector_stores.files.content(
            file_id=pdf.id, vector_store_id=vs.id)]
    # The server is stopped: open the index it left and count what it holds.
    assert len(chunks) > done_at_kill
    stored = asyncio.run(_indexed(tmp_path / "home" / "local" / "vector_io", vs.id, pdf.id,
                                  len(chunks)))
    assert len(stored) == len(set(stored)) == len(chunks)


async def _indexed(root: Path, vs_id: str, file_id: str, expected: int) -> list[str]:
    from fnstack.spec import ProviderContext, load_spec

    spec = load_spec("inline::vector")
    provider = await spec.factory(spec.config_class(root=str(root)),
                                  ProviderContext(provider_id="vector", cache_dir=root))
    try:
        hits = await provider.query(vs_id, mode="keyword", k=expected * 2 + 10,
                                    text="survey site soil")
        return [h.chunk_id for h in hits if h.file_id == file_id]
    finally:
        await provider.shutdown()
