"""Storage fixtures: every conformance test runs once per backend.

kv: ``kv_sqlite`` (a temp file) and ``kv_dynamodb`` (moto server). blob: ``blob_localfs``
(a temp folder) and ``blob_s3`` (moto server). The moto server starts once per session
and only when an AWS backend is selected; each test gets its own namespace or prefix
(and sqlite/localfs their own file/folder), so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fnstack.storage import (
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


@pytest.fixture(params=["kv_sqlite", "kv_dynamodb"])
async def open_kv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVOpener]:
    """Opens more stores on this test's backend (a second instance, another namespace)."""
    opened: list[KVStore] = []
    if request.param == "kv_sqlite":
        config: KVSqliteConfig | KVDynamoDBConfig = KVSqliteConfig(
            type="kv_sqlite", db_path=str(tmp_path / "kv.db")
        )
    else:
        server: MotoServer = request.getfixturevalue("moto")
        config = KVDynamoDBConfig(
            type="kv_dynamodb", table=TABLE, region=REGION, endpoint_url=server.endpoint
        )

    def opener(namespace: str) -> KVStore:
        store = open_kv_store(config, namespace)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


@pytest.fixture
def kv_namespace() -> str:
    return _unique("ns")


@pytest.fixture
def kv(open_kv: KVOpener, kv_namespace: str) -> KVStore:
    return open_kv(kv_namespace)


@pytest.fixture(params=["blob_localfs", "blob_s3"])
async def open_blob(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobOpener]:
    opened: list[BlobStore] = []
    if request.param == "blob_localfs":
        config: LocalFSConfig | BlobS3Config = LocalFSConfig(
            type="blob_localfs", root=str(tmp_path / "blobs")
        )
    else:
        server: MotoServer = request.getfixturevalue("moto")
        config = BlobS3Config(
            type="blob_s3", bucket=BUCKET, region=REGION, endpoint_url=server.endpoint
        )

    def opener(prefix: str) -> BlobStore:
        store = open_blob_store(config, prefix)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


@pytest.fixture
def blob(open_blob: BlobOpener) -> BlobStore:
    return open_blob(_unique("files") + "/")
