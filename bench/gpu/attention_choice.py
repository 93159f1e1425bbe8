"""Fused attention (cuDNN) against attention written out as plain ops, on MLX's CUDA backend,
when every call brings a shape the process has not seen.

MLX's CUDA backend runs `fast.scaled_dot_product_attention` for more than 3 queries through
cuDNN, which builds a graph for every new (query length, key length) pair. In real use almost
every call is new: each prompt has its own length, a reused cache adds a new key length, and
each speculative verify pass (k + 1 queries) sees one more key. This times, per call, both paths
over a run of distinct lengths, then warm (the same shape again), for Llama-3.2-1B's and
Llama-3.1-8B's attention shapes (32 query heads over 8 key/value heads, bf16).

    python3 bench/gpu/attention_choice.py [--json FILE]
"""

import argparse
import json
import statistics
import time

import mlx.core as mx


def fused(q, k, v, scale):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")


def composed(q, k, v, scale):
    # What the engine's cache runs instead (engine/src/cache/attention.rs): query heads grouped
    # under their kv head so keys broadcast, causal mask from positions, softmax in f32.
    b, hq, ql, d = q.shape
    hkv, kl = k.shape[1], k.shape[2]
    rep = hq // hkv
    q = (q * mx.array(scale, q.dtype)).reshape(b, hkv, rep, ql, d)
    scores = q @ mx.expand_dims(k, 2).swapaxes(-1, -2)
    qpos = mx.arange(kl - ql, kl).reshape(ql, 1)
    kpos = mx.arange(kl).reshape(1, kl)
    scores = mx.where(kpos <= qpos, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    probs = mx.softmax(scores, axis=-1, precise=True)
    return (probs.astype(v.dtype) @ mx.expand_dims(v, 2)).reshape(b, hq, ql, d)


def composed_f32(q, k, v, scale):
    # The same with scores kept in f32 (the fused kernel never rounds them to bf16).
    f = mx.float32
    return composed(q.astype(f), k.astype(f), v.astype(f), scale).astype(q.dtype)


def inputs(ql, kl, d, heads=32, kv_heads=8):
    q = mx.random.normal((1, heads, ql, d)).astype(mx.bfloat16)
    k = mx.random.normal((1, kv_heads, kl, d)).astype(mx.bfloat16)
    v = mx.random.normal((1, kv_heads, kl, d)).astype(mx.bfloat16)
    mx.eval(q, k, v)
    return q, k, v


def call_ms(fn, q, k, v, scale):
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval(fn(q, k, v, scale))
    mx.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--new", type=int, default=6, help="distinct shapes per case")
    args = ap.parse_args()
    cases = [  # (name, query length, first key length): queries == keys is a prompt's first chunk
        ("verify k=3", 4, 700), ("verify k=7", 8, 700), ("prompt 16", 16, 16), ("prompt 64", 64, 64),
        ("prompt 256", 256, 256), ("prompt 563", 563, 563), ("prompt 1024", 1024, 1024),
        ("prompt 2048", 2048, 2048), ("chunk 512 after 1536", 512, 2048), ("prompt 4096", 4096, 4096),
    ]
    records = []
    for d in (64, 128):
        scale = d ** -0.5
        for fn in (fused, composed, composed_f32):  # process-wide set-up (cuDNN handle, kernels) at other shapes
            for n in (5, 6, 40):
                call_ms(fn, *inputs(n, n, d), scale)
        for name, ql, kl0 in cases:
            row = {"head_dim": d, "case": name, "queries": ql}
            for fn, parity in ((fused, 0), (composed, 1), (composed_f32, 2)):
                # Distinct key lengths per path, so neither finds the other's per-shape set-up.
                new = []
                for i in range(args.new):
                    kl = kl0 + 3 * i + parity
                    q, k, v = inputs(ql if ql != kl0 else kl, kl, d)
                    new.append(call_ms(fn, q, k, v, scale))
                warm = statistics.median(call_ms(fn, q, k, v, scale) for _ in range(7))
                row[fn.__name__] = {"new_ms": round(statistics.mean(new[1:]), 3), "warm_ms": round(warm, 3)}
            records.append(row)
            cells = " | ".join(f"{n} new {row[n]['new_ms']:8.3f} warm {row[n]['warm_ms']:7.3f}"
                               for n in ("fused", "composed", "composed_f32"))
            print(f"D={d:3d} {name:22s} {cells} ms", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"mlx": mx.__version__, "device": str(mx.default_device()), "records": records}, fh, indent=1)


if __name__ == "__main__":
    main()
