"""What authentication + the access policy cost per request.

    python bench/bench_auth.py [--requests N] [--rounds R]

Two apps built by `create_app` on the same SQLite store, one with ``auth: {type: none}``
and one with API keys (a key created with `KeyStore`, as `fnstack keys create` does):
the same authenticated request (``GET /v1/models/{id}`` of a model from the run config:
a routing-table lookup and a policy check, no provider call) is sent N times straight
into each ASGI app (no sockets: the network would drown the difference), and the p50 /
p90 per request are printed side by side. The added cost is the difference of the p50s
(target: < 0.3 ms). A second table times the pieces alone: the authenticator on a cached
key, and one `AccessPolicy.allows` under the default policy.

Rounds alternate the two apps so both see the same machine load; the best round is
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fnstack.access import DEFAULT_POLICY, Resource
from fnstack.app import create_app
from fnstack.auth import build_authenticator
from fnstack.config import RunConfig, parse_config
from fnstack.keys import KeyStore
from fnstack.storage import Owner

MODEL = "bench-model"


def _config(tmp: Path, auth: str) -> RunConfig:
    return parse_config({
        "providers": {"inference": [{
            "provider_id": "up", "provider_type": "remote::openai",
            # Never called: the request only routes.
            "config": {"base_url": "http://127.0.0.1:9/v1", "refresh_models": False},
        }]},
        "registered_resources": {"models": [{"model_id": MODEL, "provider_id": "up"}]},
        "storage": {"backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")}},
                    "stores": {"registry": {"backend": "kv", "namespace": "registry"}}},
        "auth": {"type": auth},
    }, env={})


async def _call(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": f"/v1/models/{MODEL}",
             "raw_path": f"/v1/models/{MODEL}".encode(), "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8321)}
    await app(scope, receive, send)
    return status


async def _times(app: Any, headers: list[tuple[bytes, bytes]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        status = await _call(app, headers)
        out.append(time.perf_counter() - start)
        assert status == 200, status
    return out


def _row(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return f"{name:<28} {statistics.median(times) * 1e3:>9.3f} {q[8] * 1e3:>9.3f}"


async def main(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        open_app = create_app(_config(tmp, "none"), lifespan=False)
        keyed_cfg = _config(tmp, "api_keys")
        keyed_app = create_app(keyed_cfg, lifespan=False)
        await keyed_app.state.stack.start()
        await open_app.state.stack.start()
        keys = KeyStore(keyed_app.state.stack.stores.kv("registry"))
        _, key = await keys.create("bench")
        auth = [(b"authorization", f"Bearer {key}".encode())]
        best: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, app, headers in (("auth off", open_app, []),
                                       ("api key + default policy", keyed_app, auth)):
                await _times(app, headers, 200)  # warm caches
                t = await _times(app, headers, requests)
                if name not in best or statistics.median(t) < statistics.median(best[name]):
                    best[name] = t
        print(f"{'per request (ASGI, no sockets)':<28} {'p50 ms':>9} {'p90 ms':>9}")
        for name, t in best.items():
            print(_row(name, t))
        added = statistics.median(best["api key + default policy"]) - statistics.median(
            best["auth off"])
        print(f"{'added by auth + policy':<28} {added * 1e3:>9.3f}  (target < 0.300)")

        authenticator = build_authenticator(keyed_cfg.auth, keyed_app.state.stack.stores)
        assert authenticator is not None
        scope = {"type": "http", "headers": auth}
        pieces: list[float] = []
        for _ in range(requests):
            start = time.perf_counter()
            await authenticator.authenticate(scope)
            pieces.append(time.perf_counter() - start)
        user = Owner("bench")
        resource = Resource("chat_completion", "chatcmpl-x", Owner("bench"))
        policy: list[float] = []
        for _ in range(requests):
            start = time.perf_counter()
            DEFAULT_POLICY.allows("read", resource, user)
            policy.append(time.perf_counter() - start)
        print()
        print(f"{'the pieces alone':<28} {'p50 ms':>9} {'p90 ms':>9}")
        print(_row("authenticate (cached key)", pieces))
        print(_row("policy.allows (default)", policy))
        await keyed_app.state.stack.shutdown()
        await open_app.state.stack.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
