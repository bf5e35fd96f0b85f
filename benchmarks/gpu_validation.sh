#!/usr/bin/env bash
# What a change to GPU code must pass on the GPU before it is called done, in one device call (< 10 min):
#   1. the parity of every capability class through platform="triton" (`ejkernel bench parity`);
#   2. the README's main job (`ejkernel`: info, then check of every implementation that runs here);
#   3. the headline shape beside cuDNN (`ejkernel bench`), to see that speed did not move.
# Run from the repository root on the GPU machine: OUT=<folder> benchmarks/gpu_validation.sh
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-.}"
mkdir -p "$OUT"
status=0
timeout 330 "$PYTHON" -m ejkernel.cli bench parity --platform triton --out "$OUT" --name parity 2>&1 \
  | tee "$OUT/parity_log.txt" | grep -v "^\s*$" | tail -n 60 || status=1
timeout 150 "$PYTHON" -m ejkernel.cli 2>&1 | tee "$OUT/main_job_log.txt" || status=1
timeout 110 "$PYTHON" -m ejkernel.cli bench --shape 2,8192,8192,16,16,128 --impl ejkernel:triton --impl jax.nn:cudnn \
  --no-dispatch --no-plots --quiet --out "$OUT" --name headline 2>&1 | tee "$OUT/headline_log.txt" | tail -n 25 || status=1
exit $status
