"""A fake SageMaker Runtime speaking its real wire protocol (moto does not invoke endpoints).

It does what SageMaker does with a request: forwards the body to the endpoint's
container at ``{upstream}/invocations`` and answers with the container's bytes:

- ``POST /endpoints/{name}/invocations``: the container's body as it is; a container
  error status becomes a 424 ``ModelError`` carrying ``OriginalStatusCode`` and
  ``OriginalMessage``, as SageMaker sends it;
- ``POST /endpoints/{name}/invocations-response-stream``: the container's bytes in
  ``PayloadPart`` events (real event-stream framing), cut every ``part_size`` bytes so
  SSE lines straddle parts; a stream that breaks ends with a ``ModelStreamError`` event.

The container is genuine: fnstack's own `fnstack.sagemaker_server` app (in the
tests, with ``remote::openai`` in front of ``tests/support/fake_openai.py``), or any
server with that contract. Faults SageMaker itself raises are scripted::

    with FakeSageMaker(container_url) as fake:
        fake.script(Fault("ThrottlingException"))
        fake.part_size = 5
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.eventstream import (
    EVENTSTREAM,
    Fault,
    ScriptedFake,
    aws_error,
    event_message,
    exception_message,
)

__all__ = ["FakeSageMaker", "Fault", "Seen"]

STATUS = {
    "ValidationError": 400,
    "ModelError": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}


@dataclass
class Seen:
    operation: str  # invocations, invocations-response-stream
    endpoint: str
    headers: dict[str, str]
    body: Any


class FakeSageMaker(ScriptedFake[Fault, Seen]):
    def __init__(self, upstream: str, endpoint: str = "fnstack-test") -> None:
        self.upstream = upstream.rstrip("/")
        self.endpoint = endpoint
        self.part_size: int | None = None  # None: one part per upstream read
        app = Starlette(
            routes=[
                Route("/endpoints/{name}/invocations", self._invoke, methods=["POST"]),
                Route(
                    "/endpoints/{name}/invocations-response-stream", self._invoke_stream,
                    methods=["POST"],
                ),
            ]
        )
        super().__init__(app, "fake-sagemaker")

    def reset(self) -> None:
        super().reset()
        self.part_size = None

    async def _take(self, request: Request, operation: str) -> tuple[bytes, Response | None]:
        raw = await request.body()
        name = request.path_params["name"]
        fault = self._record(Seen(operation, name, dict(request.headers), json.loads(raw)))
        if name != self.endpoint:
            return raw, aws_error(
                400, "ValidationError",
                {"message": f"Endpoint {name} of account 123456789012 not found."},
            )
        if fault is None:
            return raw, None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        return raw, fault.response(STATUS)

    # --- the operations ---

    async def _invoke(self, request: Request) -> Response:
        raw, refused = await self._take(request, "invocations")
        if refused is not None:
            return refused
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.post(
                f"{self.upstream}/invocations", content=raw,
                headers={"content-type": request.headers.get("content-type", "")},
            )
        if answer.status_code >= 400:
            return _model_error(answer.status_code, answer.text)
        return Response(
            answer.content,
            media_type=answer.headers.get("content-type", "application/json"),
            headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"},
        )

    async def _invoke_stream(self, request: Request) -> Response:
        raw, refused = await self._take(request, "invocations-response-stream")
        if refused is not None:
            return refused
        client = httpx.AsyncClient(timeout=60)
        upstream = await client.send(
            client.build_request(
                "POST", f"{self.upstream}/invocations", content=raw,
                headers={"content-type": request.headers.get("content-type", "")},
            ),
            stream=True,
        )
        if upstream.status_code >= 400:
            body = (await upstream.aread()).decode("utf-8", "replace")
            await upstream.aclose()
            await client.aclose()
            return _model_error(upstream.status_code, body)

        async def parts() -> AsyncIterator[bytes]:
            try:
                async for data in upstream.aiter_raw():
                    size = self.part_size or len(data) or 1
                    for i in range(0, len(data), size):
                        yield event_message(
                            "PayloadPart", data[i : i + size], "application/octet-stream"
                        )
            except httpx.HTTPError as exc:
                yield exception_message(
                    "ModelStreamError",
                    {"Message": f"model stream broke: {exc!r}", "ErrorCode": "ModelStreamError"},
                )
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(
            parts(),
            media_type=EVENTSTREAM,
            headers={"X-Amzn-SageMaker-Content-Type": upstream.headers.get("content-type", "")},
        )


def _model_error(status: int, body: str) -> Response:
    """SageMaker's answer when the container answered an error status."""
    return aws_error(
        424,
        "ModelError",
        {
            "ErrorCode": "CLIENT_ERROR_FROM_MODEL" if status < 500 else "SERVER_ERROR_FROM_MODEL",
            "Message": f'Received client error ({status}) from primary with message "{body}".',
            "OriginalStatusCode": status,
            "OriginalMessage": body,
            "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/x",
        },
    )
