"""Secure by default: open only on loopback, never on Lambda unless said explicitly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fnstack.app import create_app
from fnstack.config import RunConfig, parse_config
from fnstack.errors import ConfigError


def _config(tmp: Path, auth: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {
        "storage": {"backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")}},
                    "stores": {"registry": {"backend": "kv", "namespace": "registry"}}},
    }
    if auth is not None:
        data["auth"] = auth
    return parse_config(data, env={})


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fnstack.cli", "run", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_public_bind_without_auth_refuses_to_start(tmp_path: Path) -> None:
    done = _run("local", "--host", "0.0.0.0", "--port", "1", "--no-warmup",
                env={"FNSTACK_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert "FNSTACK_AUTH=api_keys" in done.stderr and "--insecure" in done.stderr


def test_on_lambda_open_is_refused_unless_explicit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fnstack-models")
    with pytest.raises(ConfigError, match="refusing to serve on AWS Lambda"):
        create_app(_config(tmp_path), ["models"], lifespan=False)
    # Said in so many words: allowed.
    create_app(_config(tmp_path, {"type": "none"}), ["models"], lifespan=False)
    create_app(_config(tmp_path, {"type": "api_keys"}), ["models"], lifespan=False)
