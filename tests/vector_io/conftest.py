"""Vector IO fixtures: every conformance test runs once per provider.

A `Backend` opens providers on one storage: ``open()`` twice gives two processes' view
of the same indexes (the restart test closes one and opens another). Servers (a real
PostgreSQL with pgvector, the S3 Vectors and Pinecone fakes) start once per session and
only when their provider is selected; each test uses its own index ids.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fnstack.api.vector_io import VectorIOProvider
from fnstack.spec import ProviderContext, load_spec
from fnstack.storage import KVSqliteConfig, LocalFSConfig, StorageConfig, StoreRef, Stores
from tests.support.fake_pinecone import API_KEY as PINECONE_KEY
from tests.support.fake_pinecone import FakePinecone
from tests.support.fake_s3vectors import FakeS3Vectors
from tests.support.pgserver import PgVectorServer


@dataclass
class Backend:
    name: str
    opener: Callable[[], Awaitable[VectorIOProvider]]
    opened: list[VectorIOProvider] = field(default_factory=list)

    async def open(self) -> VectorIOProvider:
        provider = await self.opener()
        self.opened.append(provider)
        return provider


async def open_spec(provider_type: str, config: dict[str, Any], ctx: ProviderContext) -> Any:
    """Build a provider the way the stack does: entry point, config class, factory."""
    spec = load_spec(provider_type)
    return await spec.factory(spec.config_class.model_validate(config), ctx)


def _inline(tmp: Path) -> Callable[[], Awaitable[VectorIOProvider]]:
    ctx = ProviderContext(provider_id="inline", cache_dir=tmp / "cache")
    return lambda: open_spec("inline::vector", {"root": str(tmp / "vio")}, ctx)


def _inline_blob(tmp: Path) -> Callable[[], Awaitable[VectorIOProvider]]:
    # Every open gets a fresh local folder: what survives lives in the blob store only,
    # as for a Lambda function whose /tmp is new at each cold start.
    # As on AWS: index files in the blob store, their pointers in the kv store.
    stores = Stores(StorageConfig(
        backends={"blobs": LocalFSConfig(type="blob_localfs", root=str(tmp / "blobs")),
                  "kv": KVSqliteConfig(type="kv_sqlite", db_path=str(tmp / "kv.db"))},
        stores={"vector_io": StoreRef(backend="blobs", prefix="vector_io/"),
                "manifests": StoreRef(backend="kv", namespace="vector_io")},
    ))

    async def opener() -> VectorIOProvider:
        root = tmp / f"tmp-{uuid.uuid4().hex[:8]}"
        ctx = ProviderContext(provider_id="inline", cache_dir=tmp / "cache", stores=stores)
        config = {"root": str(root), "blob_store": "vector_io", "manifest_store": "manifests",
                  "sync_interval_s": 0}
        provider: VectorIOProvider = await open_spec("inline::vector", config, ctx)
        return provider

    return opener


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgVectorServer]:
    with PgVectorServer() as server:
        yield server


def _pgvector(request: pytest.FixtureRequest) -> Callable[[], Awaitable[VectorIOProvider]]:
    server: PgVectorServer = request.getfixturevalue("pg_server")
    ctx = ProviderContext(provider_id="pgvector", cache_dir=Path("/nonexistent"))
    return lambda: open_spec("remote::pgvector", {"dsn": server.dsn, "min_connections": 0}, ctx)


@pytest.fixture(scope="session")
def s3vectors_server() -> Iterator[FakeS3Vectors]:
    import boto3

    with FakeS3Vectors() as fake:
        client = boto3.client("s3vectors", endpoint_url=fake.url, region_name="us-east-1")
        client.create_vector_bucket(vectorBucketName="fnstack-test")
        client.close()
        yield fake


def _s3vectors(request: pytest.FixtureRequest) -> Callable[[], Awaitable[VectorIOProvider]]:
    fake: FakeS3Vectors = request.getfixturevalue("s3vectors_server")
    ctx = ProviderContext(provider_id="s3vectors", cache_dir=Path("/nonexistent"))
    config = {"vector_bucket": "fnstack-test", "endpoint_url": fake.url, "region": "us-east-1"}
    return lambda: open_spec("remote::s3vectors", config, ctx)


@pytest.fixture(scope="session")
def pinecone_server() -> Iterator[FakePinecone]:
    with FakePinecone(dimension=8) as fake:  # the suite's DIM
        yield fake


def _pinecone(request: pytest.FixtureRequest) -> Callable[[], Awaitable[VectorIOProvider]]:
    fake: FakePinecone = request.getfixturevalue("pinecone_server")
    ctx = ProviderContext(provider_id="pinecone", cache_dir=Path("/nonexistent"))
    config = {"api_key": PINECONE_KEY, "host": fake.url}
    return lambda: open_spec("remote::pinecone", config, ctx)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Callable[[], Awaitable[Any]]]] = {
    "inline": lambda request, tmp: _inline(tmp),
    "inline-blob": lambda request, tmp: _inline_blob(tmp),
    "pgvector": lambda request, tmp: _pgvector(request),
    "s3vectors": lambda request, tmp: _s3vectors(request),
    "pinecone": lambda request, tmp: _pinecone(request),
}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b = Backend(request.param, BACKENDS[request.param](request, tmp_path))
    yield b
    for provider in b.opened:
        await provider.shutdown()


@pytest.fixture
async def provider(backend: Backend) -> VectorIOProvider:
    return await backend.open()


@pytest.fixture
def index_id() -> str:
    return f"vs_{uuid.uuid4().hex[:16]}"
