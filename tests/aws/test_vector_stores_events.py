"""`fnstack invoke VectorStoresFunction` with the sample events, on emulated AWS: the
function builds its stack (inline::vector backed by S3, the layer's embedding model)
and answers in OpenAI's shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.aws.conftest import EVENTS, ROOT


def _invoke(event: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "VectorStoresFunction",
         "--event", str(EVENTS / event), "--emulate-aws"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize(("event", "status", "expect"), [
    ("api-vector-stores-create.json", 200, {"object": "vector_store", "name": "support docs",
                                            "status": "completed",
                                            "metadata": {"team": "support"}}),
    ("api-vector-stores-list.json", 200, {"object": "list", "data": [], "has_more": False}),
    ("api-vector-stores-search-missing.json", 404, {"error": {
        "message": "vector store 'vs_unknown' not found", "type": "invalid_request_error",
        "param": "vector_store_id", "code": "not_found"}}),
])
def test_vector_stores_events(event: str, status: int, expect: dict[str, object]) -> None:
    out = _invoke(event)
    assert out["statusCode"] == status, out
    body = json.loads(str(out["body"]))
    assert {k: body[k] for k in expect} == expect
