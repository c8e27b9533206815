"""The emulated API Gateway as users start it: `fnstack gateway --emulate-aws`.

Every request becomes an API Gateway REST proxy event routed by template.yaml to its
function's handler; storage is moto (DynamoDB, S3, SQS) created from the template's
own resource definitions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import FnstackServer

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

__all__ = ["emulated_gateway"]


@contextmanager
def emulated_gateway(
    tmp: Path, *, env: Mapping[str, str] | None = None, args: list[str] | None = None
) -> Iterator[str]:
    """Start the gateway on a free port; yields its base URL (ending in /v1)."""
    # The torch model is served in-process (on AWS it lives in the container function).
    base_env = {"FNSTACK_HOME": str(tmp / "home"), "FNSTACK_INLINE_LLM": "1"}
    with FnstackServer(
        ["gateway", "--emulate-aws", "--template", str(TEMPLATE), *(args or [])],
        env={**base_env, **(env or {})},
        log_path=tmp / "gateway.log",
    ) as server:
        yield server.base_url
