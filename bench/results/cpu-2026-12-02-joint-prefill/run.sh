#!/usr/bin/env bash
# old vs new engine server on the CPU, SmolLM2 f32, same client
set -u
M=models/smollm2-135m-instruct/f32
for side in ${ORDER:-old new}; do
  if [ $side = old ]; then E=/tmp/demo.Doee/p/target/release/mlx-engine; else E=/work/main/target/release/mlx-engine; fi
  $E -q serve --model $M --port 8392 --max-concurrency 16 > /tmp/serve-$side.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -s localhost:8392/health >/dev/null && break; sleep 0.3; done
  python3 scripts/server/bench.py --base-url http://127.0.0.1:8392 --model $M --levels 4,16 --rounds 1 --max-tokens 64 --warmup | sed "s/^{/{\"side\": \"$side\", /"
  curl -s localhost:8392/metrics | grep -E "^mlx_engine_joint_prefill|^mlx_engine_batched_steps_total"
  kill $pid; wait $pid
done
