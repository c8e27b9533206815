"""`fnstack invoke`: one event through one function of the built bundle, as Lambda would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.aws.conftest import EVENTS, ROOT


def invoke(function: str, event: str, *extra: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", function, "--event", str(EVENTS / event),
         *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )


def response(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_health_event_on_the_built_bundle(built_bundle: Path) -> None:
    proc = invoke("AdminFunction", "api-health.json", "--emulate-aws")
    out = response(proc)
    assert out["statusCode"] == 200
    assert json.loads(out["body"]) == {"status": "OK"}
    # Lambda's REPORT line, with the cold start's init duration.
    report = next(line for line in proc.stderr.splitlines() if line.startswith("REPORT"))
    assert "Function: AdminFunction" in report and "Init Duration" in report


def test_without_emulation_or_region_it_fails_fast(tmp_path: Path) -> None:
    # Defect 9: it used to answer 500 "internal error" with exit status 0.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"))
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "ModelsFunction", "--event",
         str(EVENTS / "api-models-list.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no AWS region" in proc.stderr and "--emulate-aws" in proc.stderr


def test_the_s3_inbox_event_reaches_the_worker(built_bundle: Path) -> None:
    for event in ("eventbridge-s3-object-created.json", "s3-inbox-object-created.json"):
        out = response(invoke("BatchWorkerFunction", event, "--emulate-aws"))
        assert "inbox/my batch input.jsonl" in out.get("started", []) + out.get("skipped", [])


def test_an_api_event_to_the_worker_is_a_function_error(built_bundle: Path) -> None:
    proc = invoke("BatchWorkerFunction", "api-health.json", "--emulate-aws")
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["errorType"] == "UnsupportedEventError"
    assert "handles sqs, s3 events" in err["errorMessage"]


def test_from_source_mode(glue_config: Path) -> None:
    out = response(invoke("AdminFunction", "api-version.json", "--from-source", "--emulate-aws",
                          "--env", f"FNSTACK_CONFIG={glue_config}"))
    from fnstack import __version__

    assert json.loads(out["body"]) == {"version": __version__}


def test_unknown_function_and_event_file_are_errors(built_bundle: Path) -> None:
    proc = invoke("NoSuchFunction", "api-health.json")
    assert proc.returncode == 2
    assert "defines no function 'NoSuchFunction'" in proc.stderr
    assert "AdminFunction" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", "AdminFunction", "--event", "nope.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "cannot read the event nope.json" in proc.stderr
