"""Named storage backends and the stores that reference them.

Backends are declared once under ``storage.backends`` and referenced by name from
``storage.stores``; a store names a kv ``namespace`` or a blob ``prefix`` on its backend.
Backend modules are imported only when a store on them is first used (boto3 stays out of
the local server's start-up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.storage.base import (
    BlobInfo,
    BlobStore,
    KVPage,
    KVRecord,
    KVStore,
    Owner,
)

__all__ = [
    "BackendConfig",
    "BlobInfo",
    "BlobS3Config",
    "BlobStore",
    "KVDynamoDBConfig",
    "KVPage",
    "KVRecord",
    "KVSqliteConfig",
    "KVStore",
    "LocalFSConfig",
    "Owner",
    "StorageConfig",
    "StoreRef",
    "Stores",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _empty_is_none(value: str | None) -> str | None:
    # `${env.X:=}` substitutes "", which means "not set" for optional endpoints.
    return value or None


class KVSqliteConfig(_Strict):
    type: Literal["kv_sqlite"]
    db_path: str


class KVDynamoDBConfig(_Strict):
    type: Literal["kv_dynamodb"]
    table: str = Field(min_length=3)
    region: str | None = None
    endpoint_url: str | None = None
    # Partitions each namespace's records are spread over (see kv_dynamodb); changing
    # it moves where records are looked up, so set it before storing data. 1: pk =
    # namespace, the layout before sharding.
    shards: int = Field(default=16, ge=1, le=1024)

    _empty = field_validator("region", "endpoint_url", mode="before")(_empty_is_none)


class LocalFSConfig(_Strict):
    type: Literal["blob_localfs"]
    root: str


class BlobS3Config(_Strict):
    type: Literal["blob_s3"]
    bucket: str = Field(min_length=3)
    region: str | None = None
    endpoint_url: str | None = None

    _empty = field_validator("region", "endpoint_url", mode="before")(_empty_is_none)


BackendConfig = Annotated[
    KVSqliteConfig | KVDynamoDBConfig | LocalFSConfig | BlobS3Config,
    Field(discriminator="type"),
]

KV_TYPES = ("kv_sqlite", "kv_dynamodb")
BLOB_TYPES = ("blob_localfs", "blob_s3")


class StoreRef(_Strict):
    backend: str
    namespace: str | None = None  # kv stores
    prefix: str | None = None  # blob stores


class StorageConfig(_Strict):
    backends: dict[str, BackendConfig] = {}
    stores: dict[str, StoreRef] = {}

    def check(self) -> list[tuple[str, str]]:
        """Problems as (key path, message): missing backends, wrong families."""
        problems: list[tuple[str, str]] = []
        for name, ref in self.stores.items():
            path = f"storage.stores.{name}.backend"
            backend = self.backends.get(ref.backend)
            if backend is None:
                known = ", ".join(sorted(self.backends)) or "none declared"
                problems.append((path, f"unknown backend {ref.backend!r} (declared: {known})"))
                continue
            if ref.namespace is not None and backend.type not in KV_TYPES:
                problems.append(
                    (path, f"store {name!r} has a namespace, so it needs a kv backend, "
                     f"but {ref.backend!r} is {backend.type}")
                )
            elif ref.prefix is not None and backend.type not in BLOB_TYPES:
                problems.append(
                    (path, f"store {name!r} has a prefix, so it needs a blob backend, "
                     f"but {ref.backend!r} is {backend.type}")
                )
            elif ref.namespace is None and ref.prefix is None:
                field = "namespace" if backend.type in KV_TYPES else "prefix"
                problems.append((f"storage.stores.{name}", f"store {name!r} needs a {field}"))
        return problems


def _expand(path: str) -> Path:
    return Path(path).expanduser()


class Stores:
    """Opens stores by name on first use and closes them all at shutdown."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self._kv: dict[str, KVStore] = {}
        self._blob: dict[str, BlobStore] = {}

    def has(self, name: str) -> bool:
        return name in self.config.stores

    def kv(self, name: str) -> KVStore:
        if name not in self._kv:
            ref = self._ref(name)
            if ref.namespace is None:
                raise KeyError(f"store {name!r} is not a kv store")
            self._kv[name] = open_kv(self.config.backends[ref.backend], ref.namespace)
        return self._kv[name]

    def blob(self, name: str) -> BlobStore:
        if name not in self._blob:
            ref = self._ref(name)
            if ref.prefix is None:
                raise KeyError(f"store {name!r} is not a blob store")
            self._blob[name] = open_blob(self.config.backends[ref.backend], ref.prefix)
        return self._blob[name]

    def _ref(self, name: str) -> StoreRef:
        try:
            return self.config.stores[name]
        except KeyError:
            raise KeyError(
                f"no store named {name!r} in storage.stores; add one to the run config"
            ) from None

    async def close(self) -> None:
        for kv in self._kv.values():
            await kv.close()
        for blob in self._blob.values():
            await blob.close()
        self._kv.clear()
        self._blob.clear()


def open_kv(config: BackendConfig, namespace: str) -> KVStore:
    if isinstance(config, KVSqliteConfig):
        from fnstack.storage.kv_sqlite import SqliteKVStore

        return SqliteKVStore(_expand(config.db_path), namespace)
    if isinstance(config, KVDynamoDBConfig):
        from fnstack.storage.kv_dynamodb import DynamoDBKVStore

        return DynamoDBKVStore(config, namespace)
    raise TypeError(f"{config.type} is not a kv backend")


def open_blob(config: BackendConfig, prefix: str) -> BlobStore:
    if isinstance(config, LocalFSConfig):
        from fnstack.storage.blob_localfs import LocalFSBlobStore

        return LocalFSBlobStore(_expand(config.root), prefix)
    if isinstance(config, BlobS3Config):
        from fnstack.storage.blob_s3 import S3BlobStore

        return S3BlobStore(config, prefix)
    raise TypeError(f"{config.type} is not a blob backend")
