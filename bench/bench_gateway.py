"""What fnstack costs in front of an OpenAI-compatible upstream.

    python bench/bench_gateway.py [--duration 10] [--connections 50 1] [--keep-logs]

Starts bench/mock_openai.py (a raw-asyncio upstream that costs next to nothing) and
``fnstack run`` on a temporary config routing ``remote::openai`` to it, with the chat
completion history in SQLite written in queue mode (the local server's default). A
raw-asyncio HTTP/1.1 load generator (keep-alive, one request in flight per connection)
then drives chat completions, plain and streamed, at each connection count: once
straight at the mock, once through fnstack. It prints requests/s and p50/p99 latency
side by side, and how many answered completions fnstack stored.

Targets on a 2-core machine: through fnstack >= 0.25x the direct requests/s at 50
connections; at 1 connection, p50 adds < 2 ms; every answered completion is stored.
Everything shares the machine's cores (load generator, mock, fnstack), as in any
single-box measurement: read the ratios, not the absolute figures. ``cpu ms/req`` is
fnstack's own CPU time per answered request, which other load on the box disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mock-model"

CONFIG = """\
version: 1
distribution: bench
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
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
inference_store:
  write_mode: queue
cache_dir: {tmp}/cache
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the load generator ----------------------------------------------------------------


def http_request(port: int, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def one_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> bool:
    """Send one request, read its whole response; True when it was a complete 200."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        tail = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            tail = (tail + data)[-64:]
        # A stream is answered only when it ends with [DONE] (an error event does not).
        return status == 200 and b"[DONE]" in tail
    start = headers.index(b"content-length:") + len(b"content-length:")
    length = int(headers[start : headers.index(b"\r\n", start)])
    await reader.readexactly(length)
    return status == 200


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0
    warmup_answered: int = 0  # complete 200s before the measured window

    @property
    def rps(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(port: int, raw: bytes, connections: int, duration: float) -> Result:
    result = Result()
    deadline = 0.0

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = await one_exchange(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.failed += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                result.latencies.append(time.perf_counter() - t0)
                if ok:
                    result.answered += 1
                else:
                    result.failed += 1
        finally:
            writer.close()

    # A short warm-up, unmeasured: connections open, caches fill, the JIT-less paths run.
    deadline = time.perf_counter() + min(1.0, duration / 5)
    await asyncio.gather(*(worker() for _ in range(connections)))
    result = Result(warmup_answered=result.answered)
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result


# --- processes ----------------------------------------------------------------------------


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not answer {url} within {timeout}s")


def count_stored(base: str, tag: str) -> int:
    """Completions listed under metadata bench=<tag>, paging through the API."""
    total, after = 0, None
    with httpx.Client(base_url=base, timeout=120) as client:
        while True:
            params = {"limit": "100", "metadata[bench]": tag}
            if after:
                params["after"] = after
            page = client.get("/v1/chat/completions", params=params).json()
            total += len(page["data"])
            if not page["has_more"]:
                return total
            after = page["last_id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, nargs="+", default=[50, 1])
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fnstack-bench-"))
    mock_port, fn_port = free_port(), free_port()
    (tmp / "bench.yaml").write_text(CONFIG.format(mock_port=mock_port, tmp=tmp))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "mock_openai.py"), "--port", str(mock_port),
             "--chunks", str(args.chunks)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(mock)
        wait_for(f"http://127.0.0.1:{mock_port}/v1/models", mock, "the mock upstream")
        with open(tmp / "server.log", "wb") as log:
            fn = subprocess.Popen(
                [sys.executable, "-m", "fnstack.cli", "run", str(tmp / "bench.yaml"),
                 "--port", str(fn_port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        procs.append(fn)
        wait_for(f"http://127.0.0.1:{fn_port}/v1/health", fn, "fnstack")

        rows = []
        stored_checks = []
        for conns in args.connections:
            for stream in (False, True):
                tag = uuid.uuid4().hex[:12]
                body: dict[str, object] = {
                    "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 32, "metadata": {"bench": tag},
                }
                if stream:
                    body["stream"] = True
                direct = asyncio.run(
                    load(mock_port, http_request(mock_port, body), conns, args.duration)
                )
                cpu0 = cpu_seconds(fn.pid)
                through = asyncio.run(
                    load(fn_port, http_request(fn_port, body), conns, args.duration)
                )
                served = through.answered + through.warmup_answered
                cpu_ms = (cpu_seconds(fn.pid) - cpu0) / served * 1000 if served else 0.0
                rows.append((conns, "stream" if stream else "plain", direct, through, cpu_ms))
                stored_checks.append((conns, stream, tag, through))
                print(f"  done: {conns:>3} conn {'stream' if stream else 'plain '}: "
                      f"direct {direct.rps:8.0f} req/s, fnstack {through.rps:8.0f} req/s",
                      flush=True)

        base = f"http://127.0.0.1:{fn_port}"
        print()
        header = (f"{'conns':>5} {'kind':<6} | {'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7}"
                  f" | {'fnstack req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5}"
                  f" {'+p50 ms':>7} | {'cpu ms/req':>10} {'failed':>6}")
        print(header)
        print("-" * len(header))
        for conns, kind, d, f, cpu_ms in rows:
            print(f"{conns:>5} {kind:<6} | {d.rps:>12.0f} {d.pct(0.5):>7.2f} {d.pct(0.99):>7.2f}"
                  f" | {f.rps:>13.0f} {f.pct(0.5):>7.2f} {f.pct(0.99):>7.2f}"
                  f" | {f.rps / d.rps if d.rps else 0:>5.2f} {f.pct(0.5) - d.pct(0.5):>7.2f}"
                  f" | {cpu_ms:>10.2f} {f.failed:>6}")
        print()
        all_stored = True
        for conns, stream, tag, through in stored_checks:
            stored = count_stored(base, tag)
            answered = through.answered + through.warmup_answered
            all_stored &= stored == answered
            print(f"stored {conns:>3} conn {'stream' if stream else 'plain '}: {stored} of"
                  f" {answered} answered (warm-up included)"
                  f" {'ok' if stored == answered else 'MISMATCH'}")
        print()
        fifty = [(d, f) for c, _, d, f, _ in rows if c == 50]
        single = [(d, f) for c, _, d, f, _ in rows if c == 1]
        if fifty:
            worst = min(f.rps / d.rps for d, f in fifty if d.rps)
            print(f"target 50 conns: fnstack/direct >= 0.25: worst {worst:.2f} "
                  f"{'PASS' if worst >= 0.25 else 'MISS'}")
        if single:
            added = max(f.pct(0.5) - d.pct(0.5) for d, f in single)
            print(f"target 1 conn: added p50 < 2 ms: worst {added:.2f} ms "
                  f"{'PASS' if added < 2 else 'MISS'}")
        print(f"target: every answered completion stored: {'PASS' if all_stored else 'MISS'}")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if args.keep_logs:
            print(f"logs and database kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
