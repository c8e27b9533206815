"""What fnstack costs in front of an OpenAI-compatible upstream, next to a bare relay.

    python bench/bench_gateway.py [--rounds 3] [--duration 5] [--connections 50]
                                  [--no-auth] [--no-store] [--no-pin] [--keep-logs]

Starts three servers and drives chat completions, plain and streamed, at each of them:

- ``upstream``: bench/mock_openai.py, a raw-asyncio OpenAI upstream that costs next to
  nothing (what a client gets with no gateway at all);
- ``relay``: bench/bare_relay.py, Starlette + httpx relaying the bytes as they come
  (no validation, no auth, no storage, no logs): the floor of a Python gateway;
- ``lean``: the same relay on fnstack's upstream transport (providers/inference/_http.py)
  instead of httpx's default one: fnstack minus everything fnstack adds;
- ``fnstack``: ``fnstack run`` routing ``remote::openai`` to the mock, with API-key auth
  on (a key made through ``POST /v1/keys``), every request validated, every completion
  stored in SQLite by group commit (queue mode, the local default), the access log on.

The relays and fnstack each get one uvicorn worker (httptools, uvloop). The load
generator is raw asyncio HTTP/1.1 (keep-alive, one request in flight per connection).
Scenarios are interleaved (upstream, relay, lean, fnstack; plain then streamed) and
repeated ``--rounds`` times: the table gives medians, and each round's fnstack/relay
ratio. With two or more CPUs, the relays and fnstack run pinned to the last CPU and the
mock and the load generator to the others (``--no-pin``: no pinning), so the gateways
get the same single core. ``cpu ms/req`` is a server's own CPU time per answered request, which
other load on the machine disturbs less than requests/s.

Targets: fnstack >= 0.9x the relay's requests/s at 50 connections; every answered
completion stored. ``fn/lean`` is the stricter figure: fnstack against a relay with the
same upstream client. ``--no-auth`` / ``--no-store`` show what those guarantees cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
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
ADMIN_KEY = "bench-admin-key"

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
auth: {auth}
cache_dir: {tmp}/cache
"""
AUTH_ON = "{type: api_keys, api_keys: {bootstrap_key: " + ADMIN_KEY + "}}"
AUTH_OFF = "{type: none}"


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


def http_request(port: int, body: dict[str, object], key: str | None) -> bytes:
    payload = json.dumps(body).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}"
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



def count_stored(base: str, tag: str, key: str | None) -> int:
    """Completions listed under metadata bench=<tag>, paging through the API."""
    total, after = 0, None
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base, timeout=300, headers=headers) as client:
        while True:
            params = {"limit": "1000", "metadata[bench]": tag}
            if after:
                params["after"] = after
            page = client.get("/v1/chat/completions", params=params).json()
            total += len(page["data"])
            if not page["has_more"]:
                return total
            after = page["last_id"]


