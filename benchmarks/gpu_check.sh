#!/usr/bin/env bash
# The GPU check: one command for a GPU machine with no network (torch, timm,
# nvcc and ninja installed).  Builds swin_ext in place, runs the CUDA tests,
# then benchmarks, and writes a markdown report to benchmarks/results/ (and
# to $OUT when set, for the device tool).  Budget: under 10 minutes.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 TORCH_CUDA_ARCH_LIST=9.0 by default
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export SWIN_EXT_FORCE_CUDA=1
STAMP=$(date -u +%Y%m%d-%H%M)
RES=benchmarks/results
mkdir -p "$RES"
REPORT=$RES/gpu_check_$STAMP.md
LOG=$RES/gpu_check_$STAMP.log
exec > >(tee "$LOG") 2>&1

echo "# swin_ext GPU check, $STAMP"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build"
t0=$(date +%s)
if ! $PY setup.py -q build_ext --inplace; then
  echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
$PY -c "import swin_ext, json; print(json.dumps(swin_ext.build_info()))"

echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -60
TEST_RC=${PIPESTATUS[0]}

{
  echo "# swin_ext GPU check ($STAMP)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch, swin_ext, json; print('torch', torch.__version__); print(json.dumps(swin_ext.build_info()))"
  echo "tests/test_cuda.py exit status: $TEST_RC"
  echo '```'
  echo
  echo "## Op level (benchmarks/bench_ops.py)"
  for dt in float32 bfloat16; do
    echo
    timeout 200 $PY benchmarks/bench_ops.py --device cuda --dtype $dt --batch 64 --repeats 20
  done
  echo
  echo "## Model level (benchmarks/bench_model.py)"
  echo
  for model in swin_t swin_b; do
    timeout 150 $PY benchmarks/bench_model.py --device cuda --model $model --dtypes float32 bfloat16 \
        --impls swin_ext-fused swin_ext-reference timm timm-sdpa --infer-batches 128 --train-batches 64 \
        --warmup 3 --repeats 10 --out-dir "$RES" 2>&1 || echo "(bench_model.py $model failed or timed out)"
    echo
  done
} > "$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
cat "$REPORT"
if [ -n "${OUT:-}" ]; then cp "$REPORT" "$LOG" "$OUT"/ 2>/dev/null || true; fi
exit "$TEST_RC"
