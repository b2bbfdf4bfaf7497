#!/usr/bin/env bash
# One prepared check of the release-scale paths on one GPU, at most 8 minutes (GPU_CHECK_SECONDS):
# tokenizer, LAM and dynamics each trained 2N steps of the `base` preset uninterrupted and N + N across a
# process restart (resume step, losses, weights compared), tokens/s and model FLOPs utilisation against
# the GPU's dense bf16 peak, and play frames/s at batch 1 and 16. Without CUDA it falls back to the tiny
# preset and a few steps on the CPU (a minute or two), so that it runs anywhere.
#
#   bash benchmarks/gpu_check.sh [--steps N] [--models tokenizer lam dynamics] [--set KEY=VALUE ...]
#
# Figures: $OUT/gpu_check.json (OUT defaults to runs/gpu_check); also printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT_DIR=${OUT:-runs/gpu_check}
LIMIT=${GPU_CHECK_SECONDS:-480}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' >&2
# the whole check, training processes included, is stopped at the limit; what finished is in the JSON
status=0
timeout --signal=TERM --kill-after=20 "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --budget "$LIMIT" "$@" || status=$?
if [ "$status" -eq 124 ]; then
  echo "gpu_check: stopped at the ${LIMIT}s limit; figures so far are in $OUT_DIR/gpu_check.json" >&2
fi
exit "$status"
