#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, trains the compact
# Swin (swin_digits, fused kernels) on scikit-learn's handwritten digits to
# >= 95% test accuracy (GPU if present, else the CPU), then prints the
# fused-vs-reference speed table of Swin-T.
#
# Extra arguments go to the training command (python -m swin_ext.train),
# e.g. `bash scripts/run_demo.sh --epochs 40`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${SWIN_EXT_VENV:-$(pwd)/.venv}
PY="$VENV/bin/python"

echo "== training swin_digits on the digits (swin_ext.train)"
start=$(date +%s)
# One thread: this small model gains ~1.3x from a second thread on an idle
# 2-core machine, but OpenMP's spin-waiting makes a 2-thread run 5-10x
# slower when anything else is using the cores; one thread is the robust choice.
"$PY" -m swin_ext.train --data digits --model swin_digits --backend fused --epochs 40 --threads 1 \
    --output-dir runs/digits-swin_digits --min-acc 0.95 "$@"
echo "== training finished in $(( $(date +%s) - start )) s; curves: runs/digits-swin_digits/curves.png"

echo "== fused vs reference on Swin-T (swin_ext.demo)"
"$PY" -m swin_ext.demo
echo "== done.  The environment's Python is $PY (a plain \`python\` does not have torch), e.g.:"
echo "   $PY -m swin_ext.train --help"
