"""template.yaml's production switches: architecture, tracing, stage throttling, the custom
domain, the metrics' environment. Translated by the SAM transform, linted by cfn-lint,
conditions evaluated with the parameters a user would pass."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from fnstack_dev import validate_template
from fnstack_dev.template import Resolver, load_template
from tests.aws.conftest import TEMPLATE

ROOT = TEMPLATE.parent
DOMAIN = {
    "DomainName": "api.example.com",
    "CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c",
}


def cfn(**params: str) -> dict[str, Any]:
    out = validate_template.translate(TEMPLATE, params)
    assert validate_template.errors(validate_template.lint(out)) == []
    return out


def zip_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r["Properties"] for n, r in template["Resources"].items()
            if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("PackageType")
            != "Image"}


def conditions(**params: str) -> Resolver:
    return Resolver(load_template(TEMPLATE), parameters=params)


def test_architecture_reaches_every_zip_function_the_layer_and_the_adapter() -> None:
    out = cfn(Architecture="arm64")
    res = out["Resources"]
    functions = zip_functions(out)
    assert len(functions) >= 9
    for name, props in functions.items():
        assert props["Architectures"] == [{"Ref": "Architecture"}], name
    (layer,) = [r for r in res.values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
    # The image is built by Docker for the build machine: pinned, whatever the parameter.
    assert res["InferenceImageFunction"]["Properties"]["Architectures"] == ["x86_64"]
    # The Web Adapter's layer exists per architecture.
    adapter = json.dumps(functions["InferenceFunction"]["Layers"])
    assert "LambdaAdapterLayerArm64" in adapter and "LambdaAdapterLayerX86" in adapter
    assert '"Fn::If": ["IsArm64"' in adapter
    spec = load_template(TEMPLATE).data["Parameters"]["Architecture"]
    assert spec["Default"] == "x86_64" and spec["AllowedValues"] == ["x86_64", "arm64"]
    assert conditions(Architecture="arm64").condition("IsArm64")
    assert not conditions().condition("IsArm64")


@pytest.mark.parametrize(("arch", "wheel"), [("x86_64", "x86_64"), ("arm64", "aarch64")])
def test_the_layer_build_asks_pip_for_the_architecture_s_wheels(arch: str, wheel: str) -> None:
    # make -n prints the recipe without running it: the pip line's platforms.
    recipe = subprocess.run(
        ["make", "-n", "-f", "layers/Makefile", "build-ProviderLayer",
         "ARTIFACTS_DIR=/nonexistent", f"LAYER_ARCH={arch}", "STRIP=strip"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pip = next(line for line in recipe.splitlines() if "-r layers/requirements.txt" in line)
    assert f"manylinux_2_34_{wheel}" in pip and f"manylinux2014_{wheel}" in pip
    other = "x86_64" if wheel == "aarch64" else "aarch64"
    assert other not in pip and "--only-binary=:all:" in pip


def test_sam_build_takes_the_architecture_from_the_parameter_overrides() -> None:
    sys.path.insert(0, str(ROOT / "infra"))
    try:
        import sam_build
    finally:
        sys.path.remove(str(ROOT / "infra"))
    assert sam_build.architecture(["--parameter-overrides", "Architecture=arm64"], {}) == "arm64"
    assert sam_build.architecture(
        ["--parameter-overrides", "ParameterKey=Architecture,ParameterValue=arm64"], {}
    ) == "arm64"
    assert sam_build.architecture([], {"LAYER_ARCH": "arm64"}) == "arm64"
    assert sam_build.architecture([], {}) == "x86_64"
    with pytest.raises(SystemExit):
        sam_build.architecture(["Architecture=sparc"], {})


def test_tracing_switches_functions_and_stage_together() -> None:
    out = cfn(Tracing="PassThrough")
    for name, props in zip_functions(out).items():
        assert props["TracingConfig"] == {"Mode": {"Ref": "Tracing"}}, name
    (stage,) = [r for r in out["Resources"].values() if r["Type"] == "AWS::ApiGateway::Stage"]
    assert stage["Properties"]["TracingEnabled"] == {"Fn::If": ["WithTracing", True, False]}
    assert conditions().condition("WithTracing")  # on by default
    assert not conditions(Tracing="PassThrough").condition("WithTracing")


def test_stage_throttling_is_two_parameters() -> None:
    out = cfn(ThrottlingRateLimit="5", ThrottlingBurstLimit="10")
    (stage,) = [r for r in out["Resources"].values() if r["Type"] == "AWS::ApiGateway::Stage"]
    (setting,) = stage["Properties"]["MethodSettings"]
    assert setting["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    params = load_template(TEMPLATE).data["Parameters"]
    assert (params["ThrottlingRateLimit"]["Default"], params["ThrottlingBurstLimit"]["Default"]) \
        == (100, 200)
    # No usage plan: per-client limits are fnstack's quotas, on its own API keys.
    assert not [r for r in out["Resources"].values() if r["Type"] == "AWS::ApiGateway::UsagePlan"]


def test_the_custom_domain_exists_only_when_asked_for() -> None:
    out = cfn(**DOMAIN, HostedZoneId="Z0123456789ABCDEFGHIJ")
    res = out["Resources"]
    domain, mapping, record = res["ApiDomain"], res["ApiDomainMapping"], res["ApiDomainRecord"]
    assert domain["Type"] == "AWS::ApiGateway::DomainName"
    assert domain["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    assert domain["Properties"]["RegionalCertificateArn"] == {"Ref": "CertificateArn"}
    assert domain["Properties"]["SecurityPolicy"] == "TLS_1_2"
    # The mapping names the stage SAM creates (so it is created after it).
    stage = next(n for n, r in res.items() if r["Type"] == "AWS::ApiGateway::Stage")
    assert mapping["Properties"]["Stage"] == {"Ref": stage}
    assert mapping["Properties"]["RestApiId"] == {"Ref": "RestApi"}
    assert record["Properties"]["AliasTarget"]["DNSName"] == {
        "Fn::GetAtt": ["ApiDomain", "RegionalDomainName"]}
    assert (domain["Condition"], mapping["Condition"], record["Condition"]) == (
        "WithDomain", "WithDomain", "WithDomainRecord")
    assert out["Outputs"]["CustomDomainUrl"]["Condition"] == "WithDomain"
    # What the conditions make of the parameters.
    assert not conditions().condition("WithDomain")
    assert conditions(**DOMAIN).condition("WithDomain")
    assert not conditions(**DOMAIN).condition("WithDomainRecord")
    assert conditions(**DOMAIN, HostedZoneId="Z0123").condition("WithDomainRecord")
    url = conditions(**DOMAIN).resolve(out["Outputs"]["CustomDomainUrl"]["Value"])
    assert url == "https://api.example.com/v1"


def test_every_function_names_its_service_for_the_metrics() -> None:
    env = load_template(TEMPLATE).data["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "fnstack"
    # The layer ships Powertools' core (the metrics), pinned as pyproject's aws extra.
    requirements = (ROOT / "layers/requirements.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    (pin,) = [line for line in requirements.splitlines()
              if line.startswith("aws-lambda-powertools")]
    assert "[" not in pin and f'"{pin}"' in pyproject
