"""The emulator runs a built bundle as Lambda and API Gateway would.

tests/aws/bundle is a tiny `sam build` output (stdlib only): a Python handler that
reports what it sees from inside its sandbox, and a Web Adapter function whose script
streams server-sent events slowly. `fnstack gateway --build-dir` serves it, as users
start it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fnstack_dev.sandbox import mount_namespaces
from tests.aws.conftest import ROOT
from tests.support.servers import FnstackServer

BUNDLE = Path(__file__).with_name("bundle")
RUNTIME_DIR = ROOT / ".aws-sam" / "lambda-runtime"


def _env() -> dict[str, str]:
    # The runtime folder (bootstrap + boto3) is shared with the real bundle's.
    return {"FNSTACK_LAMBDA_RUNTIME_DIR": str(RUNTIME_DIR), "AWS_REGION": "us-east-1",
            "FNSTACK_SHELL_ONLY": "leaks-if-seen"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("bundle") / "build"
    shutil.copytree(BUNDLE, build)
    return build


@pytest.fixture(scope="module")
def gateway(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[str, Path, FnstackServer]]:
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with FnstackServer(["gateway", "--build-dir", str(built)], env=_env(), log_path=log,
                       startup_timeout=60) as server:
        yield server.base_url.removesuffix("/v1"), log, server


def _get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=30, **kwargs)


def _inside(base: str, path: str = "/test/v1/items/x") -> dict[str, Any]:
    r = _get(base + path)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = json.loads(r.text)
    return answer


def test_the_sandbox_is_lambdas(gateway: tuple[str, Path, FnstackServer], built: Path) -> None:
    base, _, _ = gateway
    inside = _inside(base)
    env = inside["env"]
    # Lambda's PYTHONPATH is its runtime folder only; its bootstrap puts the task root
    # and the layer in front of sys.path, in python3.12's order.
    assert env["PYTHONPATH"] == str(RUNTIME_DIR)
    assert env["LAMBDA_TASK_ROOT"] == str(built / "EchoFunction")
    assert env["_HANDLER"] == "echo.handler"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["FROM_GLOBALS"] == "yes" and env["ECHO_NAME"] == "fnstack-echo"
    opt = "/opt" if mount_namespaces() else str(built / "Layer")
    assert inside["sys_path"][:3] == [str(built / "EchoFunction"),
                                      f"{opt}/python/lib/python3.12/site-packages",
                                      f"{opt}/python"]
    assert inside["layer"] == f"{opt}/python/echolib.py"
    assert env["DATA_DIR"] == f"{opt}/data" and inside["opt_data"] is True
    # Nothing of the calling shell or of the development venv leaks in.
    assert "FNSTACK_SHELL_ONLY" not in env
    assert inside["has_fnstack"] is False
    assert inside["function_name"] == "EchoFunction" and inside["memory"] == "256"
    assert 0 < inside["remaining_ms"] <= 3000


def test_mount_namespaces_put_the_layer_at_opt() -> None:
    # This machine allows them; the path fallback is for those that do not.
    assert mount_namespaces()


def test_warm_instances_are_reused_and_cold_starts_reported(
        gateway: tuple[str, Path, FnstackServer]) -> None:
    base, log, _ = gateway
    first, second = _inside(base), _inside(base)
    assert first["pid"] == second["pid"] and first["started"] == second["started"]
    reports = [line for line in log.read_text().splitlines()
               if line.startswith("REPORT") and "EchoFunction" in line]
    assert len(reports) >= 2
    assert sum("Init Duration" in line for line in reports) == 1


def test_parallel_up_to_reserved_concurrency(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    start = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: _inside(base, "/v1/sleep?s=1"), range(3)))
    elapsed = time.monotonic() - start
    # ReservedConcurrentExecutions: 2 -> two instances at once, the third waits.
    assert len({a["pid"] for a in answers}) == 2
    assert 2.0 <= elapsed < 6.0, elapsed


def test_function_timeout_kills_and_answers_502(gateway: tuple[str, Path, FnstackServer]
                                                ) -> None:
    base, log, _ = gateway
    start = time.monotonic()
    r = _get(base + "/v1/sleep?s=10")
    elapsed = time.monotonic() - start
    assert r.status_code == 502 and r.json() == {"message": "Internal server error"}
    assert 2.9 <= elapsed < 6, elapsed  # Timeout: 3 in the template, not the 29 s route
    assert "Task timed out after 3.00 seconds" in log.read_text()
    assert _inside(base)["pid"]  # a fresh instance serves the next request


def test_integration_timeout_answers_504(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    start = time.monotonic()
    r = _get(base + "/v1/slow")
    assert r.status_code == 504
    assert r.json() == {"message": "Endpoint request timed out"}
    assert time.monotonic() - start < 2.5


def test_crash_and_oversized_response_are_502(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, log, _ = gateway
    r = _get(base + "/v1/crash")
    assert r.status_code == 502 and r.json() == {"message": "Internal server error"}
    assert "Runtime exited with error: exit status 3" in log.read_text()
    r = _get(base + "/v1/big")
    assert r.status_code == 502 and r.json() == {"message": "Internal server error"}
    assert _inside(base)["pid"]


def test_streaming_reaches_the_client_before_the_function_ends(
        gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    _get(base + "/v1/stream")  # the cold start is not what this measures
    start = time.monotonic()
    first_at = None
    chunks = []
    with httpx.stream("GET", base + "/test/v1/stream", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["x-seen-trace"].startswith("Root=1-")
        for chunk in r.iter_text():
            if first_at is None:
                first_at = time.monotonic() - start
            chunks.append(chunk)
    total = time.monotonic() - start
    assert "".join(chunks) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert first_at is not None and first_at < 0.5 and total > 1.3, (first_at, total)


def test_api_gateway_details(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    # The stage prefix of the deployed URL; the path decoded once.
    event = _inside(base, "/test/v1/models/a%252Fb")["event"]
    assert event["path"] == "/v1/models/a%252Fb"
    assert event["pathParameters"] == {"proxy": "a%2Fb"}
    assert event["requestContext"]["path"] == "/test/v1/models/a%252Fb"
    assert _inside(base, "/test/v1/models/special")["event"]["resource"] == "/v1/models/special"
    # Header names as sent, and what API Gateway adds.
    r = _get(base + "/test/v1/items/y?x=1&x=2", headers={"X-Mixed-Case": "yes"})
    event = json.loads(r.text)["event"]
    assert event["headers"]["X-Mixed-Case"] == "yes"
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["headers"]["X-Forwarded-Proto"] == "http"
    assert event["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    # Its own errors, in its own shape.
    for method, path in (("GET", "/test/nothing"), ("POST", "/test/v1/items/1")):
        r = httpx.request(method, base + path)
        assert r.status_code == 403
        assert r.json() == {"message": "Missing Authentication Token"}


def test_binary_media_types(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    payload = bytes(range(256))
    octets = {"content-type": "application/octet-stream"}
    r = httpx.post(base + "/v1/bin", content=payload,
                   headers={**octets, "accept": "application/octet-stream"})
    assert r.status_code == 201 and r.content == payload[::-1]
    assert r.headers.get_list("x-multi") == ["a", "b"]
    # An Accept that names no binary type gets the base64 text, as from API Gateway.
    r = httpx.post(base + "/v1/bin", content=payload,
                   headers={**octets, "accept": "application/json"})
    import base64

    assert base64.b64decode(r.content) == payload[::-1]


def test_payload_limits(gateway: tuple[str, Path, FnstackServer]) -> None:
    base, _, _ = gateway
    r = httpx.post(base + "/v1/big", content=b"x" * (10 * 1024 * 1024 + 1), timeout=60)
    assert r.status_code == 413 and r.json() == {"message": "Request Too Long"}
    r = httpx.post(base + "/v1/big", content=b"x" * (6 * 1024 * 1024 + 1), timeout=60)
    assert r.status_code == 413
    # Measured as Lambda does, on the UTF-8 event: 4.2 MB of "é" is 12.6 MB as \\u escapes.
    body = json.dumps({"text": "é" * (2_100_000)}, ensure_ascii=False).encode()
    r = httpx.post(base + "/test/v1/size", content=body, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:200]
    assert int(r.text) == len(body.decode())


def test_an_adapter_script_without_opt_python_fails_as_on_lambda(
        built: Path, tmp_path: Path) -> None:
    # Defect 1 of issue 11: an exec-wrapper script that does not put /opt/python on its
    # PYTHONPATH cannot import what the layer holds. The emulator shows it.
    broken = tmp_path / "build"
    shutil.copytree(built, broken)
    script = broken / "StreamFunction" / "serve.sh"
    script.write_text("#!/bin/sh\nexec python3 -m sse_server\n")
    log = tmp_path / "gateway.log"
    with FnstackServer(["gateway", "--build-dir", str(broken)], env=_env(), log_path=log,
                       startup_timeout=60) as server:
        r = _get(server.base_url + "/stream")
        assert r.status_code == 502 and r.json() == {"message": "Internal server error"}
    assert "No module named sse_server" in log.read_text()


def test_inference_script_puts_the_layer_on_pythonpath(tmp_path: Path) -> None:
    # functions/inference.sh with a python3 that only reports how it was started.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "PYTHONPATH=$PYTHONPATH"\necho "ARGS=$*"\n')
    (fake / "python3").chmod(0o755)
    out = subprocess.run(
        [str(ROOT / "functions" / "inference.sh")], capture_output=True, text=True, check=True,
        env={"PATH": f"{fake}:/usr/bin:/bin", "LAMBDA_TASK_ROOT": str(tmp_path),
             "PYTHONPATH": "/var/runtime", "AWS_LWA_PORT": "8123"},
    ).stdout
    paths = out.split("PYTHONPATH=")[1].splitlines()[0].split(":")
    assert paths == [str(tmp_path), "/opt/python/lib/python3.12/site-packages", "/opt/python",
                     "/var/runtime"]
    assert "-m uvicorn inference:app" in out and "--port 8123" in out


def test_children_do_not_outlive_the_gateway(built: Path, tmp_path: Path) -> None:
    for how in (signal.SIGTERM, signal.SIGKILL):
        server = FnstackServer(["gateway", "--build-dir", str(built)], env=_env(),
                               log_path=tmp_path / f"gw-{how.name}.log", startup_timeout=60)
        with server:
            pid = _inside(server.base_url.removesuffix("/v1"))["pid"]
            _get(server.base_url + "/stream")
            assert server.proc is not None
            os.kill(server.proc.pid, how)
            server.proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid), f"instance {pid} outlived the gateway ({how.name})"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status
