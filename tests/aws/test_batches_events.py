"""`fnstack invoke BatchesFunction` with the sample events, on emulated AWS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.aws.conftest import EVENTS, ROOT


def _invoke(event: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "BatchesFunction",
         "--event", str(EVENTS / event), "--emulate-aws"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize(("event", "status", "expect"), [
    ("api-batches-list.json", 200, {"object": "list", "data": [], "has_more": False}),
    ("api-batches-get-missing.json", 404, {"error": {
        "message": "batch 'batch_unknown' not found", "type": "invalid_request_error",
        "param": "batch_id", "code": "not_found"}}),
    # The sample names a file the fresh emulated bucket does not hold.
    ("api-batches-create.json", 404, {"error": {
        "message": "input file 'file-unknown' not found", "type": "invalid_request_error",
        "param": "input_file_id", "code": "not_found"}}),
])
def test_batches_events(event: str, status: int, expect: dict[str, object]) -> None:
    out = _invoke(event)
    assert out["statusCode"] == status, out
    body = json.loads(str(out["body"]))
    assert {k: body[k] for k in expect} == expect
