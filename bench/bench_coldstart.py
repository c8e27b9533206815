"""Cold starts of the built bundle's functions, next to a FastAPI + Mangum hello-world.

Each measurement is a fresh Lambda instance as the emulator runs it (fnstack_dev.sandbox):
a python3.12 process with Lambda's environment, the layer at /opt, the function's
handler (or, for InferenceFunction, its Web Adapter script running uvicorn), from
process start to the first answer of its first event (from events/), with the built
template's environment against emulated AWS (moto). The hello-world is built the same
way: its own function folder on the same layer, in the same sandbox. Target: every
function <= 2x hello-world (SnapStart takes the import off the request path on AWS).

    bash .ci/serverless.sh                       # once: .aws-sam/build
    python bench/bench_coldstart.py [--runs 5] [--build-dir .aws-sam/build]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

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


async def cold_start(spec: Any, bundle: Any, event: dict[str, Any]) -> dict[str, float]:
    from fnstack_dev.sandbox import FunctionPool, Streamed

    pool = FunctionPool(spec, bundle)
    http = "httpMethod" in event
    start = time.perf_counter()
    try:
        result = await pool.invoke(event, http=http)
        if isinstance(result, Streamed):
            status = result.status
            async for _ in result.body:
                pass
        else:
            payload = result.payload
            status = payload.get("statusCode", 0) if isinstance(payload, dict) else 0
        total = (time.perf_counter() - start) * 1000
        init = pool.last_init_ms
    finally:
        pool.close()
    return {"total_ms": total, "init_ms": init, "first_ms": total - init, "status": status}


async def run(args: argparse.Namespace) -> int:
    from fnstack_dev.cli import EMULATOR_ADMIN_KEY, function_env
    from fnstack_dev.emulate import EmulatedAws
    from fnstack_dev.sandbox import Bundle, FunctionSpec, function_specs
    from fnstack_dev.template import load_template

    bundle = Bundle(Path(args.build_dir))
    bundle.prepare()
    template = load_template(bundle.template_path)
    results: dict[str, list[dict[str, float]]] = {}
    with EmulatedAws(template) as aws, tempfile.TemporaryDirectory() as tmp:
        extra = {**aws.env, "FNSTACK_ADMIN_KEY": EMULATOR_ADMIN_KEY}
        envs = {name: function_env(template, name, aws.resolver(), extra, {})
                for name in FIRST_EVENTS}
        specs = function_specs(template, bundle, envs, concurrency=1)
        hello_dir = Path(tmp) / "HelloFunction"
        hello_dir.mkdir()
        (hello_dir / "hello.py").write_text(HELLO)
        admin = specs["AdminFunction"]
        hello = FunctionSpec(name="HelloWorld", task_root=hello_dir, handler="hello.handler",
                             env={}, timeout_s=30, memory_mb=1024, concurrency=1,
                             layers=admin.layers, adapter=False)
        health = json.loads((ROOT / "events" / "api-health.json").read_text())
        for _ in range(args.runs):  # interleaved, so drift hits every subject alike
            results.setdefault("hello-world", []).append(await cold_start(hello, bundle, health))
            for name, event_file in FIRST_EVENTS.items():
                event = json.loads((ROOT / "events" / event_file).read_text())
                results.setdefault(name, []).append(await cold_start(specs[name], bundle, event))
    base = statistics.median(r["total_ms"] for r in results["hello-world"])
    print(f"cold start of the built bundle ({bundle.isolation} isolation, {bundle.python}), "
          f"median of {args.runs} fresh instances: process start to first answer")
    print(f"{'function':22} {'init':>9} {'first':>9} {'total':>9} {'x hello':>8} status")
    for name, runs in results.items():
        init = statistics.median(r["init_ms"] for r in runs)
        first = statistics.median(r["first_ms"] for r in runs)
        total = statistics.median(r["total_ms"] for r in runs)
        print(f"{name:22} {init:8.1f}ms {first:8.1f}ms {total:8.1f}ms {total / base:7.2f}x "
              f"{int(runs[-1]['status'])}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--build-dir", default=str(ROOT / ".aws-sam" / "build"))
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
