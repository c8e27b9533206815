#!/usr/bin/env bash
# The serverless bundle in CI: offline template validation, `sam build` of the zip
# functions and the provider layer (no Docker), the 250 MB layer budget.
# Called by .ci/run with $VENV set and the repository root as cwd. Idempotent.
# `--build`: the bundle only (no validation, no checkov), as the tests' emulated gateway
# asks for it when .aws-sam/build is missing or its layer is stale.
set -euo pipefail
BUILD_ONLY=0
[ "${1:-}" = "--build" ] && BUILD_ONLY=1

VENV=${VENV:-.venv}
# A real python3.12 (pyenv's shims fail when 3.12 is not the selected version).
PY312=${PY312:-}
if [ -z "$PY312" ]; then
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                   "$(command -v python3.12 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then PY312=$candidate; break; fi
  done
fi
[ -n "$PY312" ] || { echo "error: sam build needs python3.12 (pyenv install 3.12)" >&2; exit 1; }
SAM_VENV=.venv-sam
SAM_VERSION=1.170.0

# aws-sam-cli pins click/boto3 versions the project's venv does not use: it gets its own
# venv (python3.12, the Lambda runtime's version). Reused when already at the version.
if ! "$SAM_VENV/bin/sam" --version 2>/dev/null | grep -q "$SAM_VERSION"; then
  "$PY312" -m venv "$SAM_VENV"
  echo '*' > "$SAM_VENV/.gitignore"
  "$SAM_VENV/bin/pip" install --quiet --disable-pip-version-check "aws-sam-cli==$SAM_VERSION"
fi
# The offline SAM transform in the project's venv (cfn-lint is there already).
"$VENV/bin/python" -c "import samtranslator" 2>/dev/null \
  || "$VENV/bin/pip" install --quiet --disable-pip-version-check "aws-sam-translator==1.115.0"

if [ "$BUILD_ONLY" = 0 ]; then
echo "== validate template.yaml (SAM transform + cfn-lint)"
"$VENV/bin/python" -m fnstack_dev.validate_template --output .aws-sam/template.cfn.json

# checkov pins its own dependencies: its own venv, as aws-sam-cli.
echo "== checkov on the translated template (.checkov.yaml: each skip has its reason)"
CHECKOV_VENV=.venv-checkov
CHECKOV_VERSION=3.3.30
if ! "$CHECKOV_VENV/bin/checkov" --version 2>/dev/null | grep -q "$CHECKOV_VERSION"; then
  "$PY312" -m venv "$CHECKOV_VENV"
  echo '*' > "$CHECKOV_VENV/.gitignore"
  "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
"$CHECKOV_VENV/bin/checkov" --config-file .checkov.yaml -f .aws-sam/template.cfn.json
fi

# One build at a time in .aws-sam/build: test sessions (tests/support/gateway.py, which
# holds this lock already when it runs us: FNSTACK_BUILD_LOCKED) and a direct run.
mkdir -p .aws-sam
if [ -z "${FNSTACK_BUILD_LOCKED:-}" ]; then
  exec 9>.aws-sam/.fnstack-build.lock
  flock 9
fi

echo "== prebuild the layer's models (ONNX export needs torch: the project's venv)"
"$VENV/bin/python" infra/prebuild_models.py

echo "== sam build (zip functions + provider layer; the image function needs Docker)"
export SAM_CLI_TELEMETRY=0
PATH="$(dirname "$PY312"):$PATH" "$SAM_VENV/bin/python" infra/sam_build.py
# The layer now matches its inputs (the tests rebuild when they change).
"$VENV/bin/python" -m fnstack_dev.bundle --layer-built .aws-sam/build

echo "== layer budget"
"$VENV/bin/python" infra/check_layer_size.py .aws-sam/build

if [ "$BUILD_ONLY" = 0 ]; then
# Architecture=arm64 builds the same layer from aarch64 wheels (layers/Makefile
# LAYER_ARCH): each must exist, or the arm64 build would fail at deploy time.
echo "== arm64: every layer wheel exists for aarch64 (resolution only, nothing installed)"
"$PY312" -m pip install --dry-run --quiet --disable-pip-version-check --ignore-installed \
  --target "$(mktemp -d)" --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
  --platform manylinux2014_aarch64 --implementation cp --python-version 3.12 \
  --only-binary=:all: -r layers/requirements.txt
fi
