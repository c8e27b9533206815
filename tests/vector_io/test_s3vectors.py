"""remote::s3vectors specifics: what reaches the service (names, filters, limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from fnstack.api.vector_io import Chunk, Filter
from fnstack.spec import ProviderContext
from providers.vector_io._common import mongo_filter
from providers.vector_io.s3vectors import index_name
from tests.support.fake_s3vectors import FakeS3Vectors
from tests.vector_io.conftest import open_spec

FILTER = TypeAdapter(Filter)


def test_index_names_fit_s3_vectors_rules() -> None:
    for index_id in ("vs_ABC123", "x", "a" * 63, "Vs-9_z"):
        name = index_name("fnstack-", index_id)
        assert 3 <= len(name) <= 63
        assert name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert index_name("p-", "vs_A") != index_name("p-", "vs_a")  # no case collisions


@pytest.mark.parametrize(("raw", "expected", "exact"), [
    ({"type": "eq", "key": "a", "value": "x"}, {"a": {"$eq": "x"}}, True),
    ({"type": "ne", "key": "a", "value": 1},
     {"$and": [{"a": {"$exists": True}}, {"a": {"$ne": 1}}]}, True),
    ({"type": "nin", "key": "a", "value": [1, 2]},
     {"$and": [{"a": {"$exists": True}}, {"a": {"$nin": [1, 2]}}]}, True),
    ({"type": "gte", "key": "y", "value": 2020}, {"y": {"$gte": 2020}}, True),
    # S3 Vectors orders numbers only: a string range widens to $exists, checked after.
    ({"type": "gt", "key": "a", "value": "b"}, {"a": {"$exists": True}}, False),
    ({"type": "or", "filters": [{"type": "eq", "key": "a", "value": True},
                                {"type": "lt", "key": "b", "value": "z"}]},
     {"$or": [{"a": {"$eq": True}}, {"b": {"$exists": True}}]}, False),
])
def test_filter_translation(raw: dict[str, Any], expected: dict[str, Any], exact: bool) -> None:
    assert mongo_filter(FILTER.validate_python(raw)) == (expected, exact)


async def test_requests_on_the_wire(s3vectors_server: FakeS3Vectors) -> None:
    config = {"vector_bucket": "fnstack-test", "endpoint_url": s3vectors_server.url,
              "region": "us-east-1"}
    ctx = ProviderContext(provider_id="s3vectors", cache_dir=Path("/nonexistent"))
    provider: Any = await open_spec("remote::s3vectors", config, ctx)
    name = index_name("fnstack-", "vs_wire")

    def calls(operation: str) -> list[dict[str, Any]]:
        return [b for op, b in s3vectors_server.calls
                if op == operation and b.get("indexName") == name]

    try:
        await provider.create_index("vs_wire", 4)
        [create] = calls("CreateIndex")
        assert create["distanceMetric"] == "cosine" and create["dimension"] == 4
        assert create["metadataConfiguration"]["nonFilterableMetadataKeys"] == [
            "fnstack_content", "fnstack_attributes"]
        await provider.insert("vs_wire", [
            Chunk(chunk_id=f"f:{n}", file_id="f", content="t", attributes={"n": n},
                  embedding=[1.0, n, 0.0, 0.0]) for n in range(1200)])
        puts = calls("PutVectors")
        assert [len(b["vectors"]) for b in puts] == [500, 500, 200]
        flt = FILTER.validate_python({"type": "lt", "key": "n", "value": 3})
        res = await provider.query("vs_wire", mode="vector", k=2, embedding=[1.0, 0, 0, 0],
                                   filters=flt)
        assert [r.chunk_id for r in res] == ["f:0", "f:1"]
        op, body = s3vectors_server.calls[-1]
        assert op == "QueryVectors" and body["topK"] == 2 and body["filter"] == {"n": {"$lt": 3}}
        await provider.delete_file("vs_wire", "f")  # 1200 chunks: 12 query+delete rounds
        deletes = calls("DeleteVectors")
        assert sum(len(b["keys"]) for b in deletes) == 1200
    finally:
        await provider.delete_index("vs_wire")
        await provider.shutdown()
