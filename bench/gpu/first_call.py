"""What a new shape costs the first time MLX's CUDA backend meets it, in one process.

A cold `mlx-engine generate` process pays, on top of the prompt itself, whatever set-up MLX does
per shape: cuDNN builds an attention graph for each (query length, key length) pair and
cuBLASLt picks an algorithm for each matrix shape. This times each op twice at a few prompt
lengths, first call and second call, after a warm-up at another length, so the difference is
the per-shape set-up alone. Llama-3.2-1B's shapes, bf16.

    python3 bench/gpu/first_call.py [--lengths 512,560,140]
"""

import argparse
import time

import mlx.core as mx


def timed(fn):
    t0 = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="512,560,140")
    args = ap.parse_args()
    heads, kv_heads, dim, hidden, inter = 32, 8, 64, 2048, 8192
    dt = mx.bfloat16
    w_qkv = mx.random.normal((hidden + 2 * kv_heads * dim, hidden)).astype(dt)
    w_up = mx.random.normal((2 * inter, hidden)).astype(dt)

    def ops(length):
        x = mx.random.normal((1, length, hidden)).astype(dt)
        q = mx.random.normal((1, heads, length, dim)).astype(dt)
        k = mx.random.normal((1, kv_heads, length, dim)).astype(dt)
        v = mx.random.normal((1, kv_heads, length, dim)).astype(dt)
        mx.eval(x, q, k, v)
        sdpa = mx.fast.scaled_dot_product_attention
        return {
            "sdpa causal": lambda: sdpa(q, k, v, scale=dim**-0.5, mask="causal"),
            "qkv matmul": lambda: x @ w_qkv.T,
            "gate/up matmul": lambda: x @ w_up.T,
        }

    for fn in ops(8).values():  # process-wide set-up (handles, modules) at another length
        timed(fn)
        timed(fn)
    for length in (int(n) for n in args.lengths.split(",")):
        for name, fn in ops(length).items():
            first, second = timed(fn), timed(fn)
            print(f"L={length:5d} {name:15s} first {first * 1e3:8.2f} ms  second {second * 1e3:7.2f} ms  "
                  f"set-up {(first - second) * 1e3:8.2f} ms", flush=True)


if __name__ == "__main__":
    main()
