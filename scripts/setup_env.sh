#!/usr/bin/env bash
# Creates (or reuses) ./.venv with the pinned dev/CI dependencies and builds
# swin_ext into it.  Safe to run repeatedly; everything the project needs is
# installed here, nothing is expected to be pre-installed but python3 >= 3.9.
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
if [ "$PHASE" != "build" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv at $VENV"
    "$PY" -m venv "$VENV"
  fi
  echo "== installing dependencies (requirements-dev.txt)"
  $PIP install -q --upgrade pip >/dev/null 2>&1 || true
  $PIP install -q -r requirements-dev.txt
fi
[ "$PHASE" = "deps" ] && exit 0

# CUDA: the CUDA sources are compiled whenever a toolkit is present, even
# without a GPU, so that every build checks them (the harness runs them on
# the CPU).  scripts/cuda_env.py finds the toolkit and the wheels' headers.
eval "$("$VENV/bin/python" scripts/cuda_env.py --shell)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

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
