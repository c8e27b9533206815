"""Lambda's execution environments for the built bundle: one process per instance.

`sam build` leaves each function's code in ``.aws-sam/build/<Function>/`` and each
layer's content in ``.aws-sam/build/<Layer>/``. A ``FunctionPool`` runs one function
from there the way Lambda does:

- each instance is its own process on python3.12 (the runtime of the template; the
  layer holds cp312 wheels), started on demand (a cold start, reported with its init
  duration as Lambda's REPORT line does), kept warm and reused, one invocation at a
  time; up to the function's reserved concurrency run in parallel (requests beyond it
  wait for a free instance);
- Lambda's environment: ``LAMBDA_TASK_ROOT`` is the built function folder (also the
  working directory), the layers' content is at ``/opt`` (bind-mounted in a private
  mount namespace, ``unshare``; where that is not allowed the layer folder is put on
  the path in /opt's place, see ``Isolation``), ``PYTHONPATH`` is the runtime folder
  only (as on Lambda, where it is ``/var/runtime``) and the runtime's bootstrap
  (``lambda_bootstrap.py``) puts the task root and ``/opt/python`` in front of
  ``sys.path`` itself, in Lambda's order. Nothing of the calling shell leaks in;
- a Python handler runs under that bootstrap; a function behind the Lambda Web Adapter
  (``AWS_LAMBDA_EXEC_WRAPPER`` with the adapter's layer) runs its handler *script*
  (e.g. functions/inference.sh) as the adapter does, and the pool plays the adapter:
  readiness check, then each event becomes an HTTP request to the script's server and
  its response is relayed as a stream;
- ``Timeout`` and ``MemorySize`` from the template: an invocation past its timeout, or
  an instance past its memory, is killed and answered as Lambda's error.

Child processes never outlive the emulator: each gets its own process group, a parent
death signal, and is killed at exit (``kill_children``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

__all__ = [
    "Buffered",
    "Bundle",
    "FunctionError",
    "FunctionPool",
    "FunctionSpec",
    "Streamed",
    "find_python312",
    "kill_children",
    "spawn",
]

Isolation = Literal["mount", "paths"]
BOTO3_VERSION = "1.43.11"  # pyproject's aws extra; the Lambda runtime ships boto3
# What the Lambda Web Adapter's layer is called (its ARN names it).
ADAPTER_LAYER = "LambdaAdapterLayer"

_CHILDREN: set[subprocess.Popen[bytes]] = set()


# --- child processes that die with the emulator -----------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, killed when the emulator exits or dies.

    Call it from the main thread: the parent death signal fires when the thread that
    forked exits.
    """
    if not _CHILDREN:
        atexit.register(kill_children)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
    _CHILDREN.add(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """Kill the child's whole process group (whatever it started goes too)."""
    _CHILDREN.discard(proc)
    if proc.poll() is None and grace:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def kill_children() -> None:
    for proc in list(_CHILDREN):
        stop(proc)


# --- the bundle ---------------------------------------------------------------------------


def find_python312() -> str:
    """python3.12 for the built functions: $FNSTACK_LAMBDA_PYTHON, pyenv's, or PATH's."""
    candidates = [os.environ.get("FNSTACK_LAMBDA_PYTHON", "")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob("3.12*/bin/python3.12"))
    candidates.append(shutil.which("python3.12") or "")
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    raise RuntimeError("the built bundle runs on python3.12 (the Lambda runtime of the "
                       "template): install it (pyenv install 3.12) or set FNSTACK_LAMBDA_PYTHON")


@cache
def mount_namespaces() -> bool:
    """Whether this machine lets an unprivileged process bind-mount in its own namespace."""
    if not shutil.which("unshare"):
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as empty:
        probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                 'mount --bind "$0" /opt && mount -o remount,bind,ro /opt', empty]
        return subprocess.run(probe, capture_output=True).returncode == 0


