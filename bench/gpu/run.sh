#!/usr/bin/env bash
# On the GPU machine (through the device tool), in the repository root:
#   bench/gpu/run.sh stage N      copy the carried part .gpu/cN to /tmp/gpu (one call per part)
#   bench/gpu/run.sh setup        join the parts, unpack wheels and binaries, make the models
#   bench/gpu/run.sh speculative  decode with and without speculation ($OUT/speculative.jsonl)
#   bench/gpu/run.sh compare NAME [LENGTHS]   engine vs mlx-lm on one model ($OUT/compare-NAME.json)
#   bench/gpu/run.sh ttft NAME    cold-process time to first token through the CLI ($OUT/ttft-NAME.txt)
#   bench/gpu/run.sh serve NAME   aggregate tok/s at 1-16 concurrent streams, `mlx-engine serve` vs
#                                 `mlx_lm.server --decode-concurrency 16` ($OUT/serve-NAME.jsonl)
#   bench/gpu/run.sh engine ARGS...  the engine binary with ARGS (models are under /tmp/gpu/models)
#   bench/gpu/run.sh python ARGS...  python3 with the unpacked MLX and mlx-lm (bench/gpu/first_call.py)
#   bench/gpu/run.sh kernels NAME...  primitives of one decode step, itemised ($OUT/kernels.txt)
#   bench/gpu/run.sh options NAME [LEN]   engine decode plain, with 5 top logprobs and with a
#                                 repetition penalty, alternating ($OUT/options-NAME.jsonl)
#   bench/gpu/run.sh ab NAME DIR [LEN]   engine decode with this build's plugins and with those in
#                                 DIR (another build's), alternating ($OUT/ab-NAME.jsonl)
#   bench/gpu/run.sh attention NAME   the engine with its choice of attention and with MLX's
#                                 fused kernel always: cold TTFT, warm speed, a cold prompt and a
#                                 follow-up turn, prompt-lookup speculation ($OUT/attention-NAME.jsonl)
#   bench/gpu/run.sh profile NAME [LEN]   every kernel of a warm prefill + decode, both sides,
#                                 under Nsight Compute ($OUT/ncu-{engine,mlx-lm}-NAME.csv; read
#                                 them with bench/gpu/kernels.py)
# /tmp survives only while the machine stays warm (30 s between calls).
set -euo pipefail
S=/tmp/gpu
OUT=${OUT:-$S/out}
mkdir -p "$S" "$OUT"

env_setup() {
    export PYTHONPATH=$S/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    local nv
    nv=$(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(":".join(sorted(os.path.join(p, d, "lib") for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, "lib")))))')
    export LD_LIBRARY_PATH=$S/site/mlx/lib:$nv:$S/pkg/lib
    ENGINE=$S/pkg/bin/mlx-engine
    # The engine looks for plugins beside itself only in its build folder layout.
    export MLX_ENGINE_PLUGIN_PATH=$S/pkg/bin
    M=$S/models
}

