"""The Python runtime client inside an emulated Lambda sandbox (runs under python3.12).

The emulator (fnstack_dev.sandbox) copies this file into the runtime folder it puts on
PYTHONPATH (Lambda's ``LAMBDA_RUNTIME_DIR``) and runs it as the sandbox's process. Like
Lambda's own bootstrap (awslambdaric) it puts the task root and the layer's Python
folders in front of ``sys.path`` itself (the environment's PYTHONPATH holds only the
runtime folder, exactly as on Lambda), imports ``_HANDLER`` once (the init phase), then
answers invocations one at a time.

It imports nothing of fnstack: the sandbox sees only what the built bundle ships.
Invocations arrive as JSON lines on file descriptor ``_FNSTACK_EVENTS_FD``; answers go
back as JSON lines on ``_FNSTACK_RESULTS_FD`` (stdout and stderr are the function's log).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

# Lambda (python3.12) puts these in front of sys.path, in this order, before the
# runtime folder and the standard library.
_OPT = os.environ.get("_FNSTACK_OPT_DIR") or "/opt"
_FRONT = [
    os.environ["LAMBDA_TASK_ROOT"],
    f"{_OPT}/python/lib/python3.12/site-packages",
    f"{_OPT}/python",
]


class LambdaContext:
    """The ``context`` Lambda passes to a Python handler."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        region = env.get("AWS_REGION", "us-east-1")
        self.invoked_function_arn = (
            f"arn:aws:lambda:{region}:123456789012:function:{self.function_name}"
        )
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def main() -> None:
    sys.path[:0] = [p for p in _FRONT if p not in sys.path]
    events = os.fdopen(int(os.environ.pop("_FNSTACK_EVENTS_FD")), "rb")
    results = os.fdopen(int(os.environ.pop("_FNSTACK_RESULTS_FD")), "wb", buffering=0)

    def send(message: dict[str, Any]) -> None:
        results.write(json.dumps(message).encode() + b"\n")

    started = time.monotonic()
    module_name, _, attr = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # Runtime.ImportModuleError / HandlerNotFound, as Lambda says
        traceback.print_exc()
        send({"init_error": _error(exc)})
        return
    sys.stdout.flush()
    send({"ready": True, "init_ms": (time.monotonic() - started) * 1000})
    for line in events:
        message = json.loads(line)
        context = LambdaContext(message["request_id"], message["deadline_ms"])
        try:
            result = handler(message["event"], context)
            payload = json.dumps({"id": message["id"], "result": result})
        except Exception as exc:
            traceback.print_exc()
            payload = json.dumps({"id": message["id"], "error": _error(exc)})
        sys.stdout.flush()
        sys.stderr.flush()
        results.write(payload.encode() + b"\n")


if __name__ == "__main__":
    main()
