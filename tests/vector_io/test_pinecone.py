"""remote::pinecone specifics: namespaces, the marker, what reaches the data plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from fnstack.api.vector_io import Chunk, Filter
from fnstack.errors import ConflictError
from fnstack.spec import ProviderContext
from tests.support.fake_pinecone import API_KEY, FakePinecone
from tests.vector_io.conftest import open_spec


async def test_namespaces_marker_and_pushdown(pinecone_server: FakePinecone) -> None:
    ctx = ProviderContext(provider_id="pinecone", cache_dir=Path("/nonexistent"))
    config = {"api_key": API_KEY, "host": pinecone_server.url, "namespace_prefix": "t-"}
    provider: Any = await open_spec("remote::pinecone", config, ctx)
    try:
        with pytest.raises(ConflictError):  # the Pinecone index fixes the dimension
            await provider.create_index("vs_pc", 16)
        await provider.create_index("vs_pc", 8)
        assert "__fnstack_index__" in pinecone_server.namespaces["t-vs_pc"]
        await provider.insert("vs_pc", [
            Chunk(chunk_id=f"f:{n}", file_id="f", content=f"t{n}", attributes={"n": n},
                  embedding=[1.0, n / 10, 0, 0, 0, 0, 0, 0]) for n in range(250)])
        upserts = [b for path, b in pinecone_server.calls
                   if path == "/vectors/upsert" and b.get("namespace") == "t-vs_pc"]
        assert [len(b["vectors"]) for b in upserts] == [1, 100, 100, 50]
        # The marker is the nearest vector to [1, 0, ...] and is never answered.
        res = await provider.query("vs_pc", mode="vector", k=3, embedding=[1.0] + [0.0] * 7)
        assert [r.chunk_id for r in res] == ["f:0", "f:1", "f:2"]
        flt = TypeAdapter(Filter).validate_python({"type": "gte", "key": "n", "value": 200})
        res = await provider.query("vs_pc", mode="vector", k=2, embedding=[1.0] + [0.0] * 7,
                                   filters=flt)
        assert [r.chunk_id for r in res] == ["f:200", "f:201"]
        path, body = pinecone_server.calls[-1]
        assert path == "/query" and body["filter"] == {"n": {"$gte": 200}} and body["topK"] == 3
        await provider.delete_file("vs_pc", "f")
        assert list(pinecone_server.namespaces["t-vs_pc"]) == ["__fnstack_index__"]
    finally:
        await provider.delete_index("vs_pc")
        await provider.shutdown()
    assert "t-vs_pc" not in pinecone_server.namespaces