def user_key(base: str) -> str:
    """A user's API key, made by the bootstrap admin as `fnstack keys create` would."""
    r = httpx.post(f"{base}/v1/keys", json={"name": "bench", "principal": "bench-user"},
                   headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    r.raise_for_status()
    key: str = r.json()["value"]
    return key


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def run_load(port: int, raw: bytes, conns: int, duration: float) -> Result:
    try:
        import uvloop  # the load generator's own cost, kept small
    except ImportError:
        return asyncio.run(load(port, raw, conns, duration))
    return uvloop.run(load(port, raw, conns, duration))


TARGETS = ("upstream", "relay", "lean", "fnstack")


@dataclass
class Cell:
    """One (connections, kind, target) over the rounds."""

    runs: list[Result] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def med(self, what: str) -> float:
        values = [r.rps if what == "rps" else r.pct(0.5 if what == "p50" else 0.99)
                  for r in self.runs]
        return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--connections", type=int, nargs="+", default=[50])
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--no-auth", action="store_true", help="fnstack with auth: none")
    parser.add_argument("--no-store", action="store_true", help="requests say store: false")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = other_cpus = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        server_cpu = str(cpus[-1])
        other_cpus = ",".join(str(c) for c in cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])  # the load generator

    tmp = Path(tempfile.mkdtemp(prefix="fnstack-bench-"))
    ports = {t: free_port() for t in TARGETS}
    auth = AUTH_OFF if args.no_auth else AUTH_ON
    (tmp / "bench.yaml").write_text(CONFIG.format(mock_port=ports["upstream"], tmp=tmp,
                                                  auth=auth))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["upstream"] = subprocess.Popen(
            pinned([sys.executable, str(ROOT / "bench" / "mock_openai.py"),
                    "--port", str(ports["upstream"]), "--chunks", str(args.chunks)], other_cpus),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(f"http://127.0.0.1:{ports['upstream']}/v1/models", procs["upstream"],
                 "the mock upstream")
        for name, extra in (("relay", []), ("lean", ["--lean"])):
            procs[name] = subprocess.Popen(
                pinned([sys.executable, str(ROOT / "bench" / "bare_relay.py"),
                        "--port", str(ports[name]), *extra,
                        "--upstream", f"http://127.0.0.1:{ports['upstream']}/v1"], server_cpu),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        with open(tmp / "server.log", "wb") as log:
            procs["fnstack"] = subprocess.Popen(
                pinned([sys.executable, "-m", "fnstack.cli", "run", str(tmp / "bench.yaml"),
                        "--port", str(ports["fnstack"])], server_cpu),
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        for name in ("relay", "lean"):
            wait_for(f"http://127.0.0.1:{ports[name]}/v1/health", procs[name], f"the {name}")
        wait_for(f"http://127.0.0.1:{ports['fnstack']}/v1/health", procs["fnstack"], "fnstack")
        base = f"http://127.0.0.1:{ports['fnstack']}"
        key = None if args.no_auth else user_key(base)
        pins = (f"servers on CPU {server_cpu}, mock + load on {other_cpus}" if server_cpu
                else "no")
        print(f"fnstack: auth {'off' if args.no_auth else 'on (API key)'}, "
              f"store {'off' if args.no_store else 'on (SQLite, group commit)'}; "
              f"pinned: {pins}; "
              f"{args.rounds} rounds x {args.duration:g} s per scenario", flush=True)

        kinds = ("plain", "stream")
        tags = {kind: uuid.uuid4().hex[:12] for kind in kinds}
        answered = dict.fromkeys(kinds, 0)
        cells: dict[tuple[int, str, str], Cell] = {}
        for rnd in range(args.rounds):
            for conns in args.connections:
                for kind in kinds:
                    body: dict[str, object] = {
                        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 32, "metadata": {"bench": tags[kind]},
                    }
                    if kind == "stream":
                        body["stream"] = True
                    if args.no_store:
                        body["store"] = False
                    line = []
                    for target in TARGETS:
                        proc = procs[target]
                        cpu0 = cpu_seconds(proc.pid)
                        raw = http_request(ports[target], body, key)
                        res = run_load(ports[target], raw, conns, args.duration)
                        served = res.answered + res.warmup_answered
                        cell = cells.setdefault((conns, kind, target), Cell())
                        cell.runs.append(res)
                        if target != "upstream":
                            cell.cpu_ms.append(
                                (cpu_seconds(proc.pid) - cpu0) / served * 1000 if served else 0)
                        if target == "fnstack":
                            answered[kind] += served
                        line.append(f"{target} {res.rps:7.0f}")
                    print(f"  round {rnd + 1}: {conns:>3} conn {kind:<6}: "
                          + ", ".join(line) + " req/s", flush=True)

        print()
        width = max(16, 5 * args.rounds)
        header = (f"{'conns':>5} {'kind':<6} | {'upstream':>8} | {'relay':>6} {'p50':>6}"
                  f" | {'lean':>6} {'p50':>6} | {'fnstack':>7} {'p50':>6} {'p99':>6}"
                  f" | {'fn/relay':>8} {'per round':<{width}} {'fn/lean':>7}"
                  f" | {'cpu ms/req: relay':>17} {'lean':>5} {'fnstack':>7} | {'failed':>6}")
        print(header)
        print("-" * len(header))
        worst = float("inf")
        for conns in args.connections:
            for kind in kinds:
                up, rel, lean, fn = (cells[(conns, kind, t)] for t in TARGETS)
                ratio = fn.med("rps") / rel.med("rps") if rel.med("rps") else 0.0
                to_lean = fn.med("rps") / lean.med("rps") if lean.med("rps") else 0.0
                if conns == 50 or len(args.connections) == 1:
                    worst = min(worst, ratio)
                per_round = " ".join(f"{f.rps / r.rps:.2f}" if r.rps else "-"
                                     for r, f in zip(rel.runs, fn.runs, strict=True))
                failed = sum(r.failed for r in fn.runs)
                print(f"{conns:>5} {kind:<6} | {up.med('rps'):>8.0f} | {rel.med('rps'):>6.0f}"
                      f" {rel.med('p50'):>6.1f} | {lean.med('rps'):>6.0f} {lean.med('p50'):>6.1f}"
                      f" | {fn.med('rps'):>7.0f} {fn.med('p50'):>6.1f} {fn.med('p99'):>6.1f}"
                      f" | {ratio:>8.2f} {per_round:<{width}} {to_lean:>7.2f}"
                      f" | {statistics.median(rel.cpu_ms):>17.2f}"
                      f" {statistics.median(lean.cpu_ms):>5.2f}"
                      f" {statistics.median(fn.cpu_ms):>7.2f} | {failed:>6}")
        print("(req/s and latency in ms: medians over the rounds)")
        print()
        all_stored = True
        for kind in kinds:
            expected = 0 if args.no_store else answered[kind]
            stored = count_stored(base, tags[kind], key)
            all_stored &= stored == expected
            print(f"stored {kind:<6}: {stored} of {answered[kind]} answered by fnstack"
                  f" (warm-ups included) {'ok' if stored == expected else 'MISMATCH'}")
        print()
        print(f"target: fnstack/relay >= 0.9: worst {worst:.2f} "
              f"{'PASS' if worst >= 0.9 else 'MISS'}")
        print(f"target: every answered completion stored: {'PASS' if all_stored else 'MISS'}")
    finally:
        for proc in reversed(procs.values()):
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
