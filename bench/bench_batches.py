"""Lines/s through the batch worker, side by side with the same requests sent directly.

    python bench/bench_batches.py [--lines 2000] [--concurrency 8] [--latency-ms 20]
                                  [--gateway]

Starts bench/mock_openai.py (an upstream answering each chat completion after
``--latency-ms``, as a remote model would) and ``fnstack run`` on a temporary config
routing ``remote::openai`` to it, with ``batches.concurrency`` = ``--concurrency``.
Then, for the same ``--lines`` chat completion requests:

- direct: ``--concurrency`` clients send them to fnstack's /v1/chat/completions;
- batch: one JSONL file, ``POST /v1/batches``, polled until ``completed``; the figure
  counts from the create request to the completed status, so it includes validation,
  the checkpoints and the output file's assembly.

With ``--gateway`` the batch also runs through the emulated AWS (``fnstack gateway
--emulate-aws``: the BatchesFunction enqueues on moto's SQS, the worker function polls
it), the ``aws`` distribution's ``remote::openai`` pointed at the same mock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mock-model"
ADMIN_KEY = "fns-bench-admin-key-0123456789abcdef"

CONFIG = """\
version: 1
distribution: bench-batches
providers:
  inference:
    - provider_id: mock
      provider_type: remote::openai
      config:
        base_url: http://127.0.0.1:{mock_port}/v1
        max_connections: 200
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
    blobs: {{type: blob_localfs, root: {tmp}/blobs}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    files: {{backend: blobs, prefix: files/}}
    file_records: {{backend: kv, namespace: files}}
    batches: {{backend: kv, namespace: batches}}
batches:
  concurrency: {concurrency}
cache_dir: {tmp}/cache
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 240,
             headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {timeout} s")


def body(i: int, model: str) -> dict[str, object]:
    return {"model": model, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"request {i}"}]}


async def direct(base: str, lines: int, concurrency: int, model: str,
                 headers: dict[str, str]) -> float:
    queue = list(range(lines))
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                r = await http.post("/chat/completions", json=body(i, model))
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lines / (time.perf_counter() - started)


def batch(base: str, lines: int, model: str, headers: dict[str, str]) -> tuple[float, int]:
    data = "".join(json.dumps({"custom_id": f"b{i}", "method": "POST",
                               "url": "/v1/chat/completions", "body": body(i, model)}) + "\n"
                   for i in range(lines)).encode()
    with httpx.Client(base_url=base, timeout=120, headers=headers) as http:
        up = http.post("/files", files={"file": ("bench.jsonl", data)},
                       data={"purpose": "batch"})
        up.raise_for_status()
        started = time.perf_counter()
        created = http.post("/batches", json={"input_file_id": up.json()["id"],
                                              "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h"})
        created.raise_for_status()
        batch_id = created.json()["id"]
        while True:
            b = http.get(f"/batches/{batch_id}").json()
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.1)
        took = time.perf_counter() - started
        assert b["status"] == "completed", b
        out = http.get(f"/files/{b['output_file_id']}/content").text.splitlines()
        ids = {json.loads(line)["custom_id"] for line in out}
        return lines / took, len(ids)


def run_local(args: argparse.Namespace, mock_port: int, tmp: Path) -> None:
    config = tmp / "bench.yaml"
    config.write_text(CONFIG.format(mock_port=mock_port, tmp=tmp,
                                    concurrency=args.concurrency))
    port = free_port()
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "fnstack.cli", "run", str(config),
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_for(f"{base}/health", server, "fnstack")
        model = f"mock/{MODEL}"
        rate_direct = asyncio.run(direct(base, args.lines, args.concurrency, model, {}))
        rate_batch, unique = batch(base, args.lines, model, {})
        print(f"local    direct {rate_direct:8.1f} lines/s   batch {rate_batch:8.1f} lines/s "
              f"({rate_batch / rate_direct:.2f}x; {unique}/{args.lines} custom_ids out)")
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_gateway(args: argparse.Namespace, mock_port: int, tmp: Path) -> None:
    port = free_port()
    env = {**os.environ, "FNSTACK_HOME": str(tmp / "home")}
    overrides = ["--env", f"FNSTACK_OPENAI_BASE_URL=http://127.0.0.1:{mock_port}/v1",
                 "--env", "FNSTACK_AUTH=api_keys", "--env", f"FNSTACK_ADMIN_KEY={ADMIN_KEY}"]
    with open(tmp / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "fnstack.cli", "gateway", "--emulate-aws", "--template",
             str(ROOT / "template.yaml"), "--from-source", *overrides, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        wait_for(f"{base}/health", gateway, "the gateway", headers=headers)
        models = httpx.get(f"{base}/models", headers=headers, timeout=60).json()["data"]
        model = next(m["id"] for m in models if re.search(MODEL, m["id"]))
        rate_direct = asyncio.run(direct(base, args.lines, args.concurrency, model, headers))
        rate_batch, unique = batch(base, args.lines, model, headers)
        print(f"gateway  direct {rate_direct:8.1f} lines/s   batch {rate_batch:8.1f} lines/s "
              f"({rate_batch / rate_direct:.2f}x; {unique}/{args.lines} custom_ids out)")
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--gateway", action="store_true")
    args = parser.parse_args()
    mock_port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-batches-") as d:
        tmp = Path(d)
        mock = subprocess.Popen([sys.executable, str(ROOT / "bench" / "mock_openai.py"),
                                 "--port", str(mock_port), "--latency-ms",
                                 str(args.latency_ms)])
        try:
            wait_for(f"http://127.0.0.1:{mock_port}/v1/models", mock, "the mock")
            print(f"{args.lines} chat completion lines, concurrency {args.concurrency}, "
                  f"upstream latency {args.latency_ms:.0f} ms")
            run_local(args, mock_port, tmp)
            if args.gateway:
                run_gateway(args, mock_port, tmp)
        finally:
            mock.terminate()
            mock.wait(timeout=10)


if __name__ == "__main__":
    main()
