"""template.yaml: valid CloudFormation after the SAM transform, routes that match the
app's, and emulated resources identical to what the template declares."""

from __future__ import annotations

import json
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
    "AdminFunction": [Api.providers, Api.inspect, Api.keys],
    "ModelsFunction": [Api.models],
    "InferenceFunction": [Api.inference, Api.responses],
    "FilesFunction": [Api.files],
    "VectorStoresFunction": [Api.vector_io],
    "SafetyFunction": [Api.safety],
    "BatchesFunction": [Api.batches],
    "ConversationsFunction": [Api.conversations],
    "PromptsFunction": [Api.prompts],
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
    assert {r.function for r in template.routes()} == {*FUNCTION_APIS, "InferenceImageFunction"}


def test_the_image_function_is_reachable_and_builds_lean() -> None:
    # Defect 3: no route made the bundled model unreachable; the image had no uvicorn;
    # the build context took the venvs and .aws-sam.
    image = yaml.safe_load(re.sub(r"!(\w+)", r"", TEMPLATE.read_text()))["Resources"][
        "InferenceImageFunction"]["Properties"]
    (event,) = image["Events"].values()
    assert event["Properties"]["Path"] == "/image/v1/{proxy+}"
    assert event["Properties"]["ResponseTransferMode"] == "RESPONSE_STREAM"
    assert event["Properties"]["TimeoutInMillis"] == 900_000
    assert image["Environment"]["Variables"]["AWS_LWA_REMOVE_BASE_PATH"] == "/image"
    root = TEMPLATE.parent
    dockerfile = (root / "functions/inference_image/Dockerfile").read_text()
    assert "[server,models,aws]" in dockerfile  # uvicorn: the adapter's server, SageMaker's
    assert "/opt/extensions/lambda-adapter" in dockerfile
    ignored = (root / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") if "*" in ignored else 0] == "*"
    assert not any(line.startswith("!") and (".venv" in line or ".aws-sam" in line)
                   for line in ignored)
    entry = (root / "functions/inference_image/entrypoint.sh").read_text()
    assert "uvicorn inference:app" in entry and "fnstack_dev.sagemaker_server" in entry


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
    assert env["FNSTACK_BUCKET"] == "fnstack-bucket"
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


# --- issue 11: what an audit of the template found --------------------------------------


def _cfn(**params: str) -> dict[str, Any]:
    cfn = validate_template.translate(TEMPLATE, params)
    assert validate_template.errors(validate_template.lint(cfn)) == []
    return cfn


def _function(cfn: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """A function's properties and its role's policies as JSON text."""
    props = cfn["Resources"][name]["Properties"]
    role = cfn["Resources"].get(f"{name}Role", {})
    return props, json.dumps(role.get("Properties", {}).get("Policies", []))


HTTP_FUNCTIONS = ("AdminFunction", "ModelsFunction", "InferenceFunction", "FilesFunction",
                  "VectorStoresFunction", "BatchesFunction", "ConversationsFunction",
                  "PromptsFunction")


def test_streaming_routes_may_stream_for_fifteen_minutes() -> None:
    # Defect 2: RESPONSE_STREAM alone keeps the 29 s integration timeout.
    paths = next(r for r in _cfn()["Resources"].values()
                 if r["Type"] == "AWS::ApiGateway::RestApi")["Properties"]["Body"]["paths"]
    streamed = 0
    for methods in paths.values():
        for spec in methods.values():
            if not isinstance(spec, dict):
                continue  # a path's `parameters` list
            integration = spec["x-amazon-apigateway-integration"]
            if integration.get("responseTransferMode") == "STREAM":
                streamed += 1
                assert integration["timeoutInMillis"] == 900_000
    assert streamed >= 4  # chat, stored chat, completions, embeddings (the image: an Fn::If)


def test_the_bucket_is_named_by_cloudformation() -> None:
    # Defect 5: a fixed name collides with a retained bucket after `sam delete` and
    # limits stack names; the S3 trigger goes through EventBridge, so there is no cycle.
    cfn = _cfn()
    bucket = cfn["Resources"]["Bucket"]["Properties"]
    assert "BucketName" not in bucket
    assert bucket["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    rules = [r["Properties"] for r in cfn["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    (rule,) = rules
    assert rule["EventPattern"]["source"] == ["aws.s3"]
    assert rule["EventPattern"]["detail"]["bucket"]["name"] == [{"Ref": "Bucket"}]
    assert rule["EventPattern"]["detail"]["object"]["key"] == [{"prefix": "inbox/"}]
    assert "BatchWorkerFunction" in json.dumps(rule["Targets"])


def test_bedrock_inference_profiles_and_listing_are_allowed() -> None:
    # Defect 6: cross-region profile ids (us./eu./global.) and /v1/models' listing.
    _, policies = _function(_cfn(BedrockRegion="eu-west-1"), "InferenceFunction")
    for resource in ("bedrock:*::foundation-model/*",
                     "bedrock:${BedrockRegion}:${AWS::AccountId}:inference-profile/*",
                     "bedrock:${BedrockRegion}:${AWS::AccountId}:application-inference-profile/*"):
        assert resource in policies
    for action in ("bedrock:ListFoundationModels", "bedrock:ListInferenceProfiles"):
        assert action in policies


def test_secrets_stay_out_of_the_environment() -> None:
    # Defect 8: the OpenAI key is read from Secrets Manager at cold start, by the
    # functions that call the upstream, never set in clear in any environment.
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:openai-AbCdEf"
    cfn = _cfn(OpenAIApiKeySecretArn=arn)
    assert not any(p.get("NoEcho") for p in cfn.get("Parameters", {}).values())
    for name in ("AdminFunction", "ModelsFunction", "InferenceFunction", "BatchWorkerFunction"):
        props, policies = _function(cfn, name)
        env = props["Environment"]["Variables"]
        assert "FNSTACK_OPENAI_API_KEY" not in env
        needs = name != "AdminFunction"
        assert ("FNSTACK_OPENAI_API_KEY_SECRET_ARN" in env) is needs, name
        assert ("secretsmanager:GetSecretValue" in policies) is needs, name


def test_auth_parameters_reach_the_functions() -> None:
    cfn = _cfn(AuthMode="jwt", AdminKeySsmParameter="/fnstack/admin-key")
    for name in (*HTTP_FUNCTIONS, "BatchWorkerFunction"):
        props, policies = _function(cfn, name)
        env = props["Environment"]["Variables"]
        assert env["FNSTACK_AUTH"] == {"Ref": "AuthMode"}
        http = name in HTTP_FUNCTIONS
        assert ("FNSTACK_ADMIN_KEY_SSM" in env) is http, name
        assert ("ssm:GetParameter" in policies) is http, name
        if http:
            assert "parameter${AdminKeySsmParameter}" in policies
            assert "kms:ViaService" in policies and "kms:Decrypt" in policies
    assert cfn["Parameters"]["AuthMode"]["AllowedValues"] == ["api_keys", "jwt", "authorizer",
                                                               "none"]


def test_load_secrets_reads_secrets_manager() -> None:
    from fnstack.lambda_runtime import load_secrets

    with aws_support.MotoServer() as moto:
        sm = aws_support.client("secretsmanager", moto.endpoint)
        arn = sm.create_secret(Name="openai", SecretString="sk-test")["ARN"]
        env = {"FNSTACK_OPENAI_API_KEY_SECRET_ARN": arn, "FNSTACK_AWS_ENDPOINT_URL": moto.endpoint,
               **aws_support.FAKE_ENV}
        import os
        saved = {k: os.environ.get(k) for k in aws_support.FAKE_ENV}
        os.environ.update(aws_support.FAKE_ENV)
        try:
            assert load_secrets(env) == ["FNSTACK_OPENAI_API_KEY"]
            assert env["FNSTACK_OPENAI_API_KEY"] == "sk-test"
            # Set already (a local run): left alone, nothing read.
            assert load_secrets(env) == []
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    assert load_secrets({"FNSTACK_OPENAI_API_KEY_SECRET_ARN": ""}) == []


def test_gpu_path_is_a_sagemaker_endpoint_under_a_condition() -> None:
    # Defect 4: the same image on a GPU instance, reached through remote::sagemaker.
    cfn = _cfn(GpuImageUri="123456789012.dkr.ecr.us-east-1.amazonaws.com/fnstack:gpu",
               GpuInstanceType="ml.g6.xlarge")
    res = cfn["Resources"]
    assert res["GpuEndpoint"]["Condition"] == "WithGpuEndpoint"
    (variant,) = res["GpuEndpointConfig"]["Properties"]["ProductionVariants"]
    assert variant["InstanceType"] == {"Ref": "GpuInstanceType"}
    container = res["GpuModel"]["Properties"]["PrimaryContainer"]
    assert container["Environment"]["FNSTACK_DEVICE"] == "cuda"
    props, policies = _function(cfn, "InferenceFunction")
    env = json.dumps(props["Environment"]["Variables"]["FNSTACK_SAGEMAKER_ENDPOINT"])
    assert "GpuEndpoint" in env and "sagemaker:InvokeEndpointWithResponseStream" in policies
    assert "WithGpuEndpoint" in json.dumps(cfn["Conditions"]["WithSageMaker"])
    # Without the parameter nothing is created (conditions hold every GPU resource).
    gpu = [n for n, r in res.items() if n.startswith("Gpu")]
    assert gpu and all(res[n].get("Condition") == "WithGpuEndpoint" for n in gpu)
    dockerfile = (TEMPLATE.parent / "functions/inference_image/Dockerfile").read_text()
    assert "ARG TORCH_INDEX=" in dockerfile


def test_every_function_log_group_has_a_retention_and_alarms_exist() -> None:
    cfn = _cfn(AlarmEmail="ops@example.com")
    res = cfn["Resources"]
    functions = [n for n, r in res.items() if r["Type"] == "AWS::Lambda::Function"]
    (logs,) = [n for n, r in res.items() if r["Type"] == "AWS::Logs::LogGroup"]
    assert res[logs]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for name in functions:
        config = res[name]["Properties"]["LoggingConfig"]
        assert config["LogGroup"] == {"Ref": logs}, f"{name} logs without a retention"
    alarms = {n: r["Properties"] for n, r in res.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    metrics = {a["MetricName"] for a in alarms.values()}
    assert {"5XXError", "Throttles", "ApproximateNumberOfMessagesVisible", "Duration"} <= metrics
    assert all("AlarmTopic" in json.dumps(a["AlarmActions"]) for a in alarms.values())
    api_name = next(a for a in alarms.values() if a["MetricName"] == "5XXError")["Dimensions"][0]
    rest_api = next(r for r in res.values() if r["Type"] == "AWS::ApiGateway::RestApi")
    assert rest_api["Properties"]["Name"] == api_name["Value"]
