"""Emulated AWS for tests: moto in server mode, spoken to over real HTTP by boto3.

``MotoServer`` runs ``python -m moto.server`` as a child process on a free port of
127.0.0.1 and changes nothing in this process (no environment, no patching): clients
get the fake credentials explicitly, see ``client()`` and ``FAKE_ENV``.

The table schema lives in ``DYNAMODB_TABLE_SCHEMA`` alone, so it can later be read from
template.yaml instead.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Any

import boto3

REGION = "us-east-1"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # Never wait on the EC2 metadata service for credentials or a region.
    "AWS_EC2_METADATA_DISABLED": "true",
}

# fnstack.storage.kv_dynamodb's item layout; template.yaml must define the same.
DYNAMODB_TABLE_SCHEMA: dict[str, Any] = {
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
        {"AttributeName": "gsi1pk", "AttributeType": "S"},
        {"AttributeName": "gsi1sk", "AttributeType": "S"},
    ],
    "KeySchema": [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by_owner",
            "KeySchema": [
                {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
    "BillingMode": "PAY_PER_REQUEST",
}
DYNAMODB_TTL_ATTRIBUTE = "ttl"


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for ``service`` on the emulator, with fake credentials."""
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_ENV["AWS_SESSION_TOKEN"],
    )


def create_table(endpoint: str, name: str) -> None:
    """The kv table (``DYNAMODB_TABLE_SCHEMA``), with TTL on ``ttl``."""
    ddb = client("dynamodb", endpoint)
    ddb.create_table(TableName=name, **DYNAMODB_TABLE_SCHEMA)
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    ddb.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": DYNAMODB_TTL_ATTRIBUTE},
    )


def create_bucket(endpoint: str, name: str) -> None:
    client("s3", endpoint).create_bucket(Bucket=name)  # us-east-1: no location constraint


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """moto in server mode as a child process. Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", *, start_timeout: float = 30.0) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # moto logs every request: a pipe nobody reads would fill up and stall it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("MotoServer is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        # The free port may be taken between probing and binding: try a few.
        for _ in range(3):
            self.port = _free_port(self.host)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **FAKE_ENV},
            )
            if self._wait_ready():
                return self.endpoint
            self.stop()
        self._log.seek(0)
        raise RuntimeError(f"moto server did not start:\n{self._log.read().decode()[-2000:]}")

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
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

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
