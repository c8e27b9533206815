"""Emulated AWS for development: moto in server mode, resources made from template.yaml.

The DynamoDB tables, S3 buckets and SQS queues are created from the template's own
resource definitions (keys, indexes, TTL, encryption, redrive), so code under test
talks to the same shapes `sam deploy` creates — over real HTTP, through boto3.

    with EmulatedAws(template) as aws:
        aws.endpoint      # http://127.0.0.1:PORT
        aws.refs          # {"Table": "fnstack-table", "BatchQueue": "http://.../fnstack-BatchQueue"}
        aws.env           # credentials + FNSTACK_AWS_ENDPOINT_URL for the functions

`MotoServer` alone (no resources) is what the storage tests start.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3

from fnstack_dev.sandbox import spawn, stop
from fnstack_dev.template import Resolver, Template

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Never wait on the EC2 metadata service for credentials or a region.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for ``service`` on the emulator, with the fake credentials."""
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """moto in server mode as a child process, on a free port unless given one.

    Changes nothing in this process (no environment, no patching): clients get the fake
    credentials explicitly, see ``client()`` and ``CREDENTIALS``. Use as a context manager.
    """

    def __init__(
        self, host: str = "127.0.0.1", *, port: int | None = None, start_timeout: float = 30.0
    ) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.port = port
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        # moto logs every request: a pipe nobody reads would fill up and stall it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("MotoServer is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        # A free port may be taken between probing and binding: try a few.
        for _ in range(1 if self._fixed_port else 3):
            if not self._fixed_port:
                self.port = free_port(self.host)
            # Its own process group, killed with the emulator (see fnstack_dev.sandbox).
            self._proc = spawn(
                # moto.server, with DynamoDB requests applied atomically (see the module)
                [sys.executable, "-m", "fnstack_dev.moto_server", "-H", self.host,
                 "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
            if self._wait_ready():
                return self.endpoint
            self.stop()
        self._log.seek(0)
        raise RuntimeError(
            "moto server did not start (is moto[server] installed?):\n"
            f"{self._log.read().decode()[-2000:]}"
        )

    def _wait_ready(self) -> bool:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
            try:
                conn.request("GET", "/moto-api/data.json")
                conn.getresponse().read()
                return True
            except OSError:
                time.sleep(0.05)
            finally:
                conn.close()
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop(proc, grace=5)

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()


def _b64(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"__b64__": base64.b64encode(value).decode()}
    raise TypeError(f"cannot save {type(value).__name__}")


def _unb64(value: dict[str, Any]) -> Any:
    return base64.b64decode(value["__b64__"]) if set(value) == {"__b64__"} else value


class EmulatedAws:
    """A `MotoServer` holding the template's DynamoDB tables, S3 buckets and SQS queues."""

    def __init__(self, template: Template, *, port: int | None = None,
                 data_dir: Path | None = None) -> None:
        self.template = template
        self.server = MotoServer(port=port)
        self.data_dir = data_dir
        self.refs: dict[str, str] = {}
        self.attrs: dict[tuple[str, str], str] = {}

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "FNSTACK_AWS_ENDPOINT_URL": self.endpoint}

    def resolver(self) -> Resolver:
        return Resolver(self.template, refs=self.refs, attrs=self.attrs,
                        region=REGION, account_id=ACCOUNT_ID)

    def client(self, service: str) -> Any:
        return client(service, self.endpoint)

    def __enter__(self) -> EmulatedAws:
        self.server.__enter__()
        try:
            self.create_resources()
            if self.data_dir is not None:
                self.restore(self.data_dir)
        except BaseException:
            self.server.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self.data_dir is not None:
                self.save(self.data_dir)
        finally:
            self.server.__exit__(t, e, tb)

    # --- persistence (--data-dir): table items and bucket objects, not queue messages ----

    def save(self, data_dir: Path) -> None:
        """Write every table's items and every bucket's objects under ``data_dir``."""
        ddb, s3 = self.client("dynamodb"), self.client("s3")
        for logical in self.template.of_type("AWS::DynamoDB::Table"):
            out = data_dir / "dynamodb" / f"{logical}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            with tmp.open("w") as f:
                for page in ddb.get_paginator("scan").paginate(TableName=self.refs[logical]):
                    for item in page.get("Items", []):
                        f.write(json.dumps(item, default=_b64) + "\n")
            tmp.replace(out)
        for logical in self.template.of_type("AWS::S3::Bucket"):
            folder = data_dir / "s3" / logical
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            index: dict[str, str] = {}
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.refs[logical])
            for n, obj in enumerate(o for page in pages for o in page.get("Contents", [])):
                name = f"{n:08d}"
                s3.download_file(self.refs[logical], obj["Key"], str(folder / name))
                index[name] = obj["Key"]
            (folder / "index.json").write_text(json.dumps(index))

    def restore(self, data_dir: Path) -> None:
        """Load what ``save`` wrote (the resources exist already, empty)."""
        ddb, s3 = self.client("dynamodb"), self.client("s3")
        for logical in self.template.of_type("AWS::DynamoDB::Table"):
            path = data_dir / "dynamodb" / f"{logical}.jsonl"
            if path.is_file():
                for line in path.read_text().splitlines():
                    ddb.put_item(TableName=self.refs[logical],
                                 Item=json.loads(line, object_hook=_unb64))
        for logical in self.template.of_type("AWS::S3::Bucket"):
            folder = data_dir / "s3" / logical
            if (folder / "index.json").is_file():
                for name, key in json.loads((folder / "index.json").read_text()).items():
                    s3.upload_file(str(folder / name), self.refs[logical], key)

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
