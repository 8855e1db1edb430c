#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest.
# The CUDA harness (tools/cuda_harness/harness_build.py, test-only) is built in the
# background while the extension builds, so its compile time overlaps the
# extension's; the test session then finds it built (ninja is incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SWIN_EXT_VENV:-$(pwd)/.venv}
SWIN_EXT_SETUP_PHASE=deps bash scripts/setup_env.sh
mkdir -p build
"$VENV/bin/python" tools/cuda_harness/harness_build.py > build/harness_build.log 2>&1 &
HARNESS_PID=$!
SWIN_EXT_SETUP_PHASE=build bash scripts/setup_env.sh
wait "$HARNESS_PID" || echo "== the background harness build failed (build/harness_build.log); the tests rebuild it and report the error"
# pytest-xdist: one worker per core (SWIN_EXT_TEST_WORKERS=0 runs in this process), each on one
# intra-op thread so the workers do not oversubscribe the cores (tests that exercise thread counts
# set them explicitly).  Every test seeds itself from its id and writes under tmp_path, so the
# order and the split do not change what a test checks.  --durations shows where CI time goes.
WORKERS=${SWIN_EXT_TEST_WORKERS:-$(nproc)}
if [ "$WORKERS" -gt 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  exec "$VENV/bin/python" -m pytest -q -n "$WORKERS" --dist worksteal --durations=25 "$@"
fi
exec "$VENV/bin/python" -m pytest -q --durations=25 "$@"
