#!/usr/bin/env bash
# One device call: the cuDNN semantics probe ($PROBE_CASES), the packing benchmark ($PACKING non-empty), the Mosaic-GPU
# probe ($MOSAIC: its arguments, for instance --native), the per-kernel profile ($KERNEL_PROFILE: its arguments; several
# runs separated by ';'), the GPU profile
# (-k $PYTEST_K), the parity cases named in $PARITY_CASES and the README's main job.
# Run from the repository root: OUT=<folder> benchmarks/gpu_round.sh
set -uo pipefail
OUT="${OUT:-/tmp/gpu_round}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-.}" XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
status=0
if [ -n "${PROBE-1}" ]; then
  timeout "${PROBE_S:-150}" python3 benchmarks/cudnn_semantics.py ${PROBE_CASES:-} 2>&1 | tee "$OUT/cudnn_semantics.txt" | grep -v "^\s*$" || status=1
fi
if [ -n "${PACKING-}" ]; then
  timeout "${PACKING_S:-120}" python3 -m ejkernel.cli bench packing --platform "${PACKING_PLATFORM:-triton}" --out "$OUT" --name packing 2>&1 | grep -v "^\s*$" | tail -n 20 || status=1
fi
if [ -n "${KERNEL_PROFILE-}" ]; then
  IFS=';' read -ra profile_runs <<< "$KERNEL_PROFILE"
  for run_args in "${profile_runs[@]}"; do
    timeout "${KERNEL_PROFILE_S:-150}" python3 benchmarks/kernel_profile.py $run_args 2>&1 | tee -a "$OUT/kernel_profile.txt" | grep -v "^\s*$" | tail -n 40 || status=1
  done
fi
if [ -n "${MOSAIC-}" ]; then
  timeout "${MOSAIC_S:-240}" python3 benchmarks/mosaic_gpu_probe.py $MOSAIC 2>&1 | tee "$OUT/mosaic_probe.txt" | grep -v "^\s*$" | tail -n 60 || status=1
fi
if [ -n "${PROFILE-1}" ]; then
  timeout "${PROFILE_S:-420}" python3 -m pytest -m gpu -q -p no:cacheprovider -k "${PYTEST_K:-gpu}" tests/test_gpu.py 2>&1 | tee "$OUT/gpu_profile.txt" | tail -n 30 || status=1
fi
args=()
for c in ${PARITY_CASES:-}; do args+=(--case "$c"); done
if [ ${#args[@]} -gt 0 ]; then
  timeout "${PARITY_S:-200}" python3 -m ejkernel.cli bench parity --platform triton "${args[@]}" --out "$OUT" --name parity 2>&1 | tee "$OUT/parity_log.txt" | grep -v "^\s*$" | tail -n 40 || status=1
fi
if [ -n "${MAIN-1}" ]; then
  timeout "${MAIN_S:-150}" python3 -m ejkernel.cli 2>&1 | tee "$OUT/main_job_log.txt" | tail -n 60 || status=1
fi
exit $status
