"""What only the AWS backends have: the stored item layout, multipart uploads, and the
translation of AWS errors into fnstack's at the backend boundary."""

from __future__ import annotations

import json
import math
import os
import socket
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fnstack.errors import InternalError, PayloadTooLargeError, RateLimitError, UpstreamError
from fnstack.storage import BlobS3Config, KVDynamoDBConfig, Owner, open_blob, open_kv
from fnstack.storage.blob_s3 import PART_SIZE, S3BlobStore
from fnstack.storage.kv_dynamodb import DynamoDBKVStore
from tests.storage.conftest import BUCKET, TABLE
from tests.support.aws import REGION, MotoServer, client


def _kv(
    server: MotoServer, namespace: str, table: str = TABLE, shards: int = 16
) -> DynamoDBKVStore:
    store = open_kv(
        KVDynamoDBConfig(
            type="kv_dynamodb",
            table=table,
            region=REGION,
            endpoint_url=server.endpoint,
            shards=shards,
        ),
        namespace,
    )
    assert isinstance(store, DynamoDBKVStore)
    return store


def _blob(server: MotoServer, prefix: str, bucket: str = BUCKET) -> S3BlobStore:
    store = open_blob(
        BlobS3Config(type="blob_s3", bucket=bucket, region=REGION, endpoint_url=server.endpoint),
        prefix,
    )
    assert isinstance(store, S3BlobStore)
    return store


def _error(code: str, status: int, message: str = "boom") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},  # type: ignore[typeddict-item]
        },
        "PutItem",
    )


# --- DynamoDB ----------------------------------------------------------------------------


async def test_item_layout(moto: MotoServer) -> None:
    """The attributes template.yaml's table and index rely on."""
    ns = f"ns-{uuid.uuid4().hex}"
    store = _kv(moto, ns)
    rec = await store.put("k", {"a": 1}, owner=Owner("alice", {"r": ["x"]}), ttl=100)
    shard = zlib.crc32(b"k") % 16
    assert store.partition("k") == f"{ns}#{shard}"
    item = client("dynamodb", moto.endpoint).get_item(
        TableName=TABLE, Key={"pk": {"S": f"{ns}#{shard}"}, "sk": {"S": "k"}}
    )["Item"]
    assert rec.expires_at is not None
    assert item["v"] == {"S": '{"a":1}'}
    assert item["ver"] == {"N": "1"}
    assert item["own"] == {"S": "alice"}
    assert Owner.from_dict(json.loads(item["ownj"]["S"])) == Owner("alice", {"r": ["x"]})
    assert float(item["exp"]["N"]) == rec.expires_at
    assert item["ttl"] == {"N": str(math.ceil(rec.expires_at))}
    assert item["gsi1pk"] == {"S": f"{ns}#alice"}
    assert item["gsi1sk"] == {"S": "k"}


async def test_counter_item_layout(moto: MotoServer) -> None:
    """Counters are top-level numbers (ADD works on nothing else), without `v`."""
    ns = f"ns-{uuid.uuid4().hex}"
    store = _kv(moto, ns)
    await store.incr("c", {"requests": 2, "tokens": 7}, ttl=60, owner=Owner("bob"))
    item = client("dynamodb", moto.endpoint).get_item(
        TableName=TABLE, Key={"pk": {"S": store.partition("c")}, "sk": {"S": "c"}}
    )["Item"]
    assert "v" not in item
    assert (item["n_requests"], item["n_tokens"]) == ({"N": "2"}, {"N": "7"})
    assert (item["ver"], item["own"], item["gsi1pk"]) == (
        {"N": "1"}, {"S": "bob"}, {"S": f"{ns}#bob"}
    )
    assert "exp" in item and "ttl" in item


async def test_shards_spread_one_namespace(moto: MotoServer) -> None:
    ns = f"ns-{uuid.uuid4().hex}"
    store = _kv(moto, ns)
    keys = [f"chatcmpl-{i:04d}" for i in range(64)]
    for key in keys:
        await store.put(key, {}, owner=Owner("alice"))
    ddb = client("dynamodb", moto.endpoint)
    counts = [
        ddb.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"{ns}#{n}"}},
        )["Count"]
        for n in range(16)
    ]
    assert sum(counts) == 64 and max(counts) <= 12 and sum(c > 0 for c in counts) >= 12
    # Listings merge the shards back into key order, filtered or not.
    assert [r.key for r in (await store.list(limit=1000)).records] == keys
    assert [r.key for r in (await store.list(limit=5, order="desc")).records] == keys[::-1][:5]
    assert [r.key for r in (await store.list(owner="alice", limit=1000)).records] == keys


