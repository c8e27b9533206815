"""The emulated API Gateway as users start it: `fnstack gateway --emulate-aws`.

Every request becomes an API Gateway REST proxy event routed by template.yaml to its
function; storage is moto (DynamoDB, S3, SQS) created from the template's own resource
definitions.

``built=True`` runs what deploys: the `sam build` output in .aws-sam/build (make it
once with ``bash .ci/serverless.sh``), each function in its own python3.12 process with
Lambda's environment, the inference routes through their Web Adapter script (streamed).
The project's own code in it is refreshed from the working tree first (``refresh_code``),
so the bundle runs the code under test. ``built=False`` is the development mode
(``--from-source``): handlers imported from the source tree in the gateway's process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import FnstackServer

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
BUILD_DIR = ROOT / ".aws-sam" / "build"

__all__ = ["BUILD_DIR", "emulated_gateway"]


@contextmanager
def emulated_gateway(
    tmp: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    built: bool | None = None,
) -> Iterator[str]:
    """Start the gateway on a free port; yields its base URL (ending in /v1).

    Function variables go in ``args`` as ``--env NAME=VALUE`` (a built function sees
    nothing of the gateway's own environment, as on Lambda); ``env`` is the gateway's.
    ``built`` unset: ``$FNSTACK_TEST_GATEWAY_BUILT=1`` chooses the built bundle.
    """
    if built is None:
        built = os.environ.get("FNSTACK_TEST_GATEWAY_BUILT") == "1"
    if built:
        if not (BUILD_DIR / "template.yaml").is_file():
            raise RuntimeError(f"no built bundle in {BUILD_DIR}: run `bash .ci/serverless.sh`")
        from fnstack_dev.bundle import refresh_code

        refresh_code(ROOT, BUILD_DIR)
        mode = ["--build-dir", str(BUILD_DIR)]
    else:
        mode = ["--from-source"]
    base_env = {"FNSTACK_HOME": str(tmp / "home")}
    if not built:
        # In-process functions see the gateway's environment: the torch model is served
        # in-process there (on AWS it lives in the container-image function).
        base_env["FNSTACK_INLINE_LLM"] = "1"
    with FnstackServer(
        ["gateway", "--emulate-aws", "--template", str(TEMPLATE), *mode, *(args or [])],
        env={**base_env, **(env or {})},
        log_path=tmp / "gateway.log",
    ) as server:
        yield server.base_url
