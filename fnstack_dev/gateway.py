"""A local API Gateway (REST API) in front of template.yaml's functions.

Each HTTP request becomes the REST API proxy event (payload format 1.0), is routed by
the template's own ``Type: Api`` events to that function and the Lambda response
becomes the HTTP response. The functions are ``FunctionPool``s running the built bundle
(fnstack_dev.sandbox) or, in development mode, ``LocalFunction``s importing the source
tree (fnstack_dev.inprocess): anything with ``async invoke(event, *, http)``.

API Gateway's own behaviour, as the deployed REST API has it:

- the stage prefix (``/prod/v1/...``) of the deployed URL; paths without it are
  accepted too, for convenience;
- the path decoded once: the event's ``path`` is the request path as sent
  (percent-encoded) and path parameters are decoded once;
- header names as the client sent them, plus ``X-Forwarded-For/-Proto/-Port`` and
  ``X-Amzn-Trace-Id``;
- its own errors, in its default shape ``{"message": ...}`` or as the API's
  ``GatewayResponses`` say (status, headers, the ``application/json`` template with
  ``$context.error.messageString`` and a few other ``$context`` variables rendered; an
  unlisted type falls back to ``DEFAULT_4XX`` / ``DEFAULT_5XX``): 403 ``Missing Authentication
  Token`` (no route or method), 413 ``Request Too Long`` (over 10 MB, or an event over
  Lambda's 6 MB invocation limit, measured as Lambda does on the UTF-8 JSON event), 502
  ``Internal server error`` (the function failed, timed out, or answered no valid proxy
  response or more than 6 MB), 504 ``Endpoint request timed out`` (the route's
  integration timeout, ``TimeoutInMillis``, 29 s by default);
- ``BinaryMediaTypes``: a request whose Content-Type matches arrives base64-encoded; a
  base64 response is decoded only when the client's Accept (its first type) matches;
- streaming routes (``ResponseTransferMode: RESPONSE_STREAM``) relay a Web Adapter
  function's stream as it comes (a Python handler's answer, buffered, is sent whole).

The gateway also speaks Lambda's Invoke API (``POST /2015-03-31/functions/NAME/
invocations``, as `sam local start-lambda` does), and, with emulated AWS, polls each
SQS event source and the bucket's S3 notification sources and delivers them to their
function as Lambda's event source mappings and S3 do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

from starlette.types import Receive, Scope, Send

from fnstack_dev.sandbox import Buffered, FunctionError, Streamed
from fnstack_dev.template import LAMBDA_PAYLOAD_LIMIT, Route, Template, match_route

__all__ = ["API_GATEWAY_PAYLOAD_LIMIT", "Function", "Gateway", "rest_event"]

log = logging.getLogger("fnstack.gateway")

API_GATEWAY_PAYLOAD_LIMIT = 10 * 1024 * 1024  # REST API request payload
_INVOKE_PREFIX = "/2015-03-31/functions/"

Headers = list[tuple[bytes, bytes]]


class Function(Protocol):
    async def invoke(self, event: Any, *, http: bool = False) -> Buffered | Streamed: ...

    def close(self) -> None: ...


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes


# Each error API Gateway answers itself: (status, message, x-amzn-errortype, its
# gateway response type).
_TOO_LARGE = (413, "Request Too Long", "RequestTooLongException", "REQUEST_TOO_LARGE")
_NO_ROUTE = (403, "Missing Authentication Token", "MissingAuthenticationTokenException",
             "MISSING_AUTHENTICATION_TOKEN")
_TIMEOUT = (504, "Endpoint request timed out", "IntegrationTimeoutException",
            "INTEGRATION_TIMEOUT")
_FAILED = (502, "Internal server error", "InternalServerErrorException", "DEFAULT_5XX")
_NAME = r"context\.([A-Za-z][A-Za-z0-9_.]*[A-Za-z0-9_])"
_CONTEXT_VAR = re.compile(rf"\$!?(?:\{{{_NAME}\}}|{_NAME})")  # $context.x, ${context.x}


def _apigw_error(error: tuple[int, str, str, str], responses: Mapping[str, Any] | None = None,
                 context: Mapping[str, str] | None = None) -> Reply:
    """An error API Gateway answers itself: its default shape, or the API's
    GatewayResponses entry for its type (else DEFAULT_4XX / DEFAULT_5XX)."""
    status, message, error_type, response_type = error
    headers: Headers = [(b"content-type", b"application/json"),
                        (b"x-amzn-errortype", error_type.encode())]
    body = json.dumps({"message": message})
    responses = responses or {}
    entry = responses.get(response_type) or responses.get(
        "DEFAULT_4XX" if status < 500 else "DEFAULT_5XX")
    if not isinstance(entry, dict):
        return Reply(status, headers, body.encode())
    if entry.get("StatusCode"):
        status = int(entry["StatusCode"])
    for name, value in ((entry.get("ResponseParameters") or {}).get("Headers") or {}).items():
        # Static values are quoted: "'value'".
        headers.append((str(name).lower().encode(), str(value).strip("'").encode()))
    templates = entry.get("ResponseTemplates") or {}
    template = templates.get("application/json") or next(iter(templates.values()), None)
    if isinstance(template, str):
        values = {"error.messageString": json.dumps(message), "error.message": message,
                  "error.responseType": response_type, **(context or {})}
        body = _CONTEXT_VAR.sub(
            lambda m: values.get(m.group(1) or m.group(2), m.group(0)), template)
    return Reply(status, headers, body.encode())


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"


def rest_event(
    *,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[str, str]],
    body: bytes,
    route: Route,
    params: Mapping[str, str],
    stage: str = "prod",
    source_ip: str = "127.0.0.1",
    binary_types: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The API Gateway REST API proxy event (payload 1.0) for one request.

    ``path`` is the request path as sent (percent-encoded), without the stage;
    ``headers`` keep the client's names.
    """
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    qs_single: dict[str, str] = {}
    qs_multi: dict[str, list[str]] = {}
    for qk, qv in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        qs_single[qk] = qv
        qs_multi.setdefault(qk, []).append(qv)
    lower = {k.lower(): v for k, v in single.items()}
    content_type = lower.get("content-type", "").split(";")[0].strip().lower()
    binary = any(_media_match(content_type, t) for t in binary_types)
    text: str | None = None
    if body and not binary:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    now = time.time()
    return {
        "resource": route.path,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": qs_single or None,
        "multiValueQueryStringParameters": qs_multi or None,
        "pathParameters": dict(params) or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid4().hex[:6],
            "resourcePath": route.path,
            "httpMethod": method,
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{stage}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "localhost",
            "requestTimeEpoch": int(now * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": source_ip, "userAgent": lower.get("user-agent")},
            "domainName": "localhost",
            "apiId": "local",
        },
        "body": base64.b64encode(body).decode() if binary and body else text,
        "isBase64Encoded": bool(binary and body),
    }


