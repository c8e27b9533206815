"""template.yaml: valid CloudFormation after the SAM transform, routes that match the
app's, and emulated resources identical to what the template declares."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from fnstack.app import create_app, served_routes
from fnstack.config import parse_config
from fnstack.spec import Api
from fnstack_dev import validate_template
from fnstack_dev.template import Resolver, Template, load_template, match_route
from tests.aws.conftest import MINIMAL_AWS_CONFIG, TEMPLATE
from tests.support import aws as aws_support

# What each routed function serves (functions/<name>.py passes the same apis).
FUNCTION_APIS = {
    "AdminFunction": [Api.providers, Api.inspect],
    "ModelsFunction": [Api.models],
    "InferenceFunction": [Api.inference],
}
CORE_ROUTES_FUNCTION = "AdminFunction"  # /v1/health and /v1/version live in every app
CATCH_ALL = "/{proxy+}"


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(TEMPLATE)


def test_translated_template_passes_cfn_lint() -> None:
    cfn = validate_template.translate(TEMPLATE)
    matches = validate_template.lint(cfn)
    assert validate_template.errors(matches) == []
    kinds = {r["Type"] for r in cfn["Resources"].values()}
    assert {"AWS::Lambda::Function", "AWS::Lambda::LayerVersion", "AWS::ApiGateway::RestApi",
            "AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::SQS::Queue"} <= kinds


def test_template_without_image_function_translates() -> None:
    cfn = validate_template.translate(TEMPLATE, {"WithInferenceImage": "false"})
    assert validate_template.errors(validate_template.lint(cfn)) == []


def test_streaming_routes_use_response_stream_integration() -> None:
    cfn = validate_template.translate(TEMPLATE)
    body = next(r for r in cfn["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi")
    paths = body["Properties"]["Body"]["paths"]
    integration = paths["/v1/chat/completions"]["x-amazon-apigateway-any-method"][
        "x-amazon-apigateway-integration"]
    assert integration["responseTransferMode"] == "STREAM"
    assert "response-streaming-invocations" in str(integration["uri"])


def test_validator_rejects_a_broken_template(tmp_path: Any) -> None:
    bad = yaml.safe_load(re.sub(r"!\w+", "", TEMPLATE.read_text()))
    bad["Resources"]["Table"]["Properties"]["BillingMode"] = "FREE_FOR_ALL"
    for res in bad["Resources"].values():
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = str(TEMPLATE.parent / props[key])
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert validate_template.main([str(path)]) == 1


def _app_routes(apis: list[Api]) -> list[tuple[str, str]]:
    config = parse_config(yaml.safe_load(MINIMAL_AWS_CONFIG), env={
        "FNSTACK_TABLE": "tbl", "FNSTACK_BUCKET": "bkt", "FNSTACK_QUEUE_URL": "q"})
    app = create_app(config, apis=apis, lifespan=False)
    return [(r["method"], r["route"]) for r in served_routes(app)]


def _concrete(path: str) -> str:
    # An example request path for a route pattern: '{id:path}' spans segments.
    path = re.sub(r"\{[^}/]+:path\}", "org/name-1.5", path)
    return re.sub(r"\{[^}/]+\}", "id-123", path)


def test_routed_functions_are_the_api_groups(template: Template) -> None:
    assert {r.function for r in template.routes()} == set(FUNCTION_APIS)


@pytest.mark.parametrize("function", sorted(FUNCTION_APIS))
def test_every_app_route_reaches_its_function(template: Template, function: str) -> None:
    routes = _app_routes(FUNCTION_APIS[function])
    assert routes, f"{function} serves no route"
    for method, path in routes:
        owner = CORE_ROUTES_FUNCTION if path in ("/v1/health", "/v1/version") else function
        route, _ = match_route(template.routes(), method, _concrete(path))
        assert route is not None, f"{method} {path} has no route in template.yaml"
        assert route.function == owner, f"{method} {path} goes to {route.function}, not {owner}"
        assert route.path != CATCH_ALL, f"{method} {path} only reaches the catch-all 404 route"


@pytest.mark.parametrize("function", sorted(FUNCTION_APIS))
def test_every_template_route_serves_an_app_route(template: Template, function: str) -> None:
    app_routes = _app_routes(FUNCTION_APIS[function])
    for route in template.function(function).routes:
        if route.path == CATCH_ALL:
            continue
        served = [
            (m, p) for m, p in app_routes
            if match_route([route], m, _concrete(p))[0] is route
        ]
        assert served, f"template route {route.method} {route.path} ({function}) serves nothing"


def test_model_ids_with_slashes_route_through_a_greedy_parameter(template: Template) -> None:
    route, params = match_route(template.routes(), "GET", "/v1/models/meta-llama/Llama-3.2-1B")
    assert route is not None and route.function == "ModelsFunction"
    assert params == {"proxy": "meta-llama/Llama-3.2-1B"}
    route, params = match_route(template.routes(), "GET", "/v1/unknown/thing")
    assert route is not None and route.function == "AdminFunction" and route.path == CATCH_ALL


def test_queue_visibility_covers_six_worker_timeouts(template: Template) -> None:
    worker = template.function("BatchWorkerFunction")
    queue = template.resources["BatchQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * worker.timeout_s
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["BatchDeadLetterQueue", "Arn"]}


def test_table_is_the_kv_dynamodb_schema(template: Template) -> None:
    props = Resolver(template).resolve(template.resources["Table"]["Properties"])
    for key, want in aws_support.DYNAMODB_TABLE_SCHEMA.items():
        assert props[key] == want, key
    assert props["TimeToLiveSpecification"] == {
        "AttributeName": aws_support.DYNAMODB_TTL_ATTRIBUTE, "Enabled": True}


def test_function_environment_points_at_the_resources(template: Template) -> None:
    env = template.environment("ModelsFunction", Resolver(template))
    assert env["FNSTACK_CONFIG"] == "aws"
    assert env["FNSTACK_TABLE"] == "fnstack-Table"
    assert env["FNSTACK_BUCKET"] == "fnstack-123456789012-us-east-1-data"
    assert env["FNSTACK_QUEUE_URL"].endswith("/123456789012/fnstack-BatchQueue")


def test_emulated_resources_match_the_template(template: Template) -> None:
    from fnstack_dev.emulate import EmulatedAws

    with EmulatedAws(template) as aws:
        ddb = aws.client("dynamodb")
        table = ddb.describe_table(TableName=aws.refs["Table"])["Table"]
        want = template.resources["Table"]["Properties"]
        assert table["KeySchema"] == want["KeySchema"]
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            want["AttributeDefinitions"], key=str)
        (gsi,) = table["GlobalSecondaryIndexes"]
        assert gsi["IndexName"] == "by_owner"
        assert gsi["KeySchema"] == want["GlobalSecondaryIndexes"][0]["KeySchema"]
        assert gsi["Projection"] == {"ProjectionType": "ALL"}
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        ttl = ddb.describe_time_to_live(TableName=aws.refs["Table"])["TimeToLiveDescription"]
        assert ttl["AttributeName"] == "ttl" and ttl["TimeToLiveStatus"] == "ENABLED"

        s3 = aws.client("s3")
        bucket = aws.refs["Bucket"]
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values()) and len(block) == 4

        sqs = aws.client("sqs")
        attrs = sqs.get_queue_attributes(QueueUrl=aws.refs["BatchQueue"],
                                         AttributeNames=["All"])["Attributes"]
        assert attrs["VisibilityTimeout"] == "720"
        dlq_arn = aws.attrs[("BatchDeadLetterQueue", "Arn")]
        assert '"deadLetterTargetArn": "' + dlq_arn in attrs["RedrivePolicy"].replace(
            '":"', '": "')
