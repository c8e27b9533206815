"""Run a script under llama-stack-client, in its own virtualenv, and read its JSON answer.

The client lives in ``.venv-lsc`` (Python 3.12, made by ``scripts/setup.sh --tests``), not in
the project's virtualenv; the script prints its report as JSON on its last stdout line.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["LSC_PYTHON", "run_lsc"]

LSC_PYTHON = Path(__file__).resolve().parents[2] / ".venv-lsc" / "bin" / "python"


def run_lsc(*args: str, timeout: float = 300) -> Any:
    """``.venv-lsc/bin/python *args``; the JSON of its last stdout line."""
    assert LSC_PYTHON.exists(), (
        f"{LSC_PYTHON} is missing: run scripts/setup.sh --tests (it makes the "
        "llama-stack-client virtualenv on Python 3.12)")
    done = subprocess.run([str(LSC_PYTHON), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