class Bundle:
    """A `sam build` output folder, and what runs its functions.

    ``runtime_dir`` (``<build>/../lambda-runtime``) stands for Lambda's
    ``LAMBDA_RUNTIME_DIR``: the bootstrap plus boto3, which the Lambda runtime provides
    and the layer therefore leaves out. It is installed there on first use;
    ``$FNSTACK_LAMBDA_RUNTIME_DIR`` names another folder (several bundles can share one).
    """

    def __init__(self, build_dir: Path, *, python: str | None = None,
                 isolation: Isolation | None = None) -> None:
        self.build_dir = build_dir.resolve()
        if not (self.build_dir / "template.yaml").is_file():
            raise FileNotFoundError(
                f"no built bundle in {self.build_dir}: run `sam build` (without Docker: "
                "bash .ci/serverless.sh), or pass --from-source to run the source tree")
        self.python = python or find_python312()
        self.isolation: Isolation = isolation or ("mount" if mount_namespaces() else "paths")
        self.runtime_dir = Path(os.environ.get("FNSTACK_LAMBDA_RUNTIME_DIR")
                                or self.build_dir.parent / "lambda-runtime")
        self.opt_root = self.build_dir.parent / "lambda-opt"

    @property
    def template_path(self) -> Path:
        return self.build_dir / "template.yaml"

    def prepare(self) -> None:
        """The runtime folder: the bootstrap (always refreshed) and boto3 (once)."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(__file__).with_name("lambda_bootstrap.py"),
                     self.runtime_dir / "bootstrap.py")
        if not (self.runtime_dir / "boto3").is_dir():
            print(f"fnstack: installing boto3=={BOTO3_VERSION} into {self.runtime_dir} "
                  "(the Lambda runtime's copy)", file=sys.stderr, flush=True)
            subprocess.run(
                [self.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--root-user-action=ignore",
                 "--no-compile", "--target", str(self.runtime_dir), f"boto3=={BOTO3_VERSION}"],
                check=True)

    def opt_dir(self, name: str, layers: list[Path]) -> Path:
        """What Lambda extracts at /opt for this function: its layers, merged in order."""
        if len(layers) == 1:
            return layers[0]
        merged = self.opt_root / name
        shutil.rmtree(merged, ignore_errors=True)
        merged.mkdir(parents=True)
        for layer in layers:
            for entry in layer.iterdir():
                target = merged / entry.name
                if not target.exists():
                    target.symlink_to(entry)
        return merged


@dataclass
class FunctionSpec:
    """One function of the built template, as the pool runs it."""

    name: str
    task_root: Path
    handler: str  # the Handler property: module.attribute, or a script for the adapter
    env: dict[str, str]  # the template's variables (resolved) and --env overrides
    timeout_s: float
    memory_mb: int
    concurrency: int
    layers: list[Path]
    adapter: bool  # behind the Lambda Web Adapter: the handler is a script serving HTTP
    python: str | None = None  # another interpreter than the bundle's (fnstack_dev.image)


# --- invocation results ---------------------------------------------------------------------


class FunctionError(Exception):
    """The invocation failed as Lambda reports it (Unhandled): error, timeout, crash."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(str(payload.get("errorMessage", "")))
        self.payload = payload


@dataclass
class Buffered:
    """A function's whole answer: the handler's return value (a proxy response)."""

    payload: Any


