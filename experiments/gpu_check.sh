#!/usr/bin/env bash
# The GPU session's checks as one script: tier-4 kernel numerics and the GPU benchmarks.
#
#   bash experiments/gpu_check.sh OUT_DIR [BUDGET_SECONDS]
#
# Runs under the machine's own python3 (its jax/jaxlib with CUDA) and its flax: on 2026-12-04 the
# H200 image had jax 0.11.2, and the pinned flax 0.12.8 does not import there (flax.nnx needs
# jax.experimental.hijax.HiPrimitive), so carry no flax wheel. A folder .whl/ of other wheels,
# if present, is installed first into /tmp/site. Each step has its own
# timeout and is skipped when the budget left is below it, so a slow compile costs one step, not
# the run. Writes OUT_DIR/{env.txt,tier4.log,*.log} and the benchmarks' JSON + markdown under
# OUT_DIR/bench/ (copied to results/bench/gpu/ by hand after review).
set -u
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [BUDGET_SECONDS]}
BUDGET=${2:-540}
START=$(date +%s)
mkdir -p "$OUT_DIR/bench"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

step() {  # step NAME TIMEOUT_SECONDS command...
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if (( left < limit / 2 )); then echo "== $name: skipped ($left s left)"; return; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit $limit s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - t0 )) s"
  tail -n 25 "$OUT_DIR/$name.log"
}

{ nvidia-smi; $PY -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'jaxlib', \
jaxlib.__version__, 'flax', flax.__version__); print(jax.devices())"; uptime; } \
  > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

tier4() {  # tier4 NAME LIMIT -k EXPR: the hardware tests, 80 s per test at most
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" env SEEDJAX_TEST_PLATFORM=cuda $PY -m pytest \
    tests/kernels/test_hardware.py -m hardware -o addopts= -q -p no:cacheprovider -rfs \
    --tb=short --durations=0 --timeout=80 "$@"
}
# limits from the H200 run of 2026-12-04 (compiles dominate: 5-15 s per benchmark arm, up to
# 50 s per tier-4 test): tier4_fast took 210 s, memory ~150 s, moe 84 s, expert_race 32 s
tier4 tier4_fast 240 -k "not test_pk_"
step memory 170 $PY -m experiments.bench memory --out "$OUT_DIR/bench" \
  --mem_batches 1,16,64,256 --mem_plot
step moe 100 $PY -m experiments.bench moe --out "$OUT_DIR/bench"
step expert_race 50 $PY -m kernels_pallas.expert_race.bench --out "$OUT_DIR/bench" --reps 10
# writes kernels.json after every spec, so a stop at the limit keeps the specs timed so far
step kernels 150 $PY -m kernels_pallas.gpu_bench --out "$OUT_DIR/bench" --reps 20
tier4 tier4_pk 200 -k "test_pk_"
echo "== done in $(( $(date +%s) - START )) s"