case "${1:-}" in
stage)
    cp .gpu/c"$2"/* "$S"/
    ls -la "$S"
    ;;
setup)
    ls "$S"/payload.* >/dev/null
    rm -rf "$S/pkg" "$S/site" && mkdir -p "$S/pkg" "$S/site"
    cat "$S"/payload.* | gunzip | tar -C "$S/pkg" -xf -
    for w in "$S"/pkg/whl/*.whl; do python3 -m zipfile -e "$w" "$S/site"; done
    env_setup
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/machine.txt"
    python3 -c 'import mlx.core as mx, mlx_lm, transformers; print("mlx", mx.__version__, mx.default_device(), "mlx-lm", mlx_lm.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/machine.txt"
    "$ENGINE" plugins | tee -a "$OUT/machine.txt"
    mkdir -p "$M"
    real=()
    if [ -d "$S/pkg/smollm2-bf16" ]; then
        cp -r "$S/pkg/smollm2-bf16" "$M/smollm2-bf16"
        real=(--quantize "$M/smollm2-bf16:$M/smollm2-4bit")
    fi
    # ONLY=name,name makes just those (the 8B ones take minutes).
    python3 bench/gpu/make_models.py --out "$M" --tokenizer "$S/pkg/tokenizer" "${real[@]}" ${ONLY:+--only "$ONLY"}
    df -h /tmp | tail -1
    ;;
speculative)
    env_setup
    f=$OUT/speculative.jsonl
    : > "$f"
    b() { "$ENGINE" bench --device gpu --only speculative --json --speculative-tokens 128 --speculative-repeats 3 "$@" | tee -a "$f"; }
    b -m "$M/smollm2-bf16" --draft-model "$M/smollm2-4bit"
    b -m "$M/smollm2-bf16" --draft prompt-lookup
    b -m "$M/smollm2-bf16" --draft prompt-lookup --num-draft-tokens 6 --lookup-ngram-min 2 --lookup-ngram-max 3
    b -m "$M/llama-8b-bf16" --draft-model "$M/llama-1b-bf16"
    b -m "$M/llama-8b-bf16" --draft prompt-lookup
    ;;
compare)
    env_setup
    python3 bench/compare.py --engine "$ENGINE" --python python3 --device gpu --rounds "${ROUNDS:-1}" --runs "${RUNS:-5}" \
        --model "$M/$2" --label "$2" --prompt-tokens "${3:-512,2048}" --gen-tokens "${GEN:-128}" --json "$OUT/compare-$2.json" \
        | tee "$OUT/compare-$2.md"
    ;;
ttft)
    # Fresh processes, each generating one token from a ~560-token prompt (the bench passage x4):
    # the first also compiles the kernels it meets, the later ones find MLX's kernel cache.
    env_setup
    f=$OUT/ttft-$2.txt
    : > "$f"
    for i in 1 2 3 4; do cat engine/src/cli/bench_passage.txt; done > "$S/passage.txt"  # ~560 tokens
    for i in 1 2 3; do
        t0=$(date +%s.%N)
        "$ENGINE" generate --device gpu -m "$M/$2" --prompt - --max-tokens 1 --ignore-eos --output jsonl < "$S/passage.txt" \
            | tail -1 | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print("prompt_tokens", s["prompt_tokens"], "prompt_seconds", round(s["prompt_seconds"], 4))' | tee -a "$f"
        echo "process $i wall $(python3 -c "import time; print(round(time.time() - $t0, 3))") s" | tee -a "$f"
    done
    ;;
serve)
    # Each server in turn on one port, the same client (scripts/server/bench.py, one warm-up pass
    # over the levels first), greedy 64-token streamed chats.
    env_setup
    model=$2 f=$OUT/serve-$2.jsonl
    : > "$f"
    port=8391
    up() {
        for _ in $(seq 600); do
            python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/v1/models', timeout=1)" 2>/dev/null && return 0
            sleep 0.2
        done
        return 1
    }
    side() {
        local name=$1 pid
        shift
        "$@" > "$OUT/serve-$model-$name.log" 2>&1 &
        pid=$!
        up
        python3 scripts/server/bench.py --base-url "http://127.0.0.1:$port" --model "$M/$model" --levels "${LEVELS:-1,2,4,8,16}" \
            --rounds "${ROUNDS:-2}" --max-tokens 64 --warmup | sed "s/^{/{\"server\": \"$name\", /" | tee -a "$f"
        kill "$pid"
        wait "$pid" || true
    }
    side engine "$ENGINE" serve --device gpu --model "$M/$2" --port "$port" --max-concurrency 16 --queue 64
    side mlx-lm python3 -m mlx_lm.server --model "$M/$2" --port "$port" --decode-concurrency 16 --prompt-concurrency 16
    ;;
engine)
    # The engine with the run's environment: bench/gpu/run.sh engine bench --device gpu -m ...
    env_setup
    shift
    "$ENGINE" "$@"
    ;;
python)
    env_setup
    shift
    python3 "$@"
    ;;
kernels)
    env_setup
    shift
    for m in "$@"; do "$S/pkg/bin/kernels_per_step" "$M/$m" gpu | tee -a "$OUT/kernels.txt"; done
    ;;
options)
    # What top logprobs and a logits processor cost the pipelined decode loop, in one process
    # per run, the variants alternating.
    env_setup
    f=$OUT/options-$2.jsonl
    : > "$f"
    for round in $(seq "${ROUNDS:-2}"); do
        for opts in "" "--top-logprobs 5" "--repetition-penalty 1.1"; do
            # shellcheck disable=SC2086
            "$ENGINE" bench --device gpu -m "$M/$2" --only speed --prompt-tokens "${3:-512}" --gen-tokens "${GEN:-256}" \
                --runs "${RUNS:-3}" --json $opts | tee -a "$f"
        done
    done
    ;;
ab)
    # A/B of two builds of a plugin on one model: `--plugins DIR` is searched first, so DIR's
    # library replaces this build's. Each record is tagged "build": "this" or "other".
    env_setup
    f=$OUT/ab-$2.jsonl
    : > "$f"
    for round in $(seq "${ROUNDS:-2}"); do
        for side in this other; do
            extra=()
            [ "$side" = other ] && extra=(--plugins "$3")
            "$ENGINE" bench --device gpu -m "$M/$2" --only speed --prompt-tokens "${4:-512}" --gen-tokens "${GEN:-256}" \
                --runs "${RUNS:-3}" --json "${extra[@]}" | sed "s/^{/{\"build\": \"$side\", /" | tee -a "$f"
        done
    done
    ;;
attention)
    # `cache::attention` runs small multi-query attention as plain ops on CUDA, where cuDNN would
    # build a graph per new shape; MLX_ENGINE_COMPOSED_ATTENTION_MAX_SCORES=0 turns that off.
    # Each record is tagged "attention": "choice" or "fused".
    env_setup
    f=$OUT/attention-$2.jsonl
    : > "$f"
    for side in choice fused; do
        (
            [ "$side" = fused ] && export MLX_ENGINE_COMPOSED_ATTENTION_MAX_SCORES=0
            tag() { sed "s/^{/{\"attention\": \"$side\", /" | tee -a "$f"; }
            OUT=$OUT/ttft-$side "$0" ttft "$2"
            "$ENGINE" bench --device gpu -m "$M/$2" --only speed,cache --prompt-tokens 512,2048 --gen-tokens "${GEN:-64}" \
                --runs "${RUNS:-3}" --cache-prompt-tokens 512 --json | tag
            "$ENGINE" bench --device gpu -m "$M/$2" --only speculative --draft prompt-lookup --speculative-tokens 128 \
                --speculative-repeats 3 --json | tag
        )
    done
    ;;
profile)
    # One untimed and one timed run of LEN prompt tokens + 4 decoded, each side in its own process,
    # every kernel's duration read by ncu (one metric: one pass, no replay). The clocks are left
    # alone (the machine's notes say so).
    env_setup
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
    len=${3:-512}
    ncu_run() { "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base --log-file "$1" "${@:2}"; }
    ncu_run "$OUT/ncu-engine-$2.csv" "$ENGINE" bench --device gpu -m "$M/$2" --only speed --prompt-tokens "$len" --gen-tokens 4 --runs 1 --json
    ncu_run "$OUT/ncu-mlx-lm-$2.csv" python3 -c "$(python3 bench/compare.py --print-mlx-lm-side)" "$M/$2" engine/src/cli/bench_passage.txt "$len" 4 1 gpu none
    ls -la "$OUT"
    ;;
*)
    sed -n "2,/^# \/tmp/p" "$0"
    exit 2
    ;;
esac