def _media_match(content_type: str, pattern: str) -> bool:
    pattern = pattern.replace("~1", "/").lower()
    if pattern in ("*/*", content_type):
        return True
    major, _, minor = pattern.partition("/")
    return minor == "*" and content_type.startswith(f"{major}/")


def event_size(event: Any) -> int:
    """An invocation payload's size as Lambda counts it: the UTF-8 JSON document."""
    return len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())


class Gateway:
    """The ASGI app: API Gateway in front of the template's functions."""

    def __init__(
        self,
        template: Template,
        functions: Mapping[str, Function],
        *,
        stage: str | None = None,
        routes: list[Route] | None = None,
    ) -> None:
        self.template = template
        self.routes = routes if routes is not None else template.routes()
        api = template.api_resource()
        stage_name = api.get("StageName")
        self.stage = stage or (stage_name if isinstance(stage_name, str) else "prod")
        self.binary_types = tuple(str(t) for t in api.get("BinaryMediaTypes", []) or [])
        responses = api.get("GatewayResponses")
        self.responses: dict[str, Any] = responses if isinstance(responses, dict) else {}
        self.functions: dict[str, Function] = dict(functions)

    def close(self) -> None:
        for function in self.functions.values():
            function.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        result = await self._handle(scope, receive)
        if isinstance(result, Reply):
            headers = [*result.headers, (b"content-length", str(len(result.body)).encode())]
            await send({"type": "http.response.start", "status": result.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": result.body})
            return
        status, headers, body = result
        await send({"type": "http.response.start", "status": status, "headers": headers})

        async def relay() -> None:
            try:
                async for chunk in body:
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})
            except FunctionError as exc:
                # Too late for a status: the stream ends where the function stopped.
                log.warning("stream ended by the function: %s", exc)
            finally:
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    await aclose()
            await send({"type": "http.response.body", "body": b""})

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # A client that hangs up ends the relay: the function's connection is closed,
        # as API Gateway closes it, and its server sees the disconnect.
        streaming = asyncio.create_task(relay())
        watching = asyncio.create_task(hang_up())
        await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in (streaming, watching):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > API_GATEWAY_PAYLOAD_LIMIT:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > API_GATEWAY_PAYLOAD_LIMIT:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    def _headers(self, scope: Scope) -> list[tuple[str, str]]:
        # The client's spelling where the server kept it (fnstack_dev.server), else ASGI's.
        raw = scope.get("fnstack.raw_headers") or scope.get("headers") or []
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        names = {k.lower() for k, _ in headers}
        client = scope.get("client") or ("127.0.0.1", 0)
        server = scope.get("server") or ("127.0.0.1", 80)
        if "x-forwarded-for" in names:
            headers = [(k, f"{v}, {client[0]}" if k.lower() == "x-forwarded-for" else v)
                       for k, v in headers]
        else:
            headers.append(("X-Forwarded-For", client[0]))
        if "x-forwarded-proto" not in names:
            headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if "x-forwarded-port" not in names:
            headers.append(("X-Forwarded-Port", str(server[1])))
        if "x-amzn-trace-id" not in names:
            headers.append(("X-Amzn-Trace-Id", _trace_id()))
        return headers

    async def _handle(self, scope: Scope, receive: Receive) -> Reply | tuple[
            int, Headers, AsyncIterator[bytes]]:
        method = scope["method"]
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
        prefix = f"/{self.stage}"
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix):] or "/"
        context = {"httpMethod": method, "path": f"{prefix}{path}", "stage": self.stage,
                   "requestId": str(uuid.uuid4())}

        def error(kind: tuple[int, str, str, str]) -> Reply:
            return _apigw_error(kind, self.responses, context)

        body = await self._read(scope, receive)
        if body is None:
            return error(_TOO_LARGE)
        if method == "POST" and path.startswith(_INVOKE_PREFIX) and path.endswith("/invocations"):
            return await self._lambda_invoke(path[len(_INVOKE_PREFIX):-len("/invocations")], body)
        route, params = match_route(self.routes, method, path)
        if route is None:
            # API Gateway's answer to a path or method no resource has.
            return error(_NO_ROUTE)
        assert isinstance(params, dict)
        client = scope.get("client") or ("127.0.0.1", 0)
        headers = self._headers(scope)
        event = rest_event(
            method=method, path=path, query=scope.get("query_string", b""),
            headers=headers, body=body, route=route, params=params, stage=self.stage,
            source_ip=client[0], binary_types=self.binary_types,
        )
        if event_size(event) > LAMBDA_PAYLOAD_LIMIT:
            return error(_TOO_LARGE)
        function = self.functions[route.function]
        deadline = time.monotonic() + route.timeout_ms / 1000
        try:
            result = await asyncio.wait_for(function.invoke(event, http=True),
                                            route.timeout_ms / 1000)
        except TimeoutError:
            log.warning("%s: integration timeout after %d ms", route.function, route.timeout_ms)
            return error(_TIMEOUT)
        except FunctionError as exc:
            log.error("%s failed: %s", route.function, json.dumps(exc.payload))
            return error(_FAILED)
        if isinstance(result, Streamed):
            return result.status, result.headers, _until(result.body, deadline)
        accept = dict((k.lower(), v) for k, v in headers).get("accept", "")
        return self._response(route, result.payload, accept, context)

    def _response(self, route: Route, result: Any, accept: str,
                  context: Mapping[str, str]) -> Reply:
        if not isinstance(result, dict) or "statusCode" not in result:
            log.error("%s returned no valid proxy response (statusCode, headers, body)",
                      route.function)
            return _apigw_error(_FAILED, self.responses, context)
        if event_size(result) > LAMBDA_PAYLOAD_LIMIT:
            log.error("%s's response exceeds Lambda's %d bytes", route.function,
                      LAMBDA_PAYLOAD_LIMIT)
            return _apigw_error(_FAILED, self.responses, context)
        raw = result.get("body") or ""
        first_accept = accept.split(",")[0].split(";")[0].strip().lower()
        decode = result.get("isBase64Encoded") and any(
            _media_match(first_accept, t) for t in self.binary_types)
        body = base64.b64decode(raw) if decode else str(raw).encode()
        headers: dict[str, list[str]] = {}
        for k, v in (result.get("headers") or {}).items():
            headers[k.lower()] = [str(v)]
        for k, vs in (result.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = [str(v) for v in vs]
        headers.pop("content-length", None)
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, vs in headers.items() for v in vs]
        return Reply(int(result["statusCode"]), out, body)

    async def _lambda_invoke(self, name: str, payload: bytes) -> Reply:
        json_type = (b"content-type", b"application/json")
        function = self.functions.get(name)
        if function is None:
            body = json.dumps({"Type": "User", "message": f"Function not found: {name}"})
            return Reply(404, [json_type, (b"x-amzn-errortype", b"ResourceNotFoundException")],
                         body.encode())
        try:
            event = json.loads(payload or b"{}")
            http = isinstance(event, dict) and "httpMethod" in event and "requestContext" in event
            result = await function.invoke(event, http=http)
        except FunctionError as exc:
            return Reply(200, [json_type, (b"x-amz-function-error", b"Unhandled")],
                         json.dumps(exc.payload).encode())
        except ValueError as exc:
            body = json.dumps({"Type": "User", "message": f"Could not parse request body: {exc}"})
            return Reply(400, [json_type, (b"x-amzn-errortype", b"InvalidRequestContentException")],
                         body.encode())
        if isinstance(result, Streamed):
            return Reply(200, [json_type], json.dumps(await proxy_response(result)).encode())
        return Reply(200, [json_type], json.dumps(result.payload).encode())

    # --- event sources (emulated AWS only) -------------------------------------------------

    async def poll_sqs(self, sqs: Any, sources: list[tuple[str, str, int]]) -> None:
        """Deliver queue messages to functions as Lambda's event source mapping does."""
        while True:
            idle = True
            for function_name, queue_url, batch_size in sources:
                resp = await asyncio.to_thread(
                    sqs.receive_message, QueueUrl=queue_url,
                    MaxNumberOfMessages=min(batch_size, 10), AttributeNames=["All"],
                )
                messages = resp.get("Messages", [])
                if not messages:
                    continue
                idle = False
                arn = (await asyncio.to_thread(
                    sqs.get_queue_attributes, QueueUrl=queue_url, AttributeNames=["QueueArn"]
                ))["Attributes"]["QueueArn"]
                records = [{
                    "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"], "attributes": m.get("Attributes", {}),
                    "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1",
                } for m in messages]
                try:
                    result = await self.functions[function_name].invoke({"Records": records})
                except FunctionError as exc:
                    log.error("SQS delivery to %s failed: %s", function_name, exc)
                    continue
                payload = result.payload if isinstance(result, Buffered) else None
                failed = {f.get("itemIdentifier") for f in
                          (payload or {}).get("batchItemFailures", [])}
                for m in messages:
                    if m["MessageId"] not in failed:
                        await asyncio.to_thread(sqs.delete_message, QueueUrl=queue_url,
                                                ReceiptHandle=m["ReceiptHandle"])
            if idle:
                await asyncio.sleep(1.0)

    async def poll_s3(self, s3: Any, sources: list[S3Source], interval: float = 1.0) -> None:
        """Deliver s3:ObjectCreated notifications for new objects (ListObjectsV2 polling:
        moto cannot call a local function). Objects there at start are not announced."""
        seen: dict[tuple[str, str], str] = {}
        first = True
        while True:
            for source in sources:
                try:
                    objects = await asyncio.to_thread(_list_objects, s3, source.bucket,
                                                      source.prefix)
                except Exception as exc:
                    log.warning("S3 poll of %s failed: %s", source.bucket, exc)
                    continue
                fresh = []
                for obj in objects:
                    key = (source.bucket, obj["Key"])
                    if seen.get(key) != obj["ETag"]:
                        seen[key] = obj["ETag"]
                        if not first and obj["Key"].endswith(source.suffix):
                            fresh.append(obj)
                for obj in fresh:
                    print(f"S3 Object Created s3://{source.bucket}/{obj['Key']} -> "
                          f"{source.function}", file=sys.stderr, flush=True)
                    maker = eventbridge_s3_event if source.eventbridge else s3_event
                    event = maker(source.bucket, obj["Key"], int(obj.get("Size", 0)),
                                  obj["ETag"])
                    try:
                        await self.functions[source.function].invoke(event)
                    except FunctionError as exc:
                        log.error("S3 notification to %s failed: %s", source.function, exc)
            first = False
            await asyncio.sleep(interval)


