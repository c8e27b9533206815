"""A local API Gateway (REST API) in front of template.yaml's functions, in-process.

Each HTTP request becomes the REST API proxy event (payload format 1.0), is routed by
the template's own ``Type: Api`` events to that function's handler and the Lambda
response becomes the HTTP response. Like Lambda, each function is one module instance
(imported once, with its environment) running one invocation at a time on its own
thread, which keeps the event loop Mangum made at import.

Limits as on AWS: requests over 6 MB get 413; buffered routes time out after their
integration timeout (29 s by default) with 504; streaming routes
(``ResponseTransferMode: RESPONSE_STREAM``) have no such timeout, and answer buffered
here (the whole SSE body, in one response). Errors are in OpenAI's shape.

The gateway also speaks Lambda's Invoke API (``POST /2015-03-31/functions/NAME/
invocations``, as `sam local start-lambda` does), so SQS/S3 sample events can be sent
to the worker, and, with emulated AWS, polls each SQS event source and delivers its
messages to the function the way Lambda's event source mapping does.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from fnstack.lambda_runtime import LambdaContext
from fnstack_dev.template import LAMBDA_PAYLOAD_LIMIT, FunctionDef, Route, Template, match_route

__all__ = ["Gateway", "LocalFunction", "rest_event"]

log = logging.getLogger("fnstack.gateway")

_ENV_LOCK = threading.Lock()
_INVOKE_PREFIX = "/2015-03-31/functions/"


class LocalFunction:
    """One function of the template, imported in this process on its own thread."""

    def __init__(self, fn: FunctionDef, env: Mapping[str, str]) -> None:
        if fn.package_type != "Zip" and not fn.handler:
            raise ValueError(f"{fn.logical_id} is a container image without a handler")
        if "." not in fn.handler:
            raise ValueError(f"{fn.logical_id}: handler {fn.handler!r} is not module.attribute")
        self.fn = fn
        self.env = dict(env)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=fn.logical_id)
        self._handler: Any = None
        self.module: ModuleType | None = None

    def load(self) -> None:
        """Import the handler module (the cold start), on the function's own thread."""
        self._executor.submit(self._import).result()

    def _import(self) -> None:
        module_name, _, attr = self.fn.handler.rpartition(".")
        path = self.fn.code_dir / f"{module_name.replace('.', '/')}.py"
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.fn.logical_id}: handler {self.fn.handler!r} needs {path}, which is missing"
            )
        with _ENV_LOCK:
            # One process hosts every function: the variables stay set (they agree
            # between functions except for what only one of them reads).
            os.environ.update(self.env)
            code_dir = str(self.fn.code_dir)
            if code_dir not in sys.path:
                sys.path.insert(0, code_dir)
        unique = f"_fnstack_fn_{self.fn.logical_id}"
        spec = importlib.util.spec_from_file_location(unique, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
        handler = getattr(module, attr, None)
        if not callable(handler):
            raise AttributeError(f"{path} defines no callable {attr!r} (handler {self.fn.handler})")
        self.module, self._handler = module, handler

    def invoke(self, event: dict[str, Any]) -> Any:
        """Run the handler with ``event`` (blocking); loads the module on first use."""
        return self._executor.submit(self._call, event).result()

    async def ainvoke(self, event: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, event)

    def _call(self, event: dict[str, Any]) -> Any:
        if self._handler is None:
            self._import()
        context = LambdaContext(function_name=self.fn.logical_id,
                                memory_limit_in_mb=self.fn.memory_mb, timeout_s=self.fn.timeout_s)
        return self._handler(event, context)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def rest_event(
    *,
    method: str,
    path: str,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    route: Route,
    params: Mapping[str, str],
    stage: str = "prod",
    source_ip: str = "127.0.0.1",
    binary_types: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The API Gateway REST API proxy event (payload 1.0) for one request."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in headers:
        name, value = k.decode("latin-1"), v.decode("latin-1")
        canonical = "-".join(p.capitalize() for p in name.split("-"))
        single[canonical] = value
        multi.setdefault(canonical, []).append(value)
    qs_single: dict[str, str] = {}
    qs_multi: dict[str, list[str]] = {}
    for qk, qv in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        qs_single[qk] = qv
        qs_multi.setdefault(qk, []).append(qv)
    content_type = single.get("Content-Type", "").split(";")[0].strip().lower()
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
            "identity": {"sourceIp": source_ip, "userAgent": single.get("User-Agent")},
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


def _error(status: int, message: str, type_: str, code: str | None) -> tuple[int, list[
    tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()
    return status, [(b"content-type", b"application/json")], body


class Gateway:
    """The ASGI app: API Gateway in front of the template's functions."""

    def __init__(
        self,
        template: Template,
        envs: Mapping[str, Mapping[str, str]],
        *,
        stage: str | None = None,
        functions: Mapping[str, LocalFunction] | None = None,
    ) -> None:
        self.template = template
        self.routes = template.routes()
        api = template.api_resource()
        stage_name = api.get("StageName")
        self.stage = stage or (stage_name if isinstance(stage_name, str) else "prod")
        self.binary_types = tuple(str(t) for t in api.get("BinaryMediaTypes", []) or [])
        self.functions: dict[str, LocalFunction] = dict(functions or {})
        for fn in template.functions.values():
            if fn.logical_id not in self.functions and fn.package_type == "Zip":
                self.functions[fn.logical_id] = LocalFunction(fn, envs.get(fn.logical_id, {}))

    def load(self, names: list[str] | None = None) -> None:
        """Import the functions that serve routes (all cold starts happen up front)."""
        routed = {r.function for r in self.routes}
        for name in names if names is not None else sorted(routed):
            self.functions[name].load()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        status, headers, body = await self._handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > LAMBDA_PAYLOAD_LIMIT:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > LAMBDA_PAYLOAD_LIMIT:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]],
                                                                      bytes]:
        method, path = scope["method"], scope["path"]
        body = await self._read(scope, receive)
        if body is None:
            return _error(413, f"request payload exceeds Lambda's limit of {LAMBDA_PAYLOAD_LIMIT}"
                          " bytes; upload large files through the files API",
                          "invalid_request_error", "payload_too_large")
        if method == "POST" and path.startswith(_INVOKE_PREFIX) and path.endswith("/invocations"):
            return await self._lambda_invoke(path[len(_INVOKE_PREFIX):-len("/invocations")], body)
        route, method_mismatch = match_route(self.routes, method, path)
        if route is None:
            if method_mismatch:
                return _error(405, f"method {method} not allowed on {path}",
                              "invalid_request_error", "method_not_allowed")
            return _error(404, f"no route for {method} {path} in {self.template.path.name}",
                          "invalid_request_error", "not_found")
        assert isinstance(method_mismatch, dict)
        client = scope.get("client") or ("127.0.0.1", 0)
        event = rest_event(
            method=method, path=path, query=scope.get("query_string", b""),
            headers=list(scope.get("headers") or []), body=body, route=route,
            params=method_mismatch, stage=self.stage, source_ip=client[0],
            binary_types=self.binary_types,
        )
        if len(json.dumps(event)) > LAMBDA_PAYLOAD_LIMIT:
            return _error(413, f"request payload exceeds Lambda's limit of {LAMBDA_PAYLOAD_LIMIT}"
                          " bytes", "invalid_request_error", "payload_too_large")
        function = self.functions[route.function]
        try:
            if route.streaming:
                result = await function.ainvoke(event)
            else:
                result = await asyncio.wait_for(function.ainvoke(event), route.timeout_ms / 1000)
        except TimeoutError:
            return _error(504, f"endpoint request timed out after {route.timeout_ms} ms "
                          "(API Gateway integration timeout)", "api_error", "timeout")
        except Exception as exc:
            log.exception("function failed", extra={"function": route.function})
            return _error(502, f"{route.function} failed: {type(exc).__name__}: {exc}",
                          "api_error", "bad_gateway")
        return self._response(route, result)

    def _response(self, route: Route, result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if not isinstance(result, dict) or "statusCode" not in result:
            return _error(502, f"{route.function} returned no valid proxy response "
                          "(statusCode, headers, body)", "api_error", "bad_gateway")
        raw = result.get("body") or ""
        body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
        if not route.streaming and len(body) > LAMBDA_PAYLOAD_LIMIT:
            return _error(502, f"{route.function}'s response exceeds {LAMBDA_PAYLOAD_LIMIT} "
                          "bytes", "api_error", "response_too_large")
        headers: dict[str, list[str]] = {}
        for k, v in (result.get("headers") or {}).items():
            headers[k.lower()] = [str(v)]
        for k, vs in (result.get("multiValueHeaders") or {}).items():
            headers[k.lower()] = [str(v) for v in vs]
        headers.pop("content-length", None)
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, vs in headers.items() for v in vs]
        out.append((b"content-length", str(len(body)).encode()))
        return int(result["statusCode"]), out, body

    async def _lambda_invoke(self, name: str, payload: bytes) -> tuple[
            int, list[tuple[bytes, bytes]], bytes]:
        function = self.functions.get(name)
        if function is None:
            body = json.dumps({"Type": "User", "message": f"Function not found: {name}"})
            return 404, [(b"content-type", b"application/json"),
                         (b"x-amzn-errortype", b"ResourceNotFoundException")], body.encode()
        try:
            event = json.loads(payload or b"{}")
            result = await function.ainvoke(event)
        except Exception as exc:
            err = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            return 200, [(b"content-type", b"application/json"),
                         (b"x-amz-function-error", b"Unhandled")], json.dumps(err).encode()
        return 200, [(b"content-type", b"application/json")], json.dumps(result).encode()

    # --- SQS event sources (emulated AWS only) ------------------------------------------

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
                arn = sqs.get_queue_attributes(
                    QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                records = [{
                    "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"], "attributes": m.get("Attributes", {}),
                    "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1",
                } for m in messages]
                try:
                    result = await self.functions[function_name].ainvoke({"Records": records})
                except Exception:
                    log.exception("SQS delivery failed", extra={"function": function_name})
                    continue
                failed = {f.get("itemIdentifier") for f in
                          (result or {}).get("batchItemFailures", [])}
                for m in messages:
                    if m["MessageId"] not in failed:
                        await asyncio.to_thread(sqs.delete_message, QueueUrl=queue_url,
                                                ReceiptHandle=m["ReceiptHandle"])
            if idle:
                await asyncio.sleep(1.0)
