"""Storage fixtures: every conformance test runs once per backend.

kv: ``kv_sqlite`` (a temp file) and ``kv_dynamodb`` (moto server). blob: ``blob_localfs``
(a temp folder) and ``blob_s3`` (moto server). The moto server starts once per session
and only when an AWS backend is selected; each test gets its own namespace or prefix
(and sqlite/localfs their own file/folder), so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from fnstack.storage import (
    BackendConfig,
    BlobS3Config,
    BlobStore,
    KVDynamoDBConfig,
    KVSqliteConfig,
    KVStore,
    LocalFSConfig,
)
from fnstack.storage import open_blob as open_blob_store
from fnstack.storage import open_kv as open_kv_store
from tests.support.aws import FAKE_ENV, REGION, MotoServer, create_bucket, create_table

TABLE = "fnstack-test"
BUCKET = "fnstack-test"

KVOpener = Callable[[str], KVStore]
BlobOpener = Callable[[str], BlobStore]
S = TypeVar("S", KVStore, BlobStore)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    # The stores use the default credential chain, as in Lambda: give it fake keys for
    # the session (and restore the environment after).
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_ENV.items():
            mp.setenv(name, value)
        with MotoServer() as server:
            create_table(server.endpoint, TABLE)
            create_bucket(server.endpoint, BUCKET)
            yield server


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def _closing(open_one: Callable[[str], S]) -> AsyncIterator[Callable[[str], S]]:
    """An opener that remembers each store it opens, and closes them all at the end."""
    opened: list[S] = []

    def opener(name: str) -> S:
        store = open_one(name)
        opened.append(store)
        return store

    try:
        yield opener
    finally:
        for store in opened:
            await store.close()


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    """The backend named by the fixture's param: in ``tmp_path``, or on the moto server."""
    name: str = request.param
    if name == "kv_sqlite":
        return KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db"))
    if name == "blob_localfs":
        return LocalFSConfig(type="blob_localfs", root=str(tmp_path / "blobs"))
    endpoint = request.getfixturevalue("moto").endpoint
    if name == "kv_dynamodb":
        return KVDynamoDBConfig(
            type="kv_dynamodb", table=TABLE, region=REGION, endpoint_url=endpoint
        )
    return BlobS3Config(type="blob_s3", bucket=BUCKET, region=REGION, endpoint_url=endpoint)


@pytest.fixture(params=["kv_sqlite", "kv_dynamodb"])
async def open_kv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVOpener]:
    """Opens more stores on this test's backend (a second instance, another namespace)."""
    config = _backend(request, tmp_path)
    async with _closing(lambda namespace: open_kv_store(config, namespace)) as opener:
        yield opener


@pytest.fixture
def kv_namespace() -> str:
    return _unique("ns")


@pytest.fixture
def kv(open_kv: KVOpener, kv_namespace: str) -> KVStore:
    return open_kv(kv_namespace)


@pytest.fixture(params=["blob_localfs", "blob_s3"])
async def open_blob(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobOpener]:
    """Opens more stores on this test's backend (a second instance, another prefix)."""
    config = _backend(request, tmp_path)
    async with _closing(lambda prefix: open_blob_store(config, prefix)) as opener:
        yield opener


@pytest.fixture
def blob(open_blob: BlobOpener) -> BlobStore:
    return open_blob(_unique("files") + "/")