@dataclass
class Streamed:
    """An answer streamed through the Web Adapter: status and headers, then the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]


# --- instances ------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory figure in MB (0 where /proc is not there)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


class _Instance:
    """One execution environment: a process and its init."""

    def __init__(self, spec: FunctionSpec, bundle: Bundle) -> None:
        self.spec = spec
        self.bundle = bundle
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_ms = 0.0
        self.port = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._http: httpx.AsyncClient | None = None
        self._next_id = 0

    # The environment Lambda gives the process.
    def environment(self) -> dict[str, str]:
        spec, bundle = self.spec, self.bundle
        python_bin = str(Path(spec.python or bundle.python).parent)
        env = {
            "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "PYTHONPATH": str(bundle.runtime_dir),
            "LAMBDA_TASK_ROOT": str(spec.task_root),
            "LAMBDA_RUNTIME_DIR": str(bundle.runtime_dir),
            "_HANDLER": spec.handler,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": spec.env.get("AWS_REGION", "us-east-1"),
            "AWS_DEFAULT_REGION": spec.env.get("AWS_REGION", "us-east-1"),
            **spec.env,
        }
        if bundle.isolation == "paths":
            # No /opt of its own: the layers' folder stands in for it wherever the
            # template names /opt/..., and the bootstrap is told where it is.
            opt = str(bundle.opt_dir(spec.name, spec.layers))
            env = {k: (opt + v[4:] if v.startswith("/opt/") else v) for k, v in env.items()}
            env["_FNSTACK_OPT_DIR"] = opt
        return env

    def command(self, argv: list[str]) -> list[str]:
        if self.bundle.isolation != "mount" or not self.spec.layers:
            return argv
        opt = str(self.bundle.opt_dir(self.spec.name, self.spec.layers))
        # Read-only, as Lambda's /opt: nothing (a .pyc cache) can be written there.
        return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                'mount --bind "$0" /opt && mount -o remount,bind,ro /opt && exec "$@"',
                opt, *argv]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        if self._http is not None:
            http, self._http = self._http, None
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(http.aclose())

    def max_memory_mb(self) -> int:
        return _proc_status(self.proc.pid, "VmHWM") if self.proc else 0

    def over_memory(self) -> bool:
        return self.proc is not None and (
            _proc_status(self.proc.pid, "VmRSS") > self.spec.memory_mb)

    def _exit_error(self, request_id: str) -> FunctionError:
        code = None
        if self.proc is not None:
            # Its end of the pipe closes a moment before it is reaped.
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(2)
        how = (f"signal: {signal.Signals(-code).name}" if code and code < 0
               else f"exit status {code}")
        return FunctionError({"errorType": "Runtime.ExitError",
                              "errorMessage": f"RequestId: {request_id} Error: Runtime exited "
                                              f"with error: {how}"})

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        if self.spec.adapter:
            await self._start_adapter()
        else:
            await self._start_python()
        self.init_ms = (time.monotonic() - started) * 1000

    async def _start_python(self) -> None:
        loop = asyncio.get_running_loop()
        events_r, events_w = os.pipe()
        results_r, results_w = os.pipe()
        env = {**self.environment(), "_FNSTACK_EVENTS_FD": str(events_r),
               "_FNSTACK_RESULTS_FD": str(results_w)}
        argv = [self.bundle.python, "-s", str(self.bundle.runtime_dir / "bootstrap.py")]
        try:
            self.proc = spawn(self.command(argv), env=env, cwd=self.spec.task_root,
                              pass_fds=(events_r, results_w), stdin=subprocess.DEVNULL,
                              stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno())
        finally:
            os.close(events_r)
            os.close(results_w)
        reader = self._reader = asyncio.StreamReader(limit=64 * 1024 * 1024, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(results_r, "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(events_w, "wb", buffering=0))
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        try:
            line = await asyncio.wait_for(self._reader.readline(), max(self.spec.timeout_s, 10))
        except TimeoutError:
            self.kill()
            raise FunctionError({"errorType": "Runtime.InitTimeout", "errorMessage":
                                 f"{self.spec.name}: init did not finish"}) from None
        if not line:
            raise self._exit_error("init")
        message = json.loads(line)
        if "init_error" in message:
            self.kill()
            raise FunctionError(message["init_error"])

    async def _start_adapter(self) -> None:
        script = self.spec.task_root / self.spec.handler
        self.port = _free_port()
        env = self.environment()
        # Each sandbox has its own network on Lambda; here they share one: own ports.
        env["AWS_LWA_PORT"] = env["PORT"] = str(self.port)
        if self.bundle.isolation == "paths" and "_FNSTACK_OPT_DIR" in env:
            # Less faithful than the mount: a script's literal /opt/python cannot be
            # redirected, so the layer goes on its PYTHONPATH here (see docs/serverless.md).
            opt_python = env["_FNSTACK_OPT_DIR"] + "/python"
            env["PYTHONPATH"] = f"{opt_python}:{env['PYTHONPATH']}"
        self.proc = spawn(self.command([str(script)]), env=env, cwd=self.spec.task_root,
                          stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                          stderr=sys.stderr.fileno())
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=None)
        path = env.get("AWS_LWA_READINESS_CHECK_PATH", "/")
        deadline = time.monotonic() + max(self.spec.timeout_s, 10)
        while time.monotonic() < deadline:
            if not self.alive:
                raise self._exit_error("init")
            try:
                r = await self._http.get(path, timeout=2)
                if r.status_code < 500:  # the adapter's default readiness rule
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        self.kill()
        raise FunctionError({"errorType": "Runtime.InitTimeout",
                             "errorMessage": f"{self.spec.name}: {script.name} never answered "
                                             f"{path} on port {self.port}"})

    # --- invoke --------------------------------------------------------------------------

    async def invoke(self, event: Any, request_id: str, deadline: float) -> Any:
        assert self._reader is not None and self._writer is not None
        self._next_id += 1
        message = {"id": self._next_id, "event": event, "request_id": request_id,
                   "deadline_ms": int((time.time() + deadline - time.monotonic()) * 1000)}
        self._writer.write(json.dumps(message).encode() + b"\n")
        try:
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), deadline - time.monotonic())
        except TimeoutError:
            self.kill()
            raise _timeout(request_id, self.spec.timeout_s) from None
        except (ConnectionError, BrokenPipeError):
            line = b""
        if not line:
            raise self._exit_error(request_id)
        answer = json.loads(line)
        if "error" in answer:
            raise FunctionError(answer["error"])
        return answer["result"]

    async def invoke_http(self, event: dict[str, Any], request_id: str, deadline: float
                          ) -> Streamed:
        """What the Web Adapter does with an API Gateway event: an HTTP request."""
        assert self._http is not None
        request = _adapter_request(self._http, event, request_id,
                                   self.spec.env.get("AWS_LWA_REMOVE_BASE_PATH", ""))
        try:
            response = await asyncio.wait_for(self._http.send(request, stream=True),
                                              deadline - time.monotonic())
        except TimeoutError:
            self.kill()
            raise _timeout(request_id, self.spec.timeout_s) from None
        except httpx.TransportError as exc:
            raise self._exit_error(request_id) if not self.alive else FunctionError(
                {"errorType": "Runtime.AdapterError", "errorMessage": str(exc)}) from None
        hop = {b"transfer-encoding", b"connection", b"keep-alive", b"content-length"}
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in hop]

        async def body() -> AsyncIterator[bytes]:
            chunks = response.aiter_raw()
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(chunks), deadline - time.monotonic())
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        # Lambda ends the stream where the timeout strikes.
                        self.kill()
                        raise _timeout(request_id, self.spec.timeout_s) from None
                    yield chunk
            finally:
                await response.aclose()

        return Streamed(response.status_code, headers, body())


def _timeout(request_id: str, timeout_s: float) -> FunctionError:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return FunctionError({"errorType": "Sandbox.Timedout",
                          "errorMessage": f"{stamp} {request_id} Task timed out after "
                                          f"{timeout_s:.2f} seconds"})


def _adapter_request(http: httpx.AsyncClient, event: dict[str, Any], request_id: str,
                     remove_base_path: str = "") -> httpx.Request:
    import base64

    query = event.get("multiValueQueryStringParameters") or {}
    pairs = [(k, v) for k, vs in query.items() for v in vs]
    headers: list[tuple[str, str]] = [
        (k, v) for k, vs in (event.get("multiValueHeaders") or {}).items() for v in vs
        if k.lower() != "content-length"]
    headers.append(("x-amzn-request-context", json.dumps(event.get("requestContext") or {})))
    headers.append(("x-amzn-lambda-context", json.dumps({"request_id": request_id})))
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    url = event.get("path") or "/"
    if remove_base_path and url.startswith(remove_base_path):
        url = url[len(remove_base_path):] or "/"  # AWS_LWA_REMOVE_BASE_PATH
    if pairs:
        url += "?" + urlencode(pairs)
    return http.build_request(event.get("httpMethod", "GET"), url, headers=headers, content=body)


# --- the pool -----------------------------------------------------------------------------


def _drain_abandoned(task: asyncio.Future[Buffered | Streamed]) -> None:
    """A stream nobody waits for any more still runs to its end, as on Lambda (reading it
    releases its instance)."""
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, Streamed):
        async def drain(body: AsyncIterator[bytes]) -> None:
            async for _ in body:
                pass

        _DRAINING.add(asyncio.ensure_future(drain(result.body)))


_DRAINING: set[asyncio.Future[None]] = set()


class FunctionPool:
    """The instances of one function: warm ones reused, new ones up to the concurrency."""

    def __init__(self, spec: FunctionSpec, bundle: Bundle) -> None:
        self.spec = spec
        self.bundle = bundle
        self.cold_starts = 0
        self.invocations = 0
        self.last_init_ms = 0.0  # the latest cold start's init duration
        self._idle: list[_Instance] = []
        self._all: set[_Instance] = set()
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Future[Buffered | Streamed]] = set()

    async def _acquire(self) -> tuple[_Instance, bool]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.spec.concurrency)
        await self._slots.acquire()
        while self._idle:
            instance = self._idle.pop()
            if instance.alive:
                return instance, False
            self._all.discard(instance)
        instance = _Instance(self.spec, self.bundle)
        self._all.add(instance)
        try:
            await instance.start()
        except BaseException:
            self._release(instance, keep=False)
            raise
        self.cold_starts += 1
        self.last_init_ms = instance.init_ms
        return instance, True

    def _release(self, instance: _Instance, *, keep: bool) -> None:
        if keep and instance.alive and not instance.over_memory():
            self._idle.append(instance)
        else:
            if instance.alive and keep:
                print(f"{self.spec.name}: instance over {self.spec.memory_mb} MB "
                      "(MemorySize): killed", file=sys.stderr, flush=True)
            instance.kill()
            self._all.discard(instance)
        assert self._slots is not None
        self._slots.release()

    def _report(self, request_id: str, instance: _Instance, started: float, cold: bool) -> None:
        duration = (time.monotonic() - started) * 1000
        line = (f"REPORT RequestId: {request_id}\tFunction: {self.spec.name}\t"
                f"Duration: {duration:.2f} ms\tBilled Duration: {math.ceil(duration)} ms\t"
                f"Memory Size: {self.spec.memory_mb} MB\t"
                f"Max Memory Used: {instance.max_memory_mb()} MB")
        if cold:
            line += f"\tInit Duration: {instance.init_ms:.2f} ms"
        print(line, file=sys.stderr, flush=True)

    async def invoke(self, event: Any, *, http: bool = False) -> Buffered | Streamed:
        """One invocation. ``http``: the event is an API Gateway request (the Web Adapter
        streams the answer); otherwise the handler's return value comes back buffered.

        A caller that stops waiting (API Gateway's integration timeout) does not stop the
        invocation: as on Lambda, the instance stays busy until its handler returns or
        the function's own timeout strikes.
        """
        task = asyncio.ensure_future(self._invoke(event, http))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_drain_abandoned)
            raise

    async def _invoke(self, event: Any, http: bool) -> Buffered | Streamed:
        request_id = str(uuid.uuid4())
        instance, cold = await self._acquire()
        started = time.monotonic()
        deadline = started + self.spec.timeout_s
        self.invocations += 1
        if not self.spec.adapter:
            try:
                result = await instance.invoke(event, request_id, deadline)
            finally:
                self._release(instance, keep=True)
                self._report(request_id, instance, started, cold)
            return Buffered(result)
        if not http:
            self._release(instance, keep=True)
            raise FunctionError({"errorType": "Runtime.Unsupported", "errorMessage":
                                 f"{self.spec.name} runs behind the Web Adapter: only API "
                                 "Gateway events are emulated for it"})
        try:
            streamed = await instance.invoke_http(event, request_id, deadline)
        except BaseException:
            self._release(instance, keep=True)
            raise

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in streamed.body:
                    yield chunk
            finally:
                # A client that hangs up closes the connection to the instance's server
                # (its app sees the disconnect); the instance itself stays warm.
                self._release(instance, keep=True)
                self._report(request_id, instance, started, cold)

        return Streamed(streamed.status, streamed.headers, relay())

    def close(self) -> None:
        for instance in list(self._all):
            instance.kill()
        self._all.clear()
        self._idle.clear()


def function_specs(template: Any, bundle: Bundle, envs: Mapping[str, Mapping[str, str]],
                   *, concurrency: int) -> dict[str, FunctionSpec]:
    """The zip functions of the built template (``fnstack_dev.template.Template``)."""
    specs: dict[str, FunctionSpec] = {}
    for fn in template.functions.values():
        if fn.package_type != "Zip":
            continue
        layers: list[Path] = []
        adapter = False
        for layer in fn.layers:
            ref = layer.get("Ref") if isinstance(layer, dict) else None
            if isinstance(ref, str) and ref in template.resources:
                content = template.resources[ref].get("Properties", {}).get("ContentUri")
                layers.append(template.root / str(content))
            elif ADAPTER_LAYER in json.dumps(layer):
                adapter = True
            else:
                print(f"fnstack: {fn.logical_id}: layer {json.dumps(layer)} is not in the bundle;"
                      " emulated without it", file=sys.stderr)
        env = dict(envs.get(fn.logical_id, {}))
        adapter = adapter and bool(env.get("AWS_LAMBDA_EXEC_WRAPPER"))
        specs[fn.logical_id] = FunctionSpec(
            name=fn.logical_id, task_root=fn.code_dir, handler=fn.entry, env=env,
            timeout_s=fn.timeout_s, memory_mb=fn.memory_mb,
            concurrency=fn.reserved_concurrency or concurrency, layers=layers, adapter=adapter)
    return specs
