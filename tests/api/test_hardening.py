"""`fnstack run` under slow clients, foreign Host headers, a busy port and SIGTERM.

Each case runs fnstack as users do, a subprocess on a free port, with ``remote::openai``
pointed at the scriptable fake upstream (tests/support/fake_openai.py), and talks to it
over real sockets: raw ones where the point is a client that misbehaves.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Reply, chat_chunk_json, chat_json, free_port
from tests.support.servers import FnstackServer, cpu_seconds

MODEL = "fake-model"
HI = [{"role": "user", "content": "Hi"}]
HEAD_S = 1.0
BODY_S = 1.0
GRACE_S = 3.0

CONFIG = """\
version: 1
distribution: hardening
server:
  header_timeout_s: {head}
  body_timeout_s: {body}
  body_min_rate: 100
  idle_timeout_s: 1
  max_connections_per_client: 8
  shutdown_grace_s: {grace}
providers:
  inference:
    - provider_id: fake
      provider_type: remote::openai
      config:
        base_url: {fake}
        headers: {{Authorization: Bearer sk-header-secret, X-Team: blue}}
        timeout: 60
        max_retries: 0
    - provider_id: dead
      provider_type: remote::openai
      config:
        base_url: http://alice:pw-in-url@127.0.0.1:{dead_port}/v1?api-key=key-in-url
        connect_timeout: 1.0
        max_retries: 0
        refresh_models: false
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
inference_store:
  write_mode: queue
