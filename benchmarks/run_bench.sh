#!/usr/bin/env bash
# Runs `ejkernel bench` in phases that each fit a 10-minute command (start no new measurement after
# BUDGET seconds; the JSON is rewritten after every measurement, so a cut-short run still leaves data).
#
#   benchmarks/run_bench.sh PHASE [extra `ejkernel bench` arguments...]
#   PHASE: small | fa3-fwd | fa3-bwd | decode | gqa | cpu | all
#
# Environment: PYTHON (default python3), OUT (output folder, default benchmarks/results),
# TAG (file-name tag, default gpu), BUDGET (seconds per phase, default 480).
# Run from the repository root. Plots need matplotlib; where it is missing, redraw them later with
#   ejkernel bench render "$OUT/bench_${TAG}_fa3_fwd.json"
set -euo pipefail

PHASE="${1:-small}"
shift || true
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results}"
TAG="${TAG:-gpu}"
BUDGET="${BUDGET:-480}"

bench() {
  "$PYTHON" -m ejkernel.cli bench --out "$OUT" --budget-s "$BUDGET" "$@"
}

case "$PHASE" in
  cpu)  # the committed CPU results (2-core machine: about 30 s)
    bench --grid small --name bench_cpu_small "$@" ;;
  small)
    bench --grid small --name "bench_${TAG}_small" "$@" ;;
  fa3-fwd)  # the dense XLA reference (ejkernel:xla*) is skipped here; jax.nn:xla stands for XLA
    bench --grid fa3 --mode fwd --skip-impl ejkernel:xla --no-dispatch --name "bench_${TAG}_fa3_fwd" "$@" ;;
  fa3-bwd)
    bench --grid fa3 --mode fwd+bwd --skip-impl ejkernel:xla --no-dispatch --name "bench_${TAG}_fa3_fwdbwd" "$@" ;;
  decode)
    bench --grid decode --no-dispatch --name "bench_${TAG}_decode" "$@" ;;
  gqa)
    bench --grid gqa --skip-impl ejkernel:xla: --no-dispatch --name "bench_${TAG}_gqa" "$@" ;;
  all)
    for phase in small fa3-fwd fa3-bwd decode gqa; do "$0" "$phase" "$@"; done ;;
  *)
    echo "unknown phase $PHASE (small | fa3-fwd | fa3-bwd | decode | gqa | cpu | all)" >&2; exit 2 ;;
esac
