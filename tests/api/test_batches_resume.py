"""A batch survives a killed server, and an upstream's 429 slows it without failing lines.

The kill test runs ``fnstack run local`` (API keys on) against the real llama.cpp
upstream, kills it with SIGKILL once the first chunk is checkpointed, starts it again on
the same data and waits: the restarted server resumes the batch and completes it, every
custom_id exactly once in the output. The 429 test runs a server whose upstream is the
scriptable fake answering 429 (with retry-after) to the first requests.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.api.conftest import ADMIN_KEY
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.llamacpp import LlamaCppServer
from tests.support.servers import FnstackServer

LINES = 200


def _batch_state(db: Path) -> tuple[str, int]:
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute(
            "SELECT value FROM kv WHERE namespace='batches' AND key LIKE 'batch:%'"
        ).fetchall()
    except sqlite3.OperationalError:
        return "", 0  # the table is not there yet
    finally:
        conn.close()
    if not rows:
        return "", 0
    value = json.loads(rows[0][0])
    return str(value["status"]), int(value.get("done_chunks") or 0)


def _jsonl(model: str, n: int, max_tokens: int) -> bytes:
    return "".join(json.dumps({
        "custom_id": f"k-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                 "messages": [{"role": "user", "content": f"Count to {i}."}]}}) + "\n"
        for i in range(n)).encode()


def _output_ids(client: openai.OpenAI, file_id: str | None) -> list[str]:
    assert file_id is not None
    text = client.files.content(file_id).text
    return [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def llamacpp() -> Iterator[LlamaCppServer]:
    with LlamaCppServer() as server:
        yield server


@pytest.mark.timeout(900)
def test_killed_server_resumes_the_batch_without_duplicates(
    tmp_path: Path, llamacpp: LlamaCppServer
) -> None:
    env = {"FNSTACK_HOME": str(tmp_path / "home"), "FNSTACK_AUTH": "api_keys",
           "FNSTACK_ADMIN_KEY": ADMIN_KEY, "FNSTACK_OPENAI_BASE_URL": llamacpp.base_url}
    db = tmp_path / "home" / "local" / "kv.db"
    first = FnstackServer(["run", "local"], env=env, log_path=tmp_path / "first.log")
    with first:
        client = openai.OpenAI(base_url=first.base_url, api_key=ADMIN_KEY, max_retries=0)
        model = next(m.id for m in client.models.list()
                     if getattr(m, "provider_id", "") == "openai")
        upload = client.files.create(file=("in.jsonl", _jsonl(model, LINES, 8)),
                                     purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        deadline = time.monotonic() + 300
        while True:
            status, done = _batch_state(db)
            if done > 0:
                break
            assert status not in ("completed", "failed"), f"{status} before the kill"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    status, done_at_kill = _batch_state(db)
    assert status == "in_progress" and done_at_kill > 0
    with FnstackServer(["run", "local"], env=env, log_path=tmp_path / "second.log") as again:
        client = openai.OpenAI(base_url=again.base_url, api_key=ADMIN_KEY, max_retries=0)
        deadline = time.monotonic() + 600
        while (current := client.batches.retrieve(batch.id)).status not in (
                "completed", "failed", "cancelled", "expired"):
            assert time.monotonic() < deadline, "the restarted server did not finish"
            time.sleep(0.5)
        assert current.status == "completed", current
        assert current.request_counts is not None
        assert (current.request_counts.completed, current.request_counts.failed) == (LINES, 0)
        ids = _output_ids(client, current.output_file_id)
    assert len(ids) == len(set(ids)) == LINES
    assert set(ids) == {f"k-{i}" for i in range(LINES)}


CONFIG = """\
version: 1
distribution: batch-429
providers:
  inference:
    - provider_id: fake
      provider_type: remote::openai
      config:
        base_url: {fake}
        max_retries: 0
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
    blobs: {{type: blob_localfs, root: {tmp}/blobs}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    files: {{backend: blobs, prefix: files/}}
    file_records: {{backend: kv, namespace: files}}
    batches: {{backend: kv, namespace: batches}}
batches:
  concurrency: 4
  chunk_lines: 5
cache_dir: {tmp}/cache
"""


@pytest.mark.timeout(300)
def test_upstream_429_slows_the_batch_and_fails_no_line(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        config = tmp_path / "batch-429.yaml"
        config.write_text(CONFIG.format(fake=fake.base_url, tmp=tmp_path))
        with FnstackServer(["run", str(config)], log_path=tmp_path / "server.log") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
            fake.script("/v1/chat/completions",
                        *[Reply(status=429, headers={"retry-after": "1"}) for _ in range(6)])
            upload = client.files.create(file=("in.jsonl", _jsonl("fake-model", 12, 4)),
                                         purpose="batch")
            started = time.monotonic()
            batch = client.batches.create(input_file_id=upload.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            while (current := client.batches.retrieve(batch.id)).status not in (
                    "completed", "failed"):
                assert time.monotonic() - started < 120
                time.sleep(0.2)
            took = time.monotonic() - started
            assert current.status == "completed", current
            assert current.request_counts is not None
            assert (current.request_counts.completed, current.request_counts.failed) == (12, 0)
            assert current.error_file_id is None
            ids = _output_ids(client, current.output_file_id)
            assert sorted(ids) == sorted(f"k-{i}" for i in range(12))
            chats: list[Any] = [r for r in fake.requests if r.path == "/v1/chat/completions"]
            assert len(chats) == 12 + 6  # every 429 retried, nothing else sent twice
            assert took >= 1.0  # the job waited out retry-after
