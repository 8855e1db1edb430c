#!/usr/bin/env bash
# The GPU check: one command for a lent GPU machine with no network (torch,
# timm, nvcc and ninja installed).  Budget: under 8 minutes on an H200, build
# included.  In order:
#   1. build in place for this GPU's arch only (TORCH_CUDA_ARCH_LIST, default 9.0);
#   2. tests/test_cuda.py and the "cuda" executor of the op tests (tests/test_<op>.py)
#      (every kernel case, every dtype, both backward paths);
#   3. the op benchmark in bf16 at the Swin-T stage shapes, B = 128: fused vs
#      the eager composite (timm's WindowAttention math) and vs SDPA with the
#      bias + mask materialised, forward and forward+backward, GB/s against a
#      device copy measured in the same run;
#   4. the Swin-T model table (bf16 inference and training step, B = 128,
#      vs timm eager and timm with SDPA, same weights), then the bf16 training
#      step at B = 128 under torch.compile (timm-compiled vs
#      swin_ext-fused-compiled, with the eager two again in the same run;
#      compile time reported apart, never timed);
#   5. the UperNet-Swin-T segmentation row (bf16 inference at 512 px, B = 8, vs transformers' UperNet;
#      run between the eager and the compiled steps of 4);
#   6. the SASS table of the built kernels (registers, HMMA, 128-bit accesses, spills).
# Writes benchmarks/results/gpu_check_<date>.md (and copies it to $OUT when set).
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 TORCH_CUDA_ARCH_LIST=9.0 by default
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export SWIN_EXT_FORCE_CUDA=1
STAMP=$(date -u +%Y-%m-%d-%H%M)
RES=benchmarks/results
mkdir -p "$RES"
REPORT=$RES/gpu_check_$STAMP.md
LOG=$RES/gpu_check_$STAMP.log
exec > >(tee "$LOG") 2>&1
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }

echo "# swin_ext GPU check, $STAMP"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build ($TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
if ! $PY setup.py -q build_ext --inplace; then
  echo "BUILD FAILED"; exit 1
fi
echo "build done at $(elapsed)"
$PY -c "import swin_ext, json; print(json.dumps(swin_ext.build_info()))"

echo "== CUDA tests"
SWIN_TEST_EXECUTORS=cuda timeout 240 $PY -m pytest -q -p no:cacheprovider -x tests/test_cuda.py tests/test_window_attention.py tests/test_patch_merging.py tests/test_add_layernorm.py tests/test_bias_gelu.py 2>&1 | tail -40
TEST_RC=${PIPESTATUS[0]}
echo "tests done at $(elapsed) (exit status $TEST_RC)"

{
  echo "# swin_ext GPU check ($STAMP)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null
  $PY -c "import torch, swin_ext, json; print('torch', torch.__version__); print(json.dumps(swin_ext.build_info()))"
  echo "tests/test_cuda.py + the op tests (cuda executor) exit status: $TEST_RC"
  echo '```'
  echo
  echo "## Op level, bf16, Swin-T stage shapes, B = 128 (benchmarks/bench_ops.py)"
  echo
  timeout 150 $PY benchmarks/bench_ops.py --device cuda --dtype bfloat16 --batch 128 --models swin_t \
      --baselines eager sdpa --repeats 20 || echo "(bench_ops.py failed or timed out)"
  echo
  echo "## Model level, Swin-T (benchmarks/bench_model.py)"
  echo
  timeout 150 $PY benchmarks/bench_model.py --device cuda --model swin_t --dtypes bfloat16 \
      --impls swin_ext-fused timm timm-sdpa --infer-batches 128 --train-batches 128 \
      --warmup 3 --repeats 8 --out-dir "$RES" 2>&1 || echo "(bench_model.py failed or timed out)"
  echo
  echo "## Segmentation, UperNet-Swin-T 512 px inference, B = 8 (benchmarks/bench_model.py)"
  echo
  timeout 60 $PY benchmarks/bench_model.py --device cuda --model upernet_swin_t --dtypes bfloat16 \
      --impls swin_ext-fused transformers --infer-batches 8 --warmup 2 --repeats 6 --out-dir "$RES" 2>&1 \
    || echo "(segmentation bench_model.py failed or timed out)"
  echo
  echo "## Model level under torch.compile, Swin-T bf16 training step, B = 128"
  echo
  # Inside the 8-minute budget: what is left of 420 s after the steps before, less the SASS step's 60 s.
  LEFT=$(( 420 - $(date +%s) + T0 - 60 ))
  if [ "$LEFT" -ge 90 ]; then
    timeout "$(( LEFT < 180 ? LEFT : 180 ))" $PY benchmarks/bench_model.py --device cuda --model swin_t \
        --dtypes bfloat16 --modes train --impls swin_ext-fused swin_ext-fused-compiled timm timm-compiled \
        --train-batches 128 --warmup 2 --repeats 8 --out-dir "$RES" 2>&1 \
      || echo "(compiled bench_model.py failed or timed out)"
  else
    echo "(skipped: $LEFT s left of the budget, under the 90 s two compiles need)"
  fi
  echo
  echo "## SASS of the built kernels (benchmarks/sass_report.py)"
  echo
  timeout 60 $PY benchmarks/sass_report.py 2>&1 || echo "(sass_report.py failed: no cuobjdump?)"
} > "$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
cat "$REPORT"
echo "gpu_check done at $(elapsed)"
if [ -n "${OUT:-}" ]; then cp "$REPORT" "$LOG" "$OUT"/ 2>/dev/null || true; fi
exit "$TEST_RC"
