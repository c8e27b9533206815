"""A 200 means stored: durability of the chat completion history under faults.

fnstack runs as users run it (``fnstack run <config.yaml>``, the local server's queued
write mode) in front of the scripted fake upstream, on a SQLite file the test can stall
from another process by holding its write lock, as a second fnstack process or a backup
tool would.

- SIGKILL while the store is stalled loses no answered completion: a request is
  answered only once its record is committed (group commit).
- A stalled store stalls neither requests that do not store nor reads.
- A poisoned record (a lone surrogate) is a 400 at the boundary and costs no other
  completion its record.
- 50 concurrent creates are all listable.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.servers import FnstackServer

MODEL = "fake-model"

CONFIG = """\
version: 1
distribution: durability
providers:
  inference:
    - provider_id: fake
      provider_type: remote::openai
      config: {{base_url: {fake}, max_retries: 0}}
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {db}}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
inference_store:
  write_mode: queue
cache_dir: {tmp}/cache
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _config(tmp: Path, fake: FakeOpenAI) -> Path:
    path = tmp / "durability.yaml"
    path.write_text(CONFIG.format(fake=fake.base_url, db=tmp / "kv.db", tmp=tmp))
    return path


def _chat(base: str, *, store: bool = True, metadata: dict[str, str] | None = None,
          timeout: float = 30) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                            "store": store}
    if metadata is not None:
        body["metadata"] = metadata
    return httpx.post(base + "/chat/completions", json=body, timeout=timeout)


def _listed(base: str) -> set[str]:
    ids: set[str] = set()
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
        page = httpx.get(base + "/chat/completions", params=params, timeout=60).json()
        ids.update(c["id"] for c in page["data"])
        if not page["has_more"]:
            return ids
        after = page["last_id"]


class WriteLock:
    """Holds SQLite's write lock from another connection, as another process would."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)

    def __enter__(self) -> WriteLock:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_sigkill_while_the_store_is_stalled_loses_no_answered_completion(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    config = _config(tmp_path, fake)
    answered: list[str] = []
    server = FnstackServer(["run", str(config)], log_path=tmp_path / "first.log")
    with server:
        base = server.base_url
        answered += [_chat(base).json()["id"] for _ in range(10)]
        with WriteLock(tmp_path / "kv.db"):
            # While the lock is held nothing can be committed: every storing request
            # must wait (not be answered), whatever it takes.
            def attempt(_: int) -> str | None:
                try:
                    r = _chat(base, timeout=3)
                except httpx.TimeoutException:
                    return None
                return str(r.json()["id"]) if r.status_code == 200 else None

            with ThreadPoolExecutor(20) as pool:
                stalled = list(pool.map(attempt, range(40)))
            # Requests that store nothing are not held up by the stalled store, and
            # neither are reads of what is stored.
            start = time.monotonic()
            assert _chat(base, store=False, timeout=10).status_code == 200
            got = httpx.get(f"{base}/chat/completions/{answered[0]}", timeout=10)
            assert got.status_code == 200
            assert time.monotonic() - start < 5
            # Nothing can be committed, so nothing may be answered 200.
            assert stalled == [None] * len(stalled)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
    with FnstackServer(["run", str(config)], log_path=tmp_path / "second.log") as again:
        listed = _listed(again.base_url)
    lost = [i for i in answered if i not in listed]
    assert not lost, f"{len(lost)} of {len(answered)} answered completions were lost"


def test_poisoned_record_is_400_and_costs_no_other_record(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    config = _config(tmp_path, fake)
    with FnstackServer(["run", str(config)], log_path=tmp_path / "server.log") as server:
        base = server.base_url
        poison = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                             "metadata": {"k": "\ud800"}})
        assert "\\ud800" in poison

        def clean(_: int) -> str:
            r = _chat(base)
            assert r.status_code == 200, r.text
            return str(r.json()["id"])

        def poisoned(_: int) -> int:
            r = httpx.post(base + "/chat/completions", content=poison,
                           headers={"content-type": "application/json"}, timeout=30)
            return r.status_code

        with ThreadPoolExecutor(16) as pool:
            ids = pool.map(clean, range(150))
            statuses = list(pool.map(poisoned, range(10)))
            created = list(ids)
        assert statuses == [400] * 10
        err = httpx.post(base + "/chat/completions", content=poison,
                         headers={"content-type": "application/json"}).json()["error"]
        assert err["param"] == "metadata.k" and err["code"] == "invalid_unicode"
        # Also in message content (the tokenizer must never see it).
        bad = poison.replace('"Hi"', '"\\ud800x"').replace('"\\ud800"}', '"ok"}')
        r = httpx.post(base + "/chat/completions", content=bad,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
        listed = _listed(base)
        assert set(created) <= listed, f"{len(set(created) - listed)} clean records lost"


def test_fifty_concurrent_creates_are_all_listable(fake: FakeOpenAI, tmp_path: Path) -> None:
    config = _config(tmp_path, fake)
    with FnstackServer(["run", str(config)], log_path=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(50) as pool:
            ids = list(pool.map(lambda _: _chat(server.base_url).json()["id"], range(50)))
        assert len(set(ids)) == 50
        assert set(ids) <= _listed(server.base_url)
