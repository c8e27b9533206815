"""Emulated AWS for tests: moto in server mode, spoken to over real HTTP by boto3.

``MotoServer`` (from infra/emulate.py, which `fnstack gateway --emulate-aws` runs too)
starts ``python -m moto.server`` as a child process on a free port of 127.0.0.1 and
changes nothing in this process: clients get the fake credentials explicitly, see
``client()`` and ``FAKE_ENV``.

The table schema lives in ``DYNAMODB_TABLE_SCHEMA`` alone, so it can later be read from
template.yaml instead.
"""

from __future__ import annotations

from typing import Any

from fnstack_dev.emulate import CREDENTIALS as FAKE_ENV
from fnstack_dev.emulate import REGION, MotoServer, client

__all__ = [
    "DYNAMODB_TABLE_SCHEMA",
    "DYNAMODB_TTL_ATTRIBUTE",
    "FAKE_ENV",
    "REGION",
    "MotoServer",
    "client",
    "create_bucket",
    "create_table",
]

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