@dataclass(frozen=True)
class S3Source:
    function: str
    bucket: str
    prefix: str = ""
    suffix: str = ""
    eventbridge: bool = False  # S3 -> EventBridge -> rule, rather than a notification


def _list_objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Contents", []))
    return out


def s3_event(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """The s3:ObjectCreated:Put notification S3 sends to Lambda (keys URL-encoded)."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:LOCAL"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper()},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "fnstack-local",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "LOCAL"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote(key, safe="/").replace("%20", "+"), "size": size,
                       "eTag": etag.strip('"'), "sequencer": f"{time.time_ns():X}"},
        },
    }]}


async def proxy_response(result: Streamed) -> dict[str, Any]:
    """A Web Adapter function's streamed answer, gathered as a buffered proxy response
    (what the function answers a direct Invoke with)."""
    body = b"".join([chunk async for chunk in result.body])
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in result.headers}
    try:
        return {"statusCode": result.status, "headers": headers, "body": body.decode(),
                "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"statusCode": result.status, "headers": headers,
                "body": base64.b64encode(body).decode(), "isBase64Encoded": True}


def eventbridge_s3_event(bucket: str, key: str, size: int, etag: str) -> dict[str, Any]:
    """S3's "Object Created" event as EventBridge delivers it to a rule's target."""
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created",
        "source": "aws.s3", "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": size, "etag": etag.strip('"'),
                              "sequencer": f"{time.time_ns():X}"},
                   "request-id": uuid.uuid4().hex[:16].upper(), "requester": "123456789012",
                   "source-ip-address": "127.0.0.1", "reason": "PutObject"},
    }


async def _until(body: AsyncIterator[bytes], deadline: float) -> AsyncIterator[bytes]:
    """A streamed body, cut at the route's integration timeout."""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stream cut at the integration timeout")
                return
            try:
                chunk = await asyncio.wait_for(anext(body), left)
            except StopAsyncIteration:
                return
            except TimeoutError:
                log.warning("stream cut at the integration timeout")
                return
            yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
