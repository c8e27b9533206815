"""`fnstack invoke`: each sample event through its function, as `sam local invoke` would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.aws.conftest import EVENTS, ROOT


def invoke(function: str, event: str, config: Path, *extra: str) -> subprocess.CompletedProcess[
    str
]:
    return subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", function, "--event", str(EVENTS / event),
         "--env", f"FNSTACK_CONFIG={config}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def response(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


CASES = [
    ("AdminFunction", "api-health.json", 200, {"status": "OK"}),
    ("AdminFunction", "api-providers.json", 200, {"object": "list", "data": []}),
    ("AdminFunction", "api-provider-missing.json", 404, "invalid_request_error"),
    ("AdminFunction", "api-not-found.json", 404, "not_found"),
]


@pytest.mark.parametrize(("function", "event", "status", "expect"), CASES)
def test_api_events(function: str, event: str, status: int, expect: Any, glue_config: Path) -> None:
    out = response(invoke(function, event, glue_config))
    assert out["statusCode"] == status
    body = json.loads(out["body"])
    if isinstance(expect, dict):
        assert body == expect
    else:
        assert set(body) == {"error"}
        assert expect in (body["error"]["type"], body["error"]["code"])
    assert out["headers"]["content-type"] == "application/json"


def test_version_event(glue_config: Path) -> None:
    from fnstack import __version__

    out = response(invoke("AdminFunction", "api-version.json", glue_config))
    assert json.loads(out["body"]) == {"version": __version__}


def test_models_events_on_emulated_dynamodb(glue_config: Path) -> None:
    out = response(invoke("ModelsFunction", "api-models-list.json", glue_config, "--emulate-aws"))
    assert out["statusCode"] == 200
    assert json.loads(out["body"]) == {"object": "list", "data": []}
    out = response(invoke("ModelsFunction", "api-models-get.json", glue_config, "--emulate-aws"))
    assert out["statusCode"] == 404
    error = json.loads(out["body"])["error"]
    # The whole greedy path parameter reached the app as the model id.
    assert "meta-llama/Llama-3.2-1B-Instruct" in error["message"]
    assert error["code"] == "model_not_found"


def test_sqs_event_reaches_the_worker(glue_config: Path) -> None:
    records = json.loads((EVENTS / "sqs-batch.json").read_text())["Records"]
    out = response(invoke("BatchWorkerFunction", "sqs-batch.json", glue_config))
    # Batches are not implemented yet: every message is reported failed (so SQS keeps it
    # and finally dead-letters it), none is acknowledged and lost.
    assert out == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records]}


def test_s3_event_reaches_the_worker(glue_config: Path) -> None:
    proc = invoke("BatchWorkerFunction", "s3-inbox-object-created.json", glue_config)
    assert response(proc) == {"started": [], "skipped": ["inbox/my batch input.jsonl"]}
    assert "batches API not implemented yet" in proc.stderr


def test_an_api_event_to_the_worker_is_refused(glue_config: Path) -> None:
    proc = invoke("BatchWorkerFunction", "api-health.json", glue_config)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["errorType"] == "UnsupportedEventError"
    assert "handles sqs, s3 events" in err["errorMessage"]


def test_unknown_function_is_an_error(glue_config: Path) -> None:
    proc = invoke("NoSuchFunction", "api-health.json", glue_config)
    assert proc.returncode == 2
    assert "defines no function 'NoSuchFunction'" in proc.stderr
    assert "AdminFunction" in proc.stderr


def test_unknown_event_file_is_an_error(glue_config: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "AdminFunction", "--event", "nope.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "cannot read the event nope.json" in proc.stderr
