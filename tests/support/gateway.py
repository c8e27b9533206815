"""The emulated API Gateway as users start it: `fnstack gateway --emulate-aws`.

Every request becomes an API Gateway REST proxy event routed by template.yaml to its
function; storage is moto (DynamoDB, S3, SQS) created from the template's own resource
definitions.

By default it runs what deploys: the `sam build` output in .aws-sam/build, each function
in its own python3.12 process with Lambda's environment, the inference routes through
their Web Adapter script (streamed), the container-image function from its Dockerfile.
CI builds the bundle once (`bash .ci/serverless.sh`) before the tests; here a missing
bundle, or one whose layer was built from other requirements, is built first
(`bash .ci/serverless.sh --build`, about a minute with pip's cache). The project's own
code in it is then refreshed from the working tree (``refresh_code``, seconds), so the
bundle runs the code under test. ``built=False`` (or ``FNSTACK_TEST_GATEWAY_BUILT=0``)
is the development mode (``--from-source``): handlers imported from the source tree in
the gateway's process.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import FnstackServer

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
BUILD_DIR = ROOT / ".aws-sam" / "build"

__all__ = ["BUILD_DIR", "IMAGE_PREFIX", "emulated_gateway", "ensure_built"]

# The container-image function's routes (template.yaml: InferenceImageFunction): the
# bundled model's OpenAI API, the ImageApiUrl output.
IMAGE_PREFIX = "/image"


def ensure_built() -> Path:
    """.aws-sam/build, built when missing or stale, with the working tree's own code.

    Test sessions running side by side take turns (a lock file): one builds or
    refreshes, the others wait and then find it current."""
    from fnstack_dev.bundle import layer_stamp, refresh_code

    BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR.parent / ".fnstack-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = BUILD_DIR / ".fnstack-layer-stamp"
        # (a layer without its third-party part is a build that went wrong)
        fresh = (BUILD_DIR / "template.yaml").is_file() and stamp.is_file() \
            and stamp.read_text() == layer_stamp(ROOT) \
            and (BUILD_DIR / "ProviderLayer" / "python" / "fastapi").is_dir()
        if not fresh:
            subprocess.run(["bash", str(ROOT / ".ci" / "serverless.sh"), "--build"],
                           cwd=ROOT, check=True,
                           env={**os.environ, "FNSTACK_BUILD_LOCKED": "1"})
        refresh_code(ROOT, BUILD_DIR)
    return BUILD_DIR


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
    ``built`` unset: the built bundle, unless ``$FNSTACK_TEST_GATEWAY_BUILT=0``.
    """
    if built is None:
        built = os.environ.get("FNSTACK_TEST_GATEWAY_BUILT", "1") != "0"
    mode = ["--build-dir", str(ensure_built())] if built else ["--from-source"]
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
