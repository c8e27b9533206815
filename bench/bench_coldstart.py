"""Cold starts of the zip functions, next to a bare FastAPI + Mangum hello-world.

Each measurement is a fresh Python process (what a Lambda cold start is, minus the
sandbox): import the function's handler module, then answer its first event (from
events/). The functions run with their template.yaml environment against emulated AWS
(moto, resources from the template). Also prints the costliest imports of each
function (``python -X importtime``). Target: every function <= 2x hello-world.

    python bench/bench_coldstart.py [--runs 5] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIRST_EVENTS = {
    "AdminFunction": "api-health.json",
    "ModelsFunction": "api-models-list.json",
    "InferenceFunction": "api-chat-completions-list.json",
    "BatchWorkerFunction": "sqs-batch.json",
}

HELLO = '''\
from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/v1/health")
async def health():
    return {"status": "OK"}


handler = Mangum(app, lifespan="off")
'''

PROBE = '''\
import importlib.util, json, sys, time
t0 = time.perf_counter()
code_dir, module, attr, event_path = sys.argv[1:5]
sys.path.insert(0, code_dir)
spec = importlib.util.spec_from_file_location("fn", f"{code_dir}/{module}.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
t1 = time.perf_counter()
class Ctx:
    function_name = "bench"; aws_request_id = "bench"; memory_limit_in_mb = 1024
    def get_remaining_time_in_millis(self): return 30000
out = getattr(mod, attr)(json.load(open(event_path)), Ctx())
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1000, "first_ms": (t2 - t1) * 1000,
                  "status": out.get("statusCode") if isinstance(out, dict) else None}))
'''


def probe(code_dir: Path, handler: str, event: Path, env: dict[str, str]) -> dict[str, float]:
    module, _, attr = handler.rpartition(".")
    start = _now()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(code_dir), module, attr, str(event)],
                          env=env, capture_output=True, text=True, timeout=300)
    wall = (_now() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{code_dir}/{module}.py failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_ms"] = wall
    return result


def top_imports(code_dir: Path, module: str, env: dict[str, str], n: int = 8) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(code_dir)!r}); import {module}"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{us / 1000:8.1f} ms  {name.strip()}" for us, name in rows[:n]]


def _now() -> float:
    import time

    return time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", help="run config for the functions (default: template's)")
    args = parser.parse_args()

    from fnstack_dev.cli import function_env
    from fnstack_dev.emulate import EmulatedAws
    from fnstack_dev.template import load_template

    template = load_template(ROOT / "template.yaml")
    results: dict[str, list[dict[str, float]]] = {}
    with EmulatedAws(template) as aws, tempfile.TemporaryDirectory() as tmp:
        hello_dir = Path(tmp)
        (hello_dir / "hello.py").write_text(HELLO)
        overrides = {"FNSTACK_CONFIG": args.config} if args.config else {}
        base = {k: v for k, v in os.environ.items() if not k.startswith("FNSTACK_")}
        envs = {name: {**base, **function_env(template, name, aws.resolver(), aws.env, overrides)}
                for name in FIRST_EVENTS}
        for _ in range(args.runs):  # interleaved, so drift hits every subject alike
            results.setdefault("hello-world", []).append(
                probe(hello_dir, "hello.handler", ROOT / "events" / "api-health.json", base))
            for name, event in FIRST_EVENTS.items():
                fn = template.function(name)
                results.setdefault(name, []).append(
                    probe(fn.code_dir, fn.handler, ROOT / "events" / event, envs[name]))
        hello = statistics.median(r["import_ms"] + r["first_ms"] for r in results["hello-world"])
        print(f"cold start, median of {args.runs} fresh processes (import + first event)")
        print(f"{'function':22} {'import':>9} {'first':>9} {'total':>9} {'x hello':>8} "
              f"{'process':>9} status")
        for name, runs in results.items():
            imp = statistics.median(r["import_ms"] for r in runs)
            first = statistics.median(r["first_ms"] for r in runs)
            total = statistics.median(r["import_ms"] + r["first_ms"] for r in runs)
            proc = statistics.median(r["process_ms"] for r in runs)
            print(f"{name:22} {imp:8.1f}ms {first:8.1f}ms {total:8.1f}ms {total / hello:7.2f}x "
                  f"{proc:8.1f}ms {runs[-1].get('status')}")
        print()
        for name in FIRST_EVENTS:
            fn = template.function(name)
            print(f"top imports: {name} ({fn.handler})")
            for row in top_imports(fn.code_dir, fn.handler.rpartition('.')[0], envs[name]):
                print("   " + row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
