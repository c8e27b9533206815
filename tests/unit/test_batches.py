"""The batches service in process (the openai SDK over ASGI, a scriptable OpenAI-wire
upstream): input validation, a crash between a chunk's part and its checkpoint, a
redelivered job, expiry, the inbox/ path. The live-server suite is tests/api/test_batches.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fnstack import batch_worker
from fnstack.app import create_app
from fnstack.batch_worker import parse_input
from fnstack.config import RunConfig, parse_config
from fnstack.stack import Stack
from tests.support.fake_openai import FakeOpenAI, Reply, chat_json

MODEL = "fake-model"
CHAT = "/v1/chat/completions"


def _line(custom_id: str, **over: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": MODEL, "messages": [{"role": "user", "content": custom_id}]},
            **over}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


# --- parsing ------------------------------------------------------------------------------

def test_parse_reports_each_fault_with_its_line() -> None:
    data = b"\n".join([
        json.dumps(_line("a")).encode(),
        b"",  # blank lines are skipped, and still counted
        b"{broken",
        b"[1, 2]",
        json.dumps(_line("a")).encode(),
        json.dumps({**_line("b"), "url": "/v1/embeddings"}).encode(),
        json.dumps({**_line("c"), "body": "text"}).encode(),
        json.dumps({**_line("d"), "method": "GET"}).encode(),
        json.dumps({"method": "POST", "url": CHAT, "body": {"model": MODEL}}).encode(),
        json.dumps({**_line("e"), "body": {"messages": []}}).encode(),
        json.dumps(_line("f")).encode(),
    ])
    parsed = parse_input(data, CHAT, max_lines=100)
    assert [(e["code"], e["line"]) for e in parsed.errors] == [
        ("invalid_json_line", 3), ("invalid_json_line", 4), ("duplicate_custom_id", 5),
        ("invalid_url", 6), ("invalid_request", 7), ("invalid_method", 8),
        ("missing_required_parameter", 9), ("missing_required_parameter", 10)]
    assert [(x.number, x.custom_id) for x in parsed.lines] == [(1, "a"), (11, "f")]


def test_parse_empty_too_many_and_not_utf8() -> None:
    assert [e["code"] for e in parse_input(b"\n\n", CHAT, 10).errors] == ["empty_file"]
    many = _jsonl([_line(str(i)) for i in range(4)])
    assert [e["code"] for e in parse_input(many, CHAT, 3).errors] == ["too_many_tasks"]
    assert [e["code"] for e in parse_input(b"\xff\xfe", CHAT, 3).errors] == ["invalid_file"]


# --- the service, in process ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def _config(tmp: Path, fake: FakeOpenAI) -> RunConfig:
    return parse_config({
        "providers": {"inference": [{"provider_id": "fake", "provider_type": "remote::openai",
                                     "config": {"base_url": fake.base_url, "max_retries": 0}}]},
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")},
                         "blob": {"type": "blob_localfs", "root": str(tmp / "blobs")}},
            "stores": {"registry": {"backend": "kv", "namespace": "registry"},
                       "file_records": {"backend": "kv", "namespace": "files"},
                       "files": {"backend": "blob", "prefix": "files/"},
                       "batches": {"backend": "kv", "namespace": "batches"}},
        },
        "batches": {"chunk_lines": 5, "concurrency": 3},
        "cache_dir": str(tmp / "cache"),
    }, env={})


@pytest.fixture
async def env(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[tuple[openai.AsyncOpenAI, Stack]]:
    fake.reset()
    app = create_app(_config(tmp_path, fake))
    stack: Stack = app.state.stack
    await stack.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http,
                                 max_retries=0), stack
    await stack.shutdown()


async def _start(sdk: openai.AsyncOpenAI, n: int) -> str:
    upload = await sdk.files.create(file=("in.jsonl", _jsonl([_line(f"r{i}")
                                                               for i in range(n)])),
                                    purpose="batch")
    batch = await sdk.batches.create(input_file_id=upload.id, endpoint=CHAT,
                                     completion_window="24h")
    return batch.id


async def _until(sdk: openai.AsyncOpenAI, batch_id: str,
                 done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 30
    while True:
        batch = await sdk.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


def _finished(batch: Any) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


async def _ids(sdk: openai.AsyncOpenAI, file_id: str | None) -> list[str]:
    if file_id is None:
        return []
    text = (await sdk.files.content(file_id)).text
    return [json.loads(line)["custom_id"] for line in text.splitlines() if line.strip()]


def _chats(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path == CHAT)


async def test_crash_between_part_and_checkpoint_redoes_one_chunk(
    env: tuple[openai.AsyncOpenAI, Stack], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sdk, stack = env
    real = batch_worker._checkpoint
    crashed: list[int] = []

    def crash_once(k: int, completed: int, failed: int) -> Any:
        if k == 1 and not crashed:
            crashed.append(k)
            raise RuntimeError("the worker died after writing part 1")
        return real(k, completed, failed)

    monkeypatch.setattr(batch_worker, "_checkpoint", crash_once)
    batch_id = await _start(sdk, 12)  # chunks of 5: 5, 5, 2
    # The run fails; it releases its lease, and the queue's retry resumes after chunk 0.
    batch = await _until(sdk, batch_id, _finished)
    assert crashed == [1]
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed) == (12, 12)
    ids = await _ids(sdk, batch.output_file_id)
    assert sorted(ids) == sorted(f"r{i}" for i in range(12)) and len(ids) == 12
    assert _chats(fake) == 12 + 5  # only the unfinished chunk was redone
    # A redelivered job of a finished batch changes nothing and calls nobody.
    await stack.run_job("batches", "run", {"batch_id": batch_id})
    await stack.run_job("batches", "run", {"batch_id": batch_id, "reclaim": True})
    again = await sdk.batches.retrieve(batch_id)
    assert again.model_dump() == batch.model_dump() and _chats(fake) == 17
    # The parts are gone once the output is assembled.
    parts = tmp_path / "blobs" / "files" / "batch_parts"
    assert not [p for p in parts.rglob("*") if p.is_file()]


async def test_a_batch_past_its_window_expires_with_the_rest_as_errors(
    env: tuple[openai.AsyncOpenAI, Stack], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk, _ = env
    fake.script(CHAT, *[Reply(json=chat_json("slow"), delay=0.4) for _ in range(5)])
    batch_id = await _start(sdk, 12)
    await _until(sdk, batch_id, lambda b: b.status == "in_progress")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 25 * 3600)
    batch = await _until(sdk, batch_id, _finished)
    assert batch.status == "expired" and batch.expired_at
    assert batch.request_counts.completed + batch.request_counts.failed == 12
    assert 0 < batch.request_counts.completed < 12
    assert len(await _ids(sdk, batch.output_file_id)) == batch.request_counts.completed
    text = (await sdk.files.content(batch.error_file_id)).text  # type: ignore[arg-type]
    errors = [json.loads(line) for line in text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len(errors) == batch.request_counts.failed


async def test_inbox_file_starts_a_batch_once_with_output_beside_it(
    env: tuple[openai.AsyncOpenAI, Stack], tmp_path: Path
) -> None:
    _, stack = env
    inbox = tmp_path / "blobs" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "night run.jsonl").write_bytes(_jsonl([_line(f"n{i}") for i in range(7)]))
    args = {"bucket": "local", "key": "inbox/night run.jsonl"}
    await stack.run_job("batches", "inbox", args)
    await stack.run_job("batches", "inbox", args)  # S3 notified twice: one batch
    svc = await stack.service("batches")
    page = await svc.kv.list("batch:")
    assert len(page.records) == 1
    deadline = time.monotonic() + 30
    while not (inbox / "night run.output.jsonl").exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    out = [json.loads(x) for x in (inbox / "night run.output.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"n{i}" for i in range(7))
    # The output is not an input: dropping it would start nothing.
    await stack.run_job("batches", "inbox", {"bucket": "local",
                                             "key": "inbox/night run.output.jsonl"})
    assert len((await svc.kv.list("batch:")).records) == 1
