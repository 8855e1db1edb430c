#!/usr/bin/env bash
# Creates (or reuses) ./.venv with the pinned dev/CI dependencies and builds
# swin_ext into it.  Safe to run repeatedly; everything the project needs is
# installed here, nothing is expected to be pre-installed but python3 >= 3.9.
# A re-run skips what has not changed: the dependencies when
# requirements-dev.txt is the one last installed, the build when no input of
# it changed (csrc/, setup.py, pyproject.toml, scripts/cuda_env.py, the torch
# and Python versions, the SWIN_EXT_* / TORCH_CUDA_ARCH_LIST / CUDA_HOME
# settings) and the built extension still loads; a fresh clone always builds.
#
#   SWIN_EXT_VENV      venv location (default ./.venv)
#   SWIN_EXT_CPU_ONLY  1: skip the CUDA sources even when nvcc is present
#   TORCH_CUDA_ARCH_LIST  CUDA archs (default here: 9.0, one arch keeps CI builds short)
#   SWIN_EXT_SETUP_PHASE  deps | build | all (default): the test command runs
#                      the phases apart, to build the CUDA harness beside the extension
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SWIN_EXT_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

PHASE=${SWIN_EXT_SETUP_PHASE:-all}
PIP="$VENV/bin/python -m pip"
STAMPS=$ROOT/build/stamps
mkdir -p "$STAMPS"
if [ "$PHASE" != "build" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv at $VENV"
    "$PY" -m venv "$VENV"
    rm -f "$STAMPS"/*
  fi
  DEPS_KEY=$( { echo "$VENV"; cat requirements-dev.txt; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$STAMPS/deps" 2>/dev/null)" = "$DEPS_KEY" ]; then
    echo "== dependencies: requirements-dev.txt unchanged since they were installed, skipping"
  else
    echo "== installing dependencies (requirements-dev.txt; the first time ~6 GB, torch's CUDA wheels included)"
    # A full disk is the one failure here that is not the project's: say so before pip does.
    FREE_GB=$(df -Pk "$VENV" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ -n "$FREE_GB" ] && [ "$FREE_GB" -lt 8 ]; then
      echo "== warning: $FREE_GB GB free on the disk of $VENV; the dependencies take ~6 GB and the build ~1 GB"
    fi
    $PIP install -q --no-cache-dir --upgrade pip >/dev/null 2>&1 || true
    $PIP install -q --no-cache-dir -r requirements-dev.txt
    echo "$DEPS_KEY" > "$STAMPS/deps"
  fi
fi
[ "$PHASE" = "deps" ] && exit 0

# CUDA: the CUDA sources are compiled whenever a toolkit is present, even
# without a GPU, so that every build checks them (the harness runs them on
# the CPU).  scripts/cuda_env.py finds the toolkit and the wheels' headers.
eval "$("$VENV/bin/python" scripts/cuda_env.py --shell)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

# Everything the built extension depends on; the build is skipped when it is unchanged.
build_key() {
  {
    echo "$ROOT $VENV"
    "$VENV/bin/python" -c "import sys, torch; print(sys.version, torch.__version__, torch.version.cuda)"
    env | grep -E '^(SWIN_EXT_CPU_ONLY|SWIN_EXT_FORCE_CUDA|SWIN_EXT_DEBUG|TORCH_CUDA_ARCH_LIST|CUDA_HOME)=' | sort
    find csrc setup.py pyproject.toml scripts/cuda_env.py -type f -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}
BUILD_KEY=$(build_key)
if [ "$(cat "$STAMPS/build" 2>/dev/null)" = "$BUILD_KEY" ] && "$VENV/bin/python" -c "
import os, sys, swin_ext
ok = swin_ext.build_info()['ops_loaded'] and os.path.dirname(swin_ext.__file__) == os.path.join(sys.argv[1], 'swin_ext')
sys.exit(0 if ok else 1)" "$ROOT" >/dev/null 2>&1; then
  echo "== swin_ext: no source of the extension changed since the last build, skipping it (build/stamps/build)"
  "$VENV/bin/python" -c "import swin_ext, json; print('== built:', json.dumps(swin_ext.build_info()))"
  exit 0
fi
rm -f "$STAMPS/build"

LOG=$ROOT/build/setup_build.log
mkdir -p "$(dirname "$LOG")"
echo "== building swin_ext (CUDA_HOME=${CUDA_HOME:-none}, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS); log: $LOG"
set +e
$PIP install --no-build-isolation --no-deps -e . > "$LOG" 2>&1
rc=$?
set -e
if [ $rc -ne 0 ]; then
  grep -nE "error|Error" "$LOG" | head -n 40 || true
  echo "== the build of swin_ext failed (exit status $rc); the whole build log is $LOG"
  exit $rc
fi
"$VENV/bin/python" -c "import swin_ext, json; i = swin_ext.build_info(); print('== built:', json.dumps(i)); assert i['ops_loaded'], i"
echo "$BUILD_KEY" > "$STAMPS/build"
