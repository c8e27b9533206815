"""Fixtures for the serverless bundle: template.yaml, its functions, the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"

# A run config with the aws distribution's storage and queue but no inference provider:
# these tests are about the Lambda glue, not about models.
MINIMAL_AWS_CONFIG = """\
version: 1
distribution: aws-glue-test
server:
  max_body_bytes: 6000000
# Open on purpose: these tests are about the glue (a function refuses to start open
# unless the config says so).
auth: {type: none}
storage:
  backends:
    kv_default:
      type: kv_dynamodb
      table: ${env.FNSTACK_TABLE}
      endpoint_url: ${env.FNSTACK_AWS_ENDPOINT_URL:=}
    blob_default:
      type: blob_s3
      bucket: ${env.FNSTACK_BUCKET}
      endpoint_url: ${env.FNSTACK_AWS_ENDPOINT_URL:=}
  stores:
    registry: {backend: kv_default, namespace: registry}
    files: {backend: blob_default, prefix: files/}
    file_records: {backend: kv_default, namespace: files}
    vector_stores: {backend: kv_default, namespace: vector_stores}
    conversations: {backend: kv_default, namespace: conversations}
    prompts: {backend: kv_default, namespace: prompts}
    responses: {backend: kv_default, namespace: responses}
queues:
  batches:
    type: sqs
    url: ${env.FNSTACK_QUEUE_URL}
    endpoint_url: ${env.FNSTACK_AWS_ENDPOINT_URL:=}
"""


@pytest.fixture(scope="session")
def glue_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "aws-glue.yaml"
    path.write_text(MINIMAL_AWS_CONFIG)
    return path


@pytest.fixture(scope="session")
def built_bundle() -> Path:
    """.aws-sam/build with the working tree's own code (built first when missing or stale)."""
    from tests.support.gateway import ensure_built

    return ensure_built()
