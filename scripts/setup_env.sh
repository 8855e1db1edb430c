#!/usr/bin/env bash
# Creates (or reuses) ./.venv with the pinned dev/CI dependencies and builds
# swin_ext into it.  Safe to run repeatedly; everything the project needs is
# installed here, nothing is expected to be pre-installed but python3 >= 3.9.
#
#   SWIN_EXT_VENV      venv location (default ./.venv)
#   SWIN_EXT_CPU_ONLY  1: skip the CUDA sources even when nvcc is present
#   TORCH_CUDA_ARCH_LIST  CUDA archs (default here: 9.0, one arch keeps CI builds short)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SWIN_EXT_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
echo "== installing dependencies (requirements-dev.txt)"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
$PIP install -q -r requirements-dev.txt

# CUDA: compile the CUDA sources whenever a toolkit is present, even without a
# GPU (see DESIGN.md "Building without a GPU").
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  # The toolkit root is where nvcc's libraries live (nvcc itself may be a
  # copy or wrapper in /usr/local/bin).
  for cand in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda /usr/local/cuda-*; do
    if ls "$cand"/lib64/libcudart.so* >/dev/null 2>&1 || ls "$cand"/lib/libcudart.so* >/dev/null 2>&1; then
      CUDA_HOME=$cand
      break
    fi
  done
  [ -n "${CUDA_HOME:-}" ] && export CUDA_HOME
fi
NVINC=$("$VENV/bin/python" - <<'PY'
import os, sys
for p in sys.path:
    c = os.path.join(p, "nvidia", "cu13", "include")
    if os.path.isdir(c):
        print(c); break
PY
)
if [ -n "$NVINC" ]; then export CPATH="$NVINC${CPATH:+:$CPATH}"; fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

echo "== building swin_ext (CUDA_HOME=${CUDA_HOME:-none}, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
$PIP install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "^\s*$" | tail -n 20 || true
"$VENV/bin/python" -c "import swin_ext, json; i = swin_ext.build_info(); print('== built:', json.dumps(i)); assert i['ops_loaded'], i"