cache_dir: {tmp}/cache
"""

SECRETS = ("sk-header-secret", "pw-in-url", "key-in-url", "alice")


def _write_config(tmp: Path, fake: FakeOpenAI) -> Path:
    path = tmp / "hardening.yaml"
    path.write_text(CONFIG.format(head=HEAD_S, body=BODY_S, grace=GRACE_S, fake=fake.base_url,
                                  dead_port=free_port(), tmp=tmp))
    return path


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def served(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FnstackServer]:
    tmp = tmp_path_factory.mktemp("hardening")
    with FnstackServer(["run", str(_write_config(tmp, fake))], log_path=tmp / "server.log") as fn:
        yield fn


def _raw(port: int, data: bytes, *, then: float = 0.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(data)
    if then:
        time.sleep(then)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError) as exc:
        out += f"<{type(exc).__name__}>".encode()
    finally:
        sock.close()
    return out


def _error_of(raw: bytes) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    err: dict[str, Any] = json.loads(body)["error"]
    err["status"] = int(head.split()[1])
    return err


# --- slow clients -------------------------------------------------------------------------


def test_half_sent_head_gets_408_within_the_header_timeout(served: FnstackServer) -> None:
    start = time.monotonic()
    sock = _raw(served.port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n")
    raw = _read_until_closed(sock)
    elapsed = time.monotonic() - start
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert _error_of(raw)["code"] == "request_timeout"
    assert HEAD_S - 0.2 < elapsed < HEAD_S + 2


def test_a_connection_never_used_is_closed_within_the_header_timeout(
    served: FnstackServer,
) -> None:
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=15)
    assert _read_until_closed(sock) == b""
    assert time.monotonic() - start < HEAD_S + 2


def test_content_length_longer_than_the_body_gets_408(served: FnstackServer) -> None:
    start = time.monotonic()
    sock = _raw(served.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
    raw = _read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert time.monotonic() - start < BODY_S + 2


def test_body_dripped_slower_than_the_minimum_rate_is_cut(served: FnstackServer) -> None:
    body = json.dumps({"model": MODEL, "messages": HI}).encode()
    sock = _raw(served.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    start = time.monotonic()
    sent = 0
    try:
        for byte in body:  # 5 bytes/s against a minimum of 100
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = _read_until_closed(sock)
    assert sent < len(body), "the whole dripped body was accepted"
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert time.monotonic() - start < BODY_S + 3


def test_a_body_at_a_fair_rate_is_accepted(served: FnstackServer) -> None:
    # 2 s of sending at ~250 bytes/s: past body_timeout_s, but above the minimum rate.
    body = json.dumps({"model": MODEL, "messages": HI, "user": "x" * 400}).encode()
    sock = _raw(served.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    for i in range(0, len(body), 50):
        sock.sendall(body[i : i + 50])
        time.sleep(0.2)
    raw = _read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


def test_connections_per_client_are_capped(served: FnstackServer) -> None:
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        raw = _read_until_closed(extra)
        assert raw.startswith(b"HTTP/1.1 429"), raw[:200]
        assert b"retry-after: 1" in raw.lower()
        assert _error_of(raw)["code"] == "too_many_connections"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{served.base_url}/health").status_code == 200


def test_idle_keep_alive_connection_is_closed(served: FnstackServer) -> None:
    sock = _raw(served.port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    start = time.monotonic()
    raw = _read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - start < 3  # idle_timeout_s: 1


# --- abandoned requests -------------------------------------------------------------------


def test_a_client_that_hangs_up_stops_its_buffered_request(
    served: FnstackServer, fake: FakeOpenAI
) -> None:
    fake.reset()
    fake.script("/v1/chat/completions", Reply(json=chat_json("late"), delay=30.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.base_url}/chat/completions",
                   json={"model": MODEL, "messages": HI}, timeout=1.0)
    upstream = next(r for r in fake.requests if r.path.endswith("/chat/completions"))
    # fnstack dropped its upstream call instead of waiting 30 s for an answer nobody reads.
    assert upstream.disconnected.wait(timeout=5)


EMBED_CONFIG = """\
version: 1
providers:
  inference:
    - provider_id: onnx
      provider_type: inline::onnx-embeddings
      config:
        intra_op_threads: 1
        max_batch_size: 8
        max_pending_requests: 1
        max_request_tokens: 1000000
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
cache_dir: {cache}
"""


@pytest.mark.slow
def test_abandoned_embedding_request_stops_and_others_get_429(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # pytest's cache keeps the exported graph between runs (never the user's ~/.cache).
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("fnstack-onnx") if cache is not None else tmp_path / "cache"
    config = tmp_path / "embed.yaml"
    config.write_text(EMBED_CONFIG.format(tmp=tmp_path, cache=cache_dir))
    text = "serverless functions scale to zero and start cold " * 32  # 290 tokens
    # 2048 inputs of the model's full 256-token context: tens of seconds of work on one
    # thread, wherever it runs, so the client surely gives up first.
    big = {"model": "all-MiniLM-L6-v2", "input": [text] * 2048}
    small = {"model": "all-MiniLM-L6-v2", "input": "hi"}
    outcome: list[Any] = []

    def abandon() -> None:
        for _ in range(20):  # a 429 if it arrives while a probe is admitted: retry
            try:
                r = httpx.post(f"{fn.base_url}/embeddings", json=big, timeout=10.0)
            except httpx.ReadTimeout:
                outcome.append("gave up")
                return
            if r.status_code != 429:
                outcome.append(r.status_code)
                return
            time.sleep(0.1)
        outcome.append("always 429")

    with FnstackServer(["run", str(config)], log_path=tmp_path / "server.log") as fn:
        assert fn.proc is not None
        client = threading.Thread(target=abandon)
        client.start()
        time.sleep(0.5)
        # While the big request is admitted (max_pending_requests: 1), others get 429.
        refused = None
        while refused is None and client.is_alive():
            r = httpx.post(f"{fn.base_url}/embeddings", json=small, timeout=30)
            if r.status_code == 429:
                refused = r
            else:
                assert r.status_code == 200, r.text
                time.sleep(0.05)
        assert refused is not None, f"no 429 while a big request held the provider: {outcome}"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "server_busy"
        client.join()
        assert outcome == ["gave up"]
        time.sleep(1.5)  # the batch under way when the client left
        before = cpu_seconds(fn.proc.pid)
        time.sleep(3.0)
        busy = cpu_seconds(fn.proc.pid) - before
        # The rest of the 2048 inputs would keep a core busy all along (~3 CPU s).
        assert busy < 0.5, f"fnstack used {busy:.2f} CPU s after its client had gone"
        assert httpx.post(f"{fn.base_url}/embeddings", json=small, timeout=30).status_code == 200
    assert "client went away" in (tmp_path / "server.log").read_text()


# --- Host header --------------------------------------------------------------------------


def test_foreign_host_header_is_refused(served: FnstackServer) -> None:
    r = httpx.get(f"{served.base_url}/models", headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 421
    assert r.json()["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{served.port}", f"127.0.0.1:{served.port}"):
        assert httpx.get(f"{served.base_url}/health", headers={"Host": host}).status_code == 200


# --- secrets ------------------------------------------------------------------------------


def test_providers_and_upstream_errors_show_no_secrets(served: FnstackServer) -> None:
    r = httpx.get(f"{served.base_url}/providers")
    assert r.status_code == 200
    text = r.text
    assert "sk-header-secret" not in text and "pw-in-url" not in text and "key-in-url" not in text
    fake_cfg = next(p for p in r.json()["data"] if p["provider_id"] == "fake")["config"]
    assert fake_cfg["headers"] == {"Authorization": "********", "X-Team": "********"}
    r = httpx.post(f"{served.base_url}/chat/completions",
                   json={"model": "dead/whatever", "messages": HI}, timeout=30)
    assert r.status_code in (502, 504), r.text
    assert "127.0.0.1" in r.text  # the URL is still shown, scrubbed
    for secret in SECRETS:
        assert secret not in r.text
    log = Path(str(served.log_path)).read_text()
    for secret in SECRETS:
        assert secret not in log


# --- start-up -----------------------------------------------------------------------------


def test_says_where_it_listens_and_what_it_serves(served: FnstackServer) -> None:
    log = Path(str(served.log_path)).read_text()
    assert f"fnstack listening on http://127.0.0.1:{served.port}" in log
    models_line = next(line for line in log.splitlines() if line.strip().startswith("models:"))
    assert MODEL in models_line


def test_busy_port_fails_before_models_load(served: FnstackServer, tmp_path: Path) -> None:
    config = tmp_path / "second.yaml"
    config.write_text(Path(str(served.log_path)).with_name("hardening.yaml").read_text())
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "run", str(config), "--port", str(served.port)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "already in use" in proc.stderr and "--port" in proc.stderr
    assert "provider ready" not in proc.stderr  # nothing was built
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 15


# --- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_finishes_or_cleanly_ends_in_flight_requests(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.reset()
    config = _write_config(tmp_path, fake)
    log_path = tmp_path / "server.log"
    results: dict[str, Any] = {}

    def chats() -> list[Any]:
        return [r for r in fake.requests if r.path.endswith("/chat/completions")]

    def call(name: str, body: dict[str, Any]) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                r = client.post(f"{fn.base_url}/chat/completions", json=body)
            results[name] = (r.status_code, r.text)
        except httpx.HTTPError as exc:
            results[name] = (None, repr(exc))

    with FnstackServer(["run", str(config)], log_path=log_path) as fn:
        assert fn.proc is not None
        # Two quick answers (inside the grace), two slow ones (past it), one slow stream.
        fake.script("/v1/chat/completions",
                    Reply(json=chat_json("quick"), delay=1.0),
                    Reply(json=chat_json("quick"), delay=1.0),
                    Reply(json=chat_json("slow"), delay=30.0),
                    Reply(json=chat_json("slow"), delay=30.0),
                    Reply(events=[chat_chunk_json(), chat_chunk_json("a")] * 50,
                          event_delay=0.5))
        bodies = {
            "quick1": {"model": MODEL, "messages": HI},
            "quick2": {"model": MODEL, "messages": HI},
            "slow1": {"model": MODEL, "messages": HI},
            "slow2": {"model": MODEL, "messages": HI},
            "stream": {"model": MODEL, "messages": HI, "stream": True},
        }
        threads = []
        for name, body in bodies.items():  # in order: the fake answers in arrival order
            t = threading.Thread(target=call, args=(name, body))
            t.start()
            threads.append(t)
            deadline = time.monotonic() + 10
            while len(chats()) < len(threads) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert len(chats()) == 5
        start = time.monotonic()
        fn.proc.send_signal(signal.SIGTERM)
        code = fn.proc.wait(timeout=GRACE_S + 15)
        elapsed = time.monotonic() - start
        for t in threads:
            t.join(timeout=10)

    assert code == 0
    assert elapsed < GRACE_S + 6, elapsed
    assert results["quick1"][0] == 200 and results["quick2"][0] == 200, results
    for name in ("slow1", "slow2"):
        status, text = results[name]
        assert status == 503, results[name]
        assert json.loads(text)["error"]["code"] == "server_shutting_down"
    status, text = results["stream"]
    assert status == 200, results["stream"]
    assert "server_shutting_down" in text  # the stream ends with an error event
    assert all(status != 500 for status, _ in results.values())
    # Every line is JSON (fnstack's and uvicorn's logs) or the start-up message.
    for line in log_path.read_text().splitlines():
        if line.startswith(("fnstack listening", "  ")):
            continue
        assert json.loads(line)["level"], line
    # The answered completions were stored before exit: a new server lists them.
    with FnstackServer(["run", str(config)], log_path=tmp_path / "again.log") as again:
        stored = httpx.get(f"{again.base_url}/chat/completions").json()["data"]
    contents = [c["choices"][0]["message"]["content"] for c in stored]
    assert contents.count("quick") == 2, contents


def test_a_second_ctrl_c_cuts_the_grace_period_short(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.reset()
    config = tmp_path / "long-grace.yaml"
    config.write_text(_write_config(tmp_path, fake).read_text().replace(
        f"shutdown_grace_s: {GRACE_S}", "shutdown_grace_s: 60"))
    fake.script("/v1/chat/completions", Reply(json=chat_json("slow"), delay=60.0))
    result: list[Any] = []

    def call() -> None:
        r = httpx.post(f"{fn.base_url}/chat/completions", json={"model": MODEL, "messages": HI},
                       timeout=60)
        result.append((r.status_code, r.json()))

    with FnstackServer(["run", str(config)], log_path=tmp_path / "server.log") as fn:
        assert fn.proc is not None
        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while not any(r.path.endswith("/chat/completions") for r in fake.requests):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        start = time.monotonic()
        fn.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        fn.proc.send_signal(signal.SIGINT)
        assert fn.proc.wait(timeout=30) == 0
        assert time.monotonic() - start < 8  # not the 60 s grace
        caller.join(timeout=10)
    assert result[0][0] == 503
    assert result[0][1]["error"]["code"] == "server_shutting_down"


@pytest.mark.slow
def test_sigterm_while_models_load_exits_at_once(tmp_path: Path) -> None:
    # An empty cache: the embedding model is exported to ONNX at start (seconds to a
    # minute), which no signal can interrupt; the process leaves without waiting for it.
    config = tmp_path / "embed.yaml"
    config.write_text(EMBED_CONFIG.format(tmp=tmp_path, cache=tmp_path / "empty-cache"))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fnstack.cli", "run", str(config), "--port", str(free_port())],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "provider ready" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert time.monotonic() - start < 3
        assert code == 128 + signal.SIGTERM
        assert "stopped during start-up" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

