#!/usr/bin/env bash
# Runs `ejkernel bench` in phases that each fit a 10-minute command (start no new measurement after
# BUDGET seconds; the JSON is rewritten after every measurement, so a cut-short run still leaves data).
#
#   benchmarks/run_bench.sh PHASE [extra arguments of the phase's `ejkernel bench` command...]
#   PHASE: small | fa3-fwd | fa3-bwd | decode | gqa | headline | all   (`ejkernel bench`)
#          parity                                                      (`ejkernel bench parity --platform triton`)
#          sweep | sweep-long | sweep-short                            (`ejkernel bench sweep`)
#          cpu                                                         (the committed CPU table)
#
# Environment: PYTHON (default python3), OUT (output folder, default benchmarks/results), TAG (file-name tag,
# default gpu), BUDGET (seconds per phase, default 480). Run from the repository root.
# Runs land in $OUT, which git ignores; a table a doc publishes is curated by copying it to
# benchmarks/results/<device>/<what it holds>.* (docs/performance.rst, "Results"). The cpu phase writes its
# curated table, benchmarks/results/cpu/small.*, directly.
# Plots need matplotlib; where it is missing, redraw them later with
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

# `ejkernel bench SUBCOMMAND ...`: the sub-command comes first.
sub() {
  local command="$1"
  shift
  "$PYTHON" -m ejkernel.cli bench "$command" --out "$OUT" "$@"
}

case "$PHASE" in
  cpu)  # the committed CPU results (2-core machine: about 30 s)
    "$PYTHON" -m ejkernel.cli bench --budget-s "$BUDGET" --grid small --out "$OUT/cpu" --name small "$@" ;;
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
  headline)  # the Triton kernel's two main shapes beside jax.nn's cuDNN and XLA paths
    bench --shape 2,8192,8192,16,16,128 --shape 4,4096,4096,16,16,64 --impl ejkernel:triton --impl jax.nn \
      --no-dispatch --name "bench_${TAG}_headline" "$@" ;;
  parity)  # every capability class, bf16/fp32 (fp16 for three); float32 compiles are slow: split with --dtype
    sub parity --platform triton --name "parity_${TAG}" "$@" ;;
  sweep)
    sub sweep --budget-s "$BUDGET" --name "sweep_${TAG}" "$@" ;;
  sweep-long)  # the shapes the long-sequence rows of the block table come from
    sub sweep --budget-s "$BUDGET" --min-seq 2048 --name "sweep_${TAG}_long" "$@" ;;
  sweep-short)  # S512 and S1024, causal and not: the short-sequence overrides
    sub sweep --budget-s "$BUDGET" --max-seq 1024 --causal both --name "sweep_${TAG}_short" "$@" ;;
  all)
    for phase in small fa3-fwd fa3-bwd decode gqa; do "$0" "$phase" "$@"; done ;;
  *)
    echo "unknown phase $PHASE (small | fa3-fwd | fa3-bwd | decode | gqa | headline | parity | sweep |" \
      "sweep-long | sweep-short | cpu | all)" >&2
    exit 2 ;;
esac
