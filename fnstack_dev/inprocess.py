"""Development mode: a function's handler imported from the source tree, in-process.

`fnstack gateway --from-source` / `fnstack invoke --from-source`: quick to start and
to debug (breakpoints, no build), but it runs what the repository's virtualenv has,
not what deploys; the built bundle (fnstack_dev.sandbox) is the faithful mode. Like
Lambda, each function is one module instance (imported once, with its environment)
running one invocation at a time on its own thread, which keeps the event loop Mangum
made at import.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from fnstack_dev.sandbox import Buffered, FunctionError, Streamed
from fnstack_dev.template import FunctionDef

__all__ = ["LambdaContext", "LocalFunction"]

_ENV_LOCK = threading.Lock()


class LocalFunction:
    """One function of the template, imported in this process on its own thread."""

    def __init__(self, fn: FunctionDef, env: Mapping[str, str]) -> None:
        if fn.package_type != "Zip" and not fn.handler:
            raise ValueError(f"{fn.logical_id} is a container image without a handler")
        if "." not in fn.handler:
            raise ValueError(f"{fn.logical_id}: handler {fn.handler!r} is not module.attribute")
        self.fn = fn
        self.env = dict(env)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=fn.logical_id)
        self._handler: Any = None
        self.module: ModuleType | None = None

    def load(self) -> None:
        """Import the handler module (the cold start), on the function's own thread."""
        self._executor.submit(self._import).result()

    def _import(self) -> None:
        module_name, _, attr = self.fn.handler.rpartition(".")
        path = self.fn.code_dir / f"{module_name.replace('.', '/')}.py"
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.fn.logical_id}: handler {self.fn.handler!r} needs {path}, which is missing"
            )
        with _ENV_LOCK:
            # One process hosts every function: the variables stay set (they agree
            # between functions except for what only one of them reads). The handler
            # module is loaded from its file; its own imports resolve against the
            # installed packages, as the layer's would.
            os.environ.update(self.env)
        unique = f"_fnstack_fn_{self.fn.logical_id}"
        spec = importlib.util.spec_from_file_location(unique, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
        handler = getattr(module, attr, None)
        if not callable(handler):
            raise AttributeError(f"{path} defines no callable {attr!r} (handler {self.fn.handler})")
        self.module, self._handler = module, handler

    async def invoke(self, event: Any, *, http: bool = False) -> Buffered | Streamed:
        """Run the handler with ``event`` on the function's thread (the interface of
        fnstack_dev.sandbox.FunctionPool): a handler's exception is a FunctionError."""
        loop = asyncio.get_running_loop()
        try:
            return Buffered(await loop.run_in_executor(self._executor, self._call, event))
        except Exception as exc:
            raise FunctionError({"errorMessage": str(exc), "errorType": type(exc).__name__}
                                ) from exc

    def _call(self, event: dict[str, Any]) -> Any:
        if self._handler is None:
            self._import()
        context = LambdaContext(function_name=self.fn.logical_id,
                                memory_limit_in_mb=self.fn.memory_mb, timeout_s=self.fn.timeout_s)
        return self._handler(event, context)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as ``context``, for `fnstack invoke` and the gateway."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_s: float = 30.0
    function_version: str = "$LATEST"
    region: str = "us-east-1"
    account_id: str = "123456789012"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return time.strftime("%Y/%m/%d/[$LATEST]") + self.aws_request_id.replace("-", "")

    def get_remaining_time_in_millis(self) -> int:
        left = self.timeout_s - (time.monotonic() - self.started)
        return max(0, int(left * 1000))
