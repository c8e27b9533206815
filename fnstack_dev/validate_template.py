"""Validate template.yaml offline: SAM transform (aws-sam-translator), then cfn-lint.

No AWS call is made: the managed-policy map that the translator would fetch from IAM is
a stub naming the AWS-managed policies SAM attaches. Exit status 1 on any cfn-lint error
(warnings and informational findings are printed, not fatal).

    python -m fnstack_dev.validate_template [template.yaml] [--region us-east-1] [--print]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = Path("template.yaml")
# `sam build` fills ImageUri from the image it builds; the translator insists on one.
PLACEHOLDER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fnstack-inference:latest"


class _StubPolicies:
    """What ManagedPolicyLoader.load() returns, without asking IAM."""

    def load(self) -> dict[str, str]:
        names = [
            "AWSLambdaBasicExecutionRole",
            "AWSLambdaBasicDurableExecutionRolePolicy",
            "AWSXrayWriteOnlyAccess",
            "AWSXRayDaemonWriteAccess",
            "AWSLambdaSQSQueueExecutionRole",
            "AWSLambdaVPCAccessExecutionRole",
        ]
        return {n: f"arn:aws:iam::aws:policy/{n}" for n in names}


def load_sam(path: Path) -> dict[str, Any]:
    """The template as the translator wants it: intrinsic tags as {"Ref": ...} maps."""
    from samtranslator.yaml_helper import yaml_parse

    data: dict[str, Any] = yaml_parse(path.read_text())
    return data


def translate(
    path: Path = DEFAULT_TEMPLATE,
    parameters: dict[str, Any] | None = None,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """The CloudFormation template `sam deploy` would submit (SAM transform applied)."""
    from samtranslator.translator.arn_generator import ArnGenerator
    from samtranslator.translator.transform import transform

    # The translator asks a boto3 session for the region (ARN partitions, pseudo
    # parameters); give it one through the environment for the duration of the call.
    ArnGenerator.BOTO_SESSION_REGION_NAME = region
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region

    sam = copy.deepcopy(load_sam(path))
    # What `sam package` does before the transform: local code folders become S3 objects.
    # They must exist (a typo in CodeUri fails here, not at deploy time).
    for name, resource in sam.get("Resources", {}).items():
        props = resource.get("Properties", {})
        if props.get("PackageType") == "Image" and "ImageUri" not in props:
            props["ImageUri"] = PLACEHOLDER_IMAGE
        for key in ("CodeUri", "ContentUri"):
            local = props.get(key)
            if isinstance(local, str) and not local.startswith("s3://"):
                if not (path.parent / local).is_dir():
                    raise FileNotFoundError(f"{name}.{key}: no folder {local!r} next to {path}")
                props[key] = f"s3://placeholder-bucket/{name}.zip"
    try:
        result: dict[str, Any] = transform(
            sam, parameters or {}, _StubPolicies()
        )
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved
    return result


def lint(template: dict[str, Any], region: str = "us-east-1") -> list[Any]:
    """cfn-lint findings for a plain CloudFormation template."""
    from cfnlint.api import ManualArgs
    from cfnlint.api import lint as cfn_lint

    return list(cfn_lint(json.dumps(template), config=ManualArgs(regions=[region])))


def errors(matches: list[Any]) -> list[Any]:
    return [m for m in matches if m.rule.id.startswith("E")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", nargs="?", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--print", action="store_true", help="print the translated template")
    parser.add_argument("--output", type=Path, help="write the translated template (JSON) here")
    args = parser.parse_args(argv)
    try:
        cfn = translate(args.template, region=args.region)
    except Exception as exc:  # the translator's errors are the message we want to show
        print(f"error: SAM transform of {args.template} failed: {exc}", file=sys.stderr)
        return 1
    if args.print:
        print(json.dumps(cfn, indent=2, default=str))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(cfn, indent=2, default=str))
    matches = lint(cfn, args.region)
    for m in matches:
        print(f"{m.rule.id} {m.message} ({'/'.join(str(p) for p in m.path)})", file=sys.stderr)
    bad = errors(matches)
    n_res = len(cfn.get("Resources", {}))
    print(f"{args.template.name}: SAM transform ok ({n_res} CloudFormation resources); "
          f"cfn-lint: {len(bad)} error(s), {len(matches) - len(bad)} other finding(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
