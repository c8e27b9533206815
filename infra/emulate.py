"""Emulated AWS for development: moto in server mode, resources made from template.yaml.

The DynamoDB tables, S3 buckets and SQS queues are created from the template's own
resource definitions (keys, indexes, TTL, encryption, redrive), so code under test
talks to the same shapes `sam deploy` creates — over real HTTP, through boto3.

    with EmulatedAws(template) as aws:
        aws.endpoint      # http://127.0.0.1:PORT
        aws.refs          # {"Table": "fnstack-table", "BatchQueue": "http://.../fnstack-BatchQueue"}
        aws.env           # credentials + FNSTACK_AWS_ENDPOINT_URL for the functions
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

import boto3

from fnstack.template import Resolver, Template

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmulatedAws:
    def __init__(self, template: Template, *, port: int | None = None) -> None:
        self.template = template
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.refs: dict[str, str] = {}
        self.attrs: dict[tuple[str, str], str] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "FNSTACK_AWS_ENDPOINT_URL": self.endpoint}

    def resolver(self) -> Resolver:
        return Resolver(self.template, refs=self.refs, attrs=self.attrs,
                        region=REGION, account_id=ACCOUNT_ID)

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
        )

    def __enter__(self) -> EmulatedAws:
        self.start()
        try:
            self.create_resources()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("moto server exited at start (is moto[server] installed?)")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer on {self.endpoint} in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # --- resources, in dependency order: queues that others redrive to come first --------

    def create_resources(self) -> None:
        for name, res in self.template.of_type("AWS::DynamoDB::Table").items():
            self._table(name, res.get("Properties", {}))
        for name, res in self.template.of_type("AWS::S3::Bucket").items():
            self._bucket(name, res.get("Properties", {}))
        queues = self.template.of_type("AWS::SQS::Queue")
        pending = dict(queues)
        while pending:
            ready = [n for n, r in pending.items()
                     if not any(f'"{dep}"' in json.dumps(r) for dep in pending if dep != n)]
            if not ready:
                raise ValueError(f"queues refer to each other in a cycle: {sorted(pending)}")
            for name in ready:
                self._queue(name, pending.pop(name).get("Properties", {}))

    def _props(self, props: dict[str, Any]) -> dict[str, Any]:
        resolved: dict[str, Any] = self.resolver().resolve(props) or {}
        return resolved

    def _table(self, logical_id: str, raw: dict[str, Any]) -> None:
        props = self._props(raw)
        name = self.resolver().physical_name(logical_id)
        ddb = self.client("dynamodb")
        args: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes",
                    "ProvisionedThroughput", "StreamSpecification"):
            if key in props:
                args[key] = props[key]
        if "SSESpecification" in props:
            # CloudFormation says SSEEnabled where the API says Enabled.
            sse = dict(props["SSESpecification"])
            sse["Enabled"] = sse.pop("SSEEnabled", True)
            args["SSESpecification"] = sse
        ddb.create_table(**args)
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self.refs[logical_id] = name
        self.attrs[(logical_id, "Arn")] = (
            f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"
        )

    def _bucket(self, logical_id: str, raw: dict[str, Any]) -> None:
        # NotificationConfiguration is left to the gateway (SAM adds it at transform).
        props = self._props(raw)
        name = self.resolver().physical_name(logical_id)
        s3 = self.client("s3")
        s3.create_bucket(Bucket=name)
        if "BucketEncryption" in props:
            # CloudFormation's ServerSideEncryptionByDefault is the API's Apply... key.
            rules = [
                {("ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault"
                  else k): v for k, v in rule.items()}
                for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules}
            )
        if "PublicAccessBlockConfiguration" in props:
            s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
            )
        if props.get("VersioningConfiguration"):
            s3.put_bucket_versioning(
                Bucket=name, VersioningConfiguration=props["VersioningConfiguration"]
            )
        self.refs[logical_id] = name
        self.attrs[(logical_id, "Arn")] = f"arn:aws:s3:::{name}"

    def _queue(self, logical_id: str, raw: dict[str, Any]) -> None:
        props = self._props(raw)
        name = self.resolver().physical_name(logical_id)
        attributes: dict[str, str] = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds",
                    "MaximumMessageSize", "ReceiveMessageWaitTimeSeconds"):
            if key in props:
                attributes[key] = str(props[key])
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        sqs = self.client("sqs")
        url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.refs[logical_id] = url
        self.attrs[(logical_id, "QueueName")] = name
        self.attrs[(logical_id, "QueueUrl")] = url
        self.attrs[(logical_id, "Arn")] = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
