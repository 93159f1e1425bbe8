#!/bin/bash
# One rank vs 2 ranks split by tensor and by pipeline, on the CPU: the table of
# docs/distributed.md ("Pipeline vs tensor vs one rank"). Usage:
#   scripts/distributed-splits.sh [MODEL_DIR] [ROUNDS]
# Prints each run's stats line (prefill and decode tok/s, time to first token, peak memory)
# and the load average, since on a shared machine it moves the numbers as much as the split.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-models/smollm2-135m-instruct/f32}
ROUNDS=${2:-2}
E=${MLX_ENGINE:-target/debug/mlx-engine}
P=$(python3 -c "print(' '.join(['the quick brown fox jumps over the lazy dog'] * 56))")
ARGS=(-m "$M" -p "$P" -n 64 --temp 0 --ignore-eos)
stats() { "$@" 2>&1 >/dev/null | grep 'tok/s'; }
for round in $(seq "$ROUNDS"); do
  echo "== round $round, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "-- 1 rank, OPENBLAS_NUM_THREADS=1"; OPENBLAS_NUM_THREADS=1 stats "$E" generate "${ARGS[@]}"
  echo "-- 1 rank, default threads"; stats "$E" generate "${ARGS[@]}"
  echo "-- 2 ranks, tensor"; stats "$E" launch -n 2 -p 35100 -- generate "${ARGS[@]}"
  echo "-- 2 ranks, pipeline"; stats "$E" launch -n 2 -p 35200 -- generate --split pipeline "${ARGS[@]}"
done
echo "== end, load $(cut -d' ' -f1-3 /proc/loadavg)"
