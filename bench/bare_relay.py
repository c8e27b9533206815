"""A bare Starlette + httpx relay: the floor any Python gateway in front of an upstream
pays, for bench_gateway.py to put next to fnstack.

    python bench/bare_relay.py --port 9200 --upstream http://127.0.0.1:9100/v1

``POST /v1/chat/completions`` only: the body is parsed once (to know whether it asks
for a stream) and sent upstream as it came; the answer goes back as it came, buffered
or streamed chunk by chunk. No validation, no authentication, no storage, no logging:
what is left is uvicorn (httptools, uvloop: as ``fnstack run``), Starlette's routing
and an ``httpx.AsyncClient`` with a keep-alive pool as large as fnstack's in the bench.
``--lean`` gives the client the transport fnstack's ``remote::openai`` uses
(providers/inference/_http.py) instead of httpx's default one: the same relay with the
same upstream client as fnstack, so what remains between the two is fnstack's own work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build(upstream: str, max_connections: int, lean: bool = False) -> Starlette:
    limits = httpx.Limits(max_connections=max_connections,
                          max_keepalive_connections=max_connections)
    transport = None
    if lean:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from providers.inference._http import transport_for

        transport = transport_for(limits)
    client = httpx.AsyncClient(
        base_url=upstream.rstrip("/") + "/",
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=limits,
        transport=transport,
    )

    async def chat(request: Request) -> Response:
        body = await request.body()
        stream = json.loads(body).get("stream") is True
        headers = {"content-type": "application/json"}
        if not stream:
            r = await client.post("chat/completions", content=body, headers=headers)
            return Response(r.content, status_code=r.status_code,
                            media_type=r.headers.get("content-type"))
        req = client.build_request("POST", "chat/completions", content=body, headers=headers)
        r = await client.send(req, stream=True)
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code,
                                 media_type=r.headers.get("content-type"),
                                 background=BackgroundTask(r.aclose))

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/health", health),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    parser.add_argument("--max-connections", type=int, default=200)
    parser.add_argument("--lean", action="store_true", help="fnstack's upstream transport")
    args = parser.parse_args()
    uvicorn.run(build(args.upstream, args.max_connections, args.lean), host="127.0.0.1",
                port=args.port, http="httptools", loop="auto", access_log=False,
                log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
