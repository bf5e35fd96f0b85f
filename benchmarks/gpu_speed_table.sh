#!/usr/bin/env bash
# One device call: time the speed table's shapes (the FA3 grid at S2048 and S8192 for D64, D128, D256; bf16,
# forward and forward+backward, causal and not) for $IMPLS beside ejkernel:auto, write the speed table from
# that run and the earlier results in $PRIOR (space-separated JSON files), then time ejkernel:auto again
# under the new table. Run from the repository root: OUT=<folder> benchmarks/gpu_speed_table.sh
#
# Environment: IMPLS (default "ejkernel:mosaic_gpu ejkernel:cudnn"), PRIOR (default the committed H200 cells),
# BUDGET_S (seconds for the first run, default 300), AUTO_BUDGET_S (the second, default 120).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_speed_table}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-.}" XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
shapes=()
for s in 8,2048,2048,32,32,64 2,8192,8192,32,32,64 8,2048,2048,16,16,128 2,8192,8192,16,16,128 \
         8,2048,2048,8,8,256 2,8192,8192,8,8,256; do
  shapes+=(--shape "$s")
done
common=(--mode both --causal both --warmup 1 --rounds 3 --target-round-ms 40 --no-plots --no-dispatch --quiet)
impls=(--impl ejkernel:auto)
for i in ${IMPLS:-ejkernel:mosaic_gpu ejkernel:cudnn}; do impls+=(--impl "$i"); done
status=0
python3 -m ejkernel.cli bench "${shapes[@]}" "${impls[@]}" "${common[@]}" --budget-s "${BUDGET_S:-300}" \
  --out "$OUT" --name speed_cells 2>&1 | tail -n 60 || status=1
python3 -m ejkernel.cli bench table ${PRIOR:-benchmarks/results/h200/fa3_s2k_s8k.json} "$OUT/speed_cells.json" \
  --out ejkernel/ops/attention/speed_tables/nvidia_h200.json || status=1
cp ejkernel/ops/attention/speed_tables/nvidia_h200.json "$OUT/nvidia_h200.json"
python3 -m ejkernel.cli bench "${shapes[@]}" --impl ejkernel:auto "${common[@]}" --budget-s "${AUTO_BUDGET_S:-120}" \
  --out "$OUT" --name speed_cells_auto 2>&1 | tail -n 40 || status=1
exit $status
