"""The blob contract, identical for every backend (see conftest: local folder, S3 on moto)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from fnstack.errors import InvalidRequestError, NotFoundError
from fnstack.storage import BlobStore
from fnstack.storage.blob_s3 import PART_SIZE
from tests.storage.conftest import BlobOpener

BIG = 2 * PART_SIZE + 12345  # three parts on S3, the last one short


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _read(blob: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in await blob.stream(key)])


async def test_put_get_bytes(blob: BlobStore) -> None:
    info = await blob.put("a.txt", b"hello", content_type="text/plain")
    assert (info.key, info.size, info.content_type) == ("a.txt", 5, "text/plain")
    assert await blob.get("a.txt") == b"hello"
    head = await blob.head("a.txt")
    assert (head.key, head.size, head.content_type) == ("a.txt", 5, "text/plain")
    assert head.etag
    assert await blob.exists("a.txt")


async def test_empty_object(blob: BlobStore) -> None:
    await blob.put("empty", b"")
    assert await blob.get("empty") == b""
    head = await blob.head("empty")
    assert (head.size, head.content_type) == (0, "application/octet-stream")


async def test_put_large_stream(blob: BlobStore) -> None:
    data = os.urandom(BIG)
    info = await blob.put("dir/big.bin", _chunks(data), content_type="application/x-test")
    assert (info.size, info.content_type) == (BIG, "application/x-test")
    back = await _read(blob, "dir/big.bin")
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    head = await blob.head("dir/big.bin")
    assert (head.size, head.content_type) == (BIG, "application/x-test")


async def test_put_small_stream(blob: BlobStore) -> None:
    info = await blob.put("small", _chunks(b"x" * 1000, 100), content_type="text/plain")
    assert info.size == 1000
    assert await blob.get("small") == b"x" * 1000
    assert (await blob.head("small")).content_type == "text/plain"


async def test_stream_reads_in_chunks(blob: BlobStore) -> None:
    data = os.urandom(3 * blob.chunk_size + 7)
    await blob.put("k", data)
    chunks = [chunk async for chunk in await blob.stream("k")]
    assert len(chunks) >= 4 and max(map(len, chunks)) <= blob.chunk_size
    assert b"".join(chunks) == data


async def test_failed_stream_leaves_nothing(blob: BlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (PART_SIZE + 1)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await blob.put("half", broken())
    assert not await blob.exists("half")
    assert await blob.list() == []


async def test_missing(blob: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        await blob.get("nope")
    with pytest.raises(NotFoundError):
        await blob.stream("nope")  # before the first chunk
    with pytest.raises(NotFoundError):
        await blob.head("nope")
    assert not await blob.exists("nope")


async def test_delete(blob: BlobStore) -> None:
    await blob.put("k", b"1")
    assert await blob.delete("k") is True
    assert await blob.delete("k") is False
    assert not await blob.exists("k")
    with pytest.raises(NotFoundError):
        await blob.get("k")


async def test_overwrite_replaces(blob: BlobStore) -> None:
    await blob.put("k", b"first version, longer", content_type="text/plain")
    await blob.put("k", b"second", content_type="application/json")
    assert await blob.get("k") == b"second"
    head = await blob.head("k")
    assert (head.size, head.content_type) == (6, "application/json")
    assert [b.key for b in await blob.list()] == ["k"]


async def test_list_by_prefix_sorted(blob: BlobStore) -> None:
    for key in ["b/2", "a/2", "a/10", "a/1", "c", "a/sub/x", "ab"]:
        await blob.put(key, key.encode(), content_type="text/plain")
    listed = await blob.list("a/")
    assert [b.key for b in listed] == ["a/1", "a/10", "a/2", "a/sub/x"]
    assert [b.size for b in listed] == [3, 4, 3, 7]
    assert all(b.content_type == "text/plain" for b in listed)
    assert [b.key for b in await blob.list("a")] == ["a/1", "a/10", "a/2", "a/sub/x", "ab"]
    assert [b.key for b in await blob.list()] == [
        "a/1", "a/10", "a/2", "a/sub/x", "ab", "b/2", "c",
    ]
    assert await blob.list("zzz") == []


async def test_prefixes_are_isolated(open_blob: BlobOpener, blob: BlobStore) -> None:
    other = open_blob(blob.prefix.rstrip("/") + "-other/")
    await blob.put("k", b"mine")
    await other.put("k", b"theirs")
    assert await blob.get("k") == b"mine"
    assert [b.key for b in await blob.list()] == ["k"]


async def test_unicode_keys(blob: BlobStore) -> None:
    key = "dír/ñame with spaces 😀.txt"
    await blob.put(key, b"x")
    assert await blob.get(key) == b"x"
    assert [b.key for b in await blob.list("dír/")] == [key]


@pytest.mark.parametrize("key", ["", "../x", "a/../../x", "/abs", "a//b", "a/./b", "dir/"])
async def test_invalid_keys(blob: BlobStore, key: str) -> None:
    with pytest.raises(InvalidRequestError):
        await blob.put(key, b"x")
    with pytest.raises(InvalidRequestError):
        await blob.get(key)
    with pytest.raises(InvalidRequestError):
        await blob.head(key)
    with pytest.raises(InvalidRequestError):
        await blob.delete(key)
