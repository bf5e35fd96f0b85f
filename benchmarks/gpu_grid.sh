#!/usr/bin/env bash
# One device call: the XLA reference beside jax.nn's XLA path ($XLA_REF: arguments of xla_reference_gpu.py;
# empty skips it), then the FA3 grid through `ejkernel bench` for $IMPLS in $MODES (each mode its own
# result, $OUT/fa3_<mode>.json), side by side in one process per mode, with its auto check.
# Run from the repository root: OUT=<folder> benchmarks/gpu_grid.sh
#
# Carried wheels: where .whl/ holds them (tokamax and what it needs beyond the device image), they are
# installed to /tmp/site first, so that tokamax stands beside the rest.
#
# Environment: XLA_REF (default "--cells grid"), XLA_REF_S (its timeout, default 300), MODES (default
# "fwd fwd+bwd"; empty: none), IMPLS (default: auto, Triton, Mosaic-GPU, jax.nn's XLA and cuDNN, tokamax), BUDGET_S
# (seconds per mode, default 240), CAUSAL (default both), EXTRA (more bench arguments).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_grid}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-.}" XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  python3 -c "import tokamax; print('tokamax', tokamax.__version__)" 2>&1 | tail -n 1
fi
status=0
if [ -n "${XLA_REF---cells grid}" ]; then
  timeout "${XLA_REF_S:-300}" python3 benchmarks/xla_reference_gpu.py ${XLA_REF---cells grid} 2>&1 \
    | tee "$OUT/xla_reference.txt" | grep -v "^\s*$" | tail -n 80 || status=1
fi
impls=()
for i in ${IMPLS:-ejkernel:auto ejkernel:triton ejkernel:mosaic_gpu jax.nn tokamax}; do impls+=(--impl "$i"); done
for mode in ${MODES-fwd fwd+bwd}; do
  name="fa3_${mode/+/_}"
  timeout "$(( ${BUDGET_S:-240} + 120 ))" python3 -m ejkernel.cli bench --grid fa3 --mode "$mode" --causal "${CAUSAL:-both}" \
    "${impls[@]}" --warmup 1 --rounds 3 --target-round-ms 40 --no-plots --no-dispatch --quiet \
    --budget-s "${BUDGET_S:-240}" --out "$OUT" --name "$name" ${EXTRA:-} > "$OUT/$name.log" 2>&1 || status=1
  grep -A40 "against the fastest" "$OUT/$name.log" | grep -v "^\s*$" | head -n 40
  tail -n 2 "$OUT/$name.log"
done
exit $status
