# ruff: noqa: E501  (the echo template keeps its routes one per line, as YAML reads best)
"""The emulated API Gateway: routing, the REST proxy event, limits, event dispatch."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fnstack_dev.gateway import Gateway
from fnstack_dev.inprocess import LocalFunction
from fnstack_dev.template import load_template
from tests.support.gateway import emulated_gateway

# A template of its own: an echo function shows exactly which event each request made.
# (Long YAML lines are the template's own.)
ECHO_TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties: {StageName: test, BinaryMediaTypes: ["application/octet-stream"]}
  Echo:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: echo.handler
      Runtime: python3.12
      Environment: {Variables: {ECHO_NAME: !Sub "${AWS::StackName}-echo"}}
      Events:
        Item: {Type: Api, Properties: {RestApiId: !Ref Api, Path: "/v1/items/{item_id}", Method: GET}}
        Deep: {Type: Api, Properties: {RestApiId: !Ref Api, Path: "/v1/models/{proxy+}", Method: ANY}}
        Exact: {Type: Api, Properties: {RestApiId: !Ref Api, Path: /v1/models/special, Method: GET}}
        Bin: {Type: Api, Properties: {RestApiId: !Ref Api, Path: /v1/bin, Method: POST}}
        Slow: {Type: Api, Properties: {RestApiId: !Ref Api, Path: /v1/slow, Method: GET, TimeoutInMillis: 300}}
        SlowStream:
          Type: Api
          Properties: {RestApiId: !Ref Api, Path: /v1/slow-stream, Method: GET, TimeoutInMillis: 300,
                       ResponseTransferMode: RESPONSE_STREAM}
"""

ECHO_MODULE = '''\
import base64, json, os, time

def handler(event, context):
    if event["path"].startswith("/v1/slow"):
        time.sleep(0.8)
    if event["path"] == "/v1/bin":
        raw = base64.b64decode(event["body"]) if event["isBase64Encoded"] else b""
        return {"statusCode": 201, "isBase64Encoded": True,
                "headers": {"content-type": "application/octet-stream"},
                "multiValueHeaders": {"x-multi": ["a", "b"]},
                "body": base64.b64encode(raw[::-1]).decode()}
    event["env_name"] = os.environ.get("ECHO_NAME")
    event["function_name"] = context.function_name
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(event)}
'''


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.AsyncClient]:
    root = tmp_path_factory.mktemp("echo")
    (root / "code").mkdir()
    (root / "code" / "echo.py").write_text(ECHO_MODULE)
    (root / "template.yaml").write_text(ECHO_TEMPLATE)
    from fnstack_dev.template import Resolver

    template = load_template(root / "template.yaml")
    env = template.environment("Echo", Resolver(template))
    app = Gateway(template, {"Echo": LocalFunction(template.function("Echo"), env)})
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    app.close()


async def test_rest_event_shape(echo: httpx.AsyncClient) -> None:
    r = await echo.get("/v1/items/a%20b?x=1&x=2&y=", headers={"X-Test": "yes"})
    assert r.status_code == 200
    event: dict[str, Any] = r.json()
    assert event["resource"] == "/v1/items/{item_id}"
    assert event["httpMethod"] == "GET"
    assert event["pathParameters"] == {"item_id": "a b"}
    assert event["queryStringParameters"] == {"x": "2", "y": ""}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": [""]}
    # ASGI lower-cases names; the CLI's server keeps the client's (test_sandbox).
    assert event["headers"]["x-test"] == "yes"
    assert event["multiValueHeaders"]["x-test"] == ["yes"]
    assert event["requestContext"]["stage"] == "test"
    assert event["requestContext"]["path"] == "/test/v1/items/a%20b"
    assert event["path"] == "/v1/items/a%20b"  # as sent: Mangum decodes it, once
    assert event["body"] is None and event["isBase64Encoded"] is False
    assert event["env_name"] == "fnstack-echo"  # !Sub resolved in the function's env
    assert event["function_name"] == "Echo"


async def test_greedy_path_and_specificity(echo: httpx.AsyncClient) -> None:
    r = await echo.delete("/v1/models/meta-llama/Llama-3.2-1B")
    assert r.json()["pathParameters"] == {"proxy": "meta-llama/Llama-3.2-1B"}
    assert r.json()["resource"] == "/v1/models/{proxy+}"
    r = await echo.get("/v1/models/special")
    assert r.json()["resource"] == "/v1/models/special"


async def test_unknown_route_and_method(echo: httpx.AsyncClient) -> None:
    # API Gateway's own answer, in its own shape, for a path or a method it lacks.
    for r in (await echo.get("/v1/nothing"), await echo.post("/v1/items/1")):
        assert r.status_code == 403
        assert r.json() == {"message": "Missing Authentication Token"}


async def test_binary_bodies_both_ways(echo: httpx.AsyncClient) -> None:
    payload = bytes(range(256))
    r = await echo.post("/v1/bin", content=payload,
                        headers={"content-type": "application/octet-stream",
                                 "accept": "application/octet-stream"})
    assert r.status_code == 201
    assert r.content == payload[::-1]
    assert r.headers.get_list("x-multi") == ["a", "b"]


