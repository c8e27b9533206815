"""The files service in process (the openai SDK over ASGI): expiry, limits, uploads,
the body-limit exemption of upload routes. The live-server suite is tests/api/test_files.py."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fnstack.app import create_app
from fnstack.config import RunConfig, parse_config
from fnstack.errors import ConfigError
from fnstack.stack import Stack


def _config(tmp: Path, **files: Any) -> RunConfig:
    return parse_config({
        "apis": ["files"],
        "server": {"max_body_bytes": 4096},
        "files": {"max_file_bytes": 1000, "max_part_bytes": 300, "max_upload_bytes": 5000,
                  **files},
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")},
                         "blob": {"type": "blob_localfs", "root": str(tmp / "blobs")}},
            "stores": {"file_records": {"backend": "kv", "namespace": "files"},
                       "files": {"backend": "blob", "prefix": "files/"}},
        },
    }, env={})


@pytest.fixture
async def sdk(tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    app = create_app(_config(tmp_path))
    stack: Stack = app.state.stack
    await stack.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http,
                                 max_retries=0)
    await stack.shutdown()


def _blobs(tmp: Path) -> list[str]:
    root = tmp / "blobs" / "files"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".tmp-"))


async def test_expired_file_is_gone_and_its_blob_cleaned(
    sdk: openai.AsyncOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await sdk.files.create(file=("a.txt", b"hello"), purpose="user_data",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    keep = await sdk.files.create(file=("b.txt", b"kept"), purpose="assistants")
    assert keep.expires_at is None
    assert _blobs(tmp_path) == sorted([f.id, keep.id])
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3601)
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(f.id)
    assert _blobs(tmp_path) == [keep.id]
    assert [x.id for x in (await sdk.files.list()).data] == [keep.id]


async def test_expired_files_leave_listings(
    sdk: openai.AsyncOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await sdk.files.create(file=("a.txt", b"x"), purpose="batch")
    assert f.expires_at == f.created_at + 30 * 24 * 3600  # OpenAI's default for batch
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 31 * 24 * 3600)
    assert (await sdk.files.list()).data == []
    assert _blobs(tmp_path) == []


async def test_limits_are_413_in_openai_shape(sdk: openai.AsyncOpenAI) -> None:
    # Past server.max_body_bytes (4096) too: the upload routes have their own limits.
    with pytest.raises(openai.APIStatusError) as err:
        await sdk.files.create(file=("big.bin", b"x" * 5000), purpose="user_data")
    assert err.value.status_code == 413
    assert "1000 bytes" in err.value.message
    assert err.value.body["code"] == "payload_too_large"  # type: ignore[index]
    ok = await sdk.files.create(file=("edge.bin", b"x" * 1000), purpose="user_data")
    assert ok.bytes == 1000
    with pytest.raises(openai.APIStatusError) as err:
        await sdk.uploads.create(bytes=5001, filename="a", mime_type="text/plain",
                                 purpose="user_data")
    assert err.value.status_code == 413
    up = await sdk.uploads.create(bytes=600, filename="a", mime_type="text/plain",
                                  purpose="user_data")
    with pytest.raises(openai.APIStatusError) as err:
        await sdk.uploads.parts.create(upload_id=up.id, data=b"y" * 301)
    assert err.value.status_code == 413
    assert "300 bytes" in err.value.message and "max_part_bytes" in err.value.message


async def test_upload_in_parts_round_trip(sdk: openai.AsyncOpenAI, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 3
    up = await sdk.uploads.create(bytes=len(blob), filename="r.bin",
                                  mime_type="application/x-test", purpose="assistants")
    assert up.status == "pending" and up.expires_at == up.created_at + 3600
    parts = [await sdk.uploads.parts.create(upload_id=up.id, data=blob[i:i + 300])
             for i in range(0, len(blob), 300)]
    assert [p.object for p in parts] == ["upload.part"] * 3
    with pytest.raises(openai.BadRequestError) as err:  # wrong order: wrong md5
        await sdk.uploads.complete(upload_id=up.id, part_ids=[p.id for p in parts[::-1]],
                                   md5=hashlib.md5(blob).hexdigest())
    assert err.value.code == "md5_mismatch"
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.uploads.complete(upload_id=up.id, part_ids=[parts[0].id])
    assert err.value.code == "size_mismatch"
    done = await sdk.uploads.complete(upload_id=up.id, part_ids=[p.id for p in parts],
                                      md5=hashlib.md5(blob).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(blob) and done.file.filename == "r.bin"
    content = await sdk.files.content(done.file.id)
    assert content.content == blob
    assert content.response.headers["content-type"] == "application/x-test"
    assert _blobs(tmp_path) == [done.file.id]  # the parts are gone
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.uploads.cancel(up.id)
    assert err.value.code == "upload_completed"


async def test_cancel_and_expiry_drop_parts(
    sdk: openai.AsyncOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = await sdk.uploads.create(bytes=10, filename="a", mime_type="text/plain",
                                  purpose="user_data")
    await sdk.uploads.parts.create(upload_id=up.id, data=b"12345")
    cancelled = await sdk.uploads.cancel(up.id)
    assert cancelled.status == "cancelled"
    assert _blobs(tmp_path) == []
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.uploads.parts.create(upload_id=up.id, data=b"12345")
    assert err.value.code == "upload_cancelled"

    up = await sdk.uploads.create(bytes=10, filename="a", mime_type="text/plain",
                                  purpose="user_data")
    part = await sdk.uploads.parts.create(upload_id=up.id, data=b"1234567890")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3601)
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.uploads.complete(upload_id=up.id, part_ids=[part.id])
    assert err.value.code == "upload_expired"
    assert _blobs(tmp_path) == []


async def test_serving_files_without_its_stores_is_a_start_up_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    del config.storage.stores["file_records"]
    with pytest.raises(ConfigError, match="file_records"):
        await Stack(config).start()
