"""`fnstack invoke FilesFunction` with the sample events: a multipart upload arrives
base64-encoded (as API Gateway sends it) and the greedy file path reaches the app."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.aws.conftest import EVENTS, ROOT


def _invoke(event: str) -> dict[str, object]:
    # The template's own configuration (the aws distribution) on emulated AWS.
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "FilesFunction",
         "--event", str(EVENTS / event), "--emulate-aws"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out


@pytest.mark.parametrize(("event", "status", "expect"), [
    ("api-files-create.json", 200, {"object": "file", "filename": "notes.md", "bytes": 48,
                                    "purpose": "assistants", "status": "processed"}),
    ("api-files-get.json", 404, {"error": {
        "message": "No such File object: file-0000000000000000000000000000",
        "type": "invalid_request_error", "param": "file_id", "code": "not_found"}}),
])
def test_files_events(event: str, status: int, expect: dict[str, object]) -> None:
    out = _invoke(event)
    assert out["statusCode"] == status
    body = json.loads(str(out["body"]))
    assert {k: body[k] for k in expect} == expect