async def test_payload_limit(echo: httpx.AsyncClient) -> None:
    r = await echo.post("/v1/bin", content=b"x" * (6 * 1024 * 1024 + 1),
                        headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


async def test_integration_timeout(echo: httpx.AsyncClient) -> None:
    # Each route has its own TimeoutInMillis, streaming or not.
    for path in ("/v1/slow", "/v1/slow-stream"):
        r = await echo.get(path)
        assert r.status_code == 504
        assert r.json() == {"message": "Endpoint request timed out"}
        await asyncio.sleep(1)  # the invocation goes on: it holds the only instance


async def test_gateway_responses(tmp_path: Path) -> None:
    # The API's GatewayResponses shape its own errors: status, headers, the JSON template;
    # a type not listed falls back to DEFAULT_4XX / DEFAULT_5XX.
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "echo.py").write_text(ECHO_MODULE)
    responses = """
      GatewayResponses:
        MISSING_AUTHENTICATION_TOKEN:
          StatusCode: "404"
          ResponseParameters: {Headers: {X-Why: "'no route'"}}
          ResponseTemplates:
            application/json: '{"error": {"message": "Invalid URL ($context.httpMethod $context.path)", "type": $context.error.messageString}}'
        DEFAULT_5XX:
          ResponseTemplates:
            application/json: '{"error": {"message": $context.error.messageString, "kind": "$context.error.responseType"}}'
"""
    text = ECHO_TEMPLATE.replace(
        'Properties: {StageName: test, BinaryMediaTypes: ["application/octet-stream"]}',
        'Properties:\n      StageName: test\n      BinaryMediaTypes: ["application/octet-stream"]'
        + responses.rstrip())
    (tmp_path / "template.yaml").write_text(text)
    from fnstack_dev.template import Resolver

    template = load_template(tmp_path / "template.yaml")
    env = template.environment("Echo", Resolver(template))
    app = Gateway(template, {"Echo": LocalFunction(template.function("Echo"), env)})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as gw:
        r = await gw.get("/test/v1/nothing")
        assert r.status_code == 404 and r.headers["x-why"] == "no route"
        assert r.json() == {"error": {"message": "Invalid URL (GET /test/v1/nothing)",
                                      "type": "Missing Authentication Token"}}
        r = await gw.get("/v1/slow")
        assert r.status_code == 504  # INTEGRATION_TIMEOUT, via DEFAULT_5XX
        assert r.json() == {"error": {"message": "Endpoint request timed out",
                                      "kind": "INTEGRATION_TIMEOUT"}}
        r = await gw.post("/v1/bin", content=b"x" * (6 * 1024 * 1024 + 1),
                          headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413 and r.json() == {"message": "Request Too Long"}
        await asyncio.sleep(1)  # the slow invocation goes on
    app.close()


async def test_invoke_api(echo: httpx.AsyncClient) -> None:
    r = await echo.post("/2015-03-31/functions/Nope/invocations", content=b"{}")
    assert r.status_code == 404


# --- the real template, as the API suite starts it ---------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, glue_config: Path) -> Iterator[
    tuple[str, Path]
]:
    tmp = tmp_path_factory.mktemp("gateway")
    with emulated_gateway(tmp, args=["--env", f"FNSTACK_CONFIG={glue_config}"]) as base_url:
        yield base_url, tmp / "gateway.log"


def test_real_template_routes(gateway: tuple[str, Path]) -> None:
    base_url, _ = gateway
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "OK"}
        assert http.get("/models").json() == {"object": "list", "data": []}
        r = http.get("/models/org/some-model/v2")
        assert r.status_code == 404
        assert "org/some-model/v2" in r.json()["error"]["message"]
        r = http.get("/does/not/exist")
        assert r.status_code == 404
        assert set(r.json()) == {"error"}
        assert r.json()["error"]["code"] == "not_found"
        # API Gateway's own errors, in OpenAI's shape by the template's GatewayResponses.
        r = http.post("/chat/completions", content=b"x" * (10 * 1024 * 1024 + 1),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json() == {"error": {"message": "Request Too Long",
                                      "type": "invalid_request_error", "param": None,
                                      "code": "payload_too_large"}}
    r = httpx.get(base_url.removesuffix("/v1") + "/", timeout=30)  # no resource: not /{proxy+}
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert r.json()["error"]["message"].startswith("Invalid URL (GET /")


def test_real_template_dispatches_events_to_the_worker(gateway: tuple[str, Path]) -> None:
    base_url, log = gateway
    root = base_url.removesuffix("/v1")
    event = json.loads((Path(__file__).parents[2] / "events" / "s3-inbox-object-created.json")
                       .read_text())
    r = httpx.post(f"{root}/2015-03-31/functions/BatchWorkerFunction/invocations", json=event)
    assert r.json() == {"started": [], "skipped": ["inbox/my batch input.jsonl"]}
    # A message on the emulated queue reaches the worker through the event source poller.
    import boto3

    endpoint = re.search(r"emulated AWS at (\S+)\)", log.read_text())
    assert endpoint, log.read_text()
    sqs = boto3.client("sqs", endpoint_url=endpoint.group(1), region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    (url,) = sqs.list_queues(QueueNamePrefix="fnstack-BatchQueue")["QueueUrls"]
    sent = sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"batch_id": "b1"}))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sent["MessageId"] not in log.read_text():
        time.sleep(0.3)
    assert sent["MessageId"] in log.read_text()
    assert "not a job message" in log.read_text()