async def test_one_shard_is_the_unsharded_layout(moto: MotoServer) -> None:
    ns = f"ns-{uuid.uuid4().hex}"
    store = _kv(moto, ns, shards=1)
    await store.put("k", {"a": 1})
    assert store.partition("k") == ns
    item = client("dynamodb", moto.endpoint).get_item(
        TableName=TABLE, Key={"pk": {"S": ns}, "sk": {"S": "k"}}
    )
    assert "Item" in item
    assert [r.key for r in (await store.list()).records] == ["k"]


async def test_owner_index_key_is_not_ambiguous(moto: MotoServer) -> None:
    # f"{namespace}#{principal}" collides for ("a#b", "c") and ("a", "b#c").
    base = uuid.uuid4().hex
    first, second = _kv(moto, f"{base}#b"), _kv(moto, base)
    await first.put("k1", {}, owner=Owner("c"))
    await second.put("k2", {}, owner=Owner("b#c"))
    assert [r.key for r in (await first.list(owner="c")).records] == ["k1"]
    assert [r.key for r in (await second.list(owner="b#c")).records] == ["k2"]


async def test_missing_table(moto: MotoServer) -> None:
    store = _kv(moto, "ns", table="no-such-table")
    with pytest.raises(InternalError, match="no-such-table") as err:
        await store.get("k")
    assert err.value.code == "table_not_found"


async def test_item_too_large(moto: MotoServer) -> None:
    with pytest.raises(PayloadTooLargeError):
        await _kv(moto, "ns").put("big", {"x": "y" * 500_000})


async def test_unreachable_endpoint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    store = open_kv(
        KVDynamoDBConfig(
            type="kv_dynamodb", table=TABLE, region=REGION, endpoint_url=f"http://127.0.0.1:{port}"
        ),
        "ns",
    )
    with pytest.raises(UpstreamError, match=TABLE):
        await store.get("k")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ProvisionedThroughputExceededException", 400, RateLimitError),
        ("ThrottlingException", 400, RateLimitError),
        ("InternalServerError", 500, UpstreamError),
        ("AccessDeniedException", 400, InternalError),
    ],
)
def test_dynamodb_error_translation(
    moto: MotoServer, code: str, status: int, expected: type[Exception]
) -> None:
    err = _kv(moto, "ns")._translate(_error(code, status))
    assert type(err) is expected
    assert TABLE in err.message
    if expected is not RateLimitError:
        assert code in err.message


# --- S3 ----------------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_large_stream_uses_multipart(moto: MotoServer) -> None:
    prefix = f"mp-{uuid.uuid4().hex}/"
    data = os.urandom(PART_SIZE * 2 + 1)
    info = await _blob(moto, prefix).put("big", _chunks(data))
    assert info.etag is not None and info.etag.endswith("-3")  # S3's multipart ETag
    head: Any = client("s3", moto.endpoint).head_object(Bucket=BUCKET, Key=prefix + "big")
    assert head["ContentLength"] == len(data)


async def test_failed_multipart_upload_is_aborted(moto: MotoServer) -> None:
    prefix = f"abort-{uuid.uuid4().hex}/"

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (PART_SIZE + 1)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await _blob(moto, prefix).put("half", broken())
    pending = client("s3", moto.endpoint).list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    assert pending.get("Uploads", []) == []


async def test_missing_bucket(moto: MotoServer) -> None:
    store = _blob(moto, "p/", bucket="no-such-bucket")
    with pytest.raises(InternalError, match="no-such-bucket") as err:
        await store.put("k", b"x")
    assert err.value.code == "bucket_not_found"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [("SlowDown", 503, RateLimitError), ("InternalError", 500, UpstreamError)],
)
def test_s3_error_translation(
    moto: MotoServer, code: str, status: int, expected: type[Exception]
) -> None:
    err = _blob(moto, "p/")._translate(_error(code, status))
    assert type(err) is expected
    assert BUCKET in err.message
