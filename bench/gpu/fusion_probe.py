#!/usr/bin/env python3
"""Which per-layer fusions would pay on the GPU, measured on mlx-lm itself before any of them
is built into the engine. Each variant patches mlx-lm's llama attention and MLP in place, then
decodes the same prompt warm; the variants alternate so drift hits them all alike.

    python3 bench/gpu/fusion_probe.py --shape llama-1b [--bits 4] [--prompt 512] [--gen 128]

Variants: `base` (mlx-lm as shipped); `qkv` (one q|k|v projection, one gate|up projection);
`qkv+rope` (that, and RoPE applied once to the queries and keys together); `qkv+addmm` (that,
and the residual adds folded into o_proj and down_proj through addmm).
"""
import argparse
import json
import statistics
import time

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.models import llama
from mlx_lm.models.base import scaled_dot_product_attention

from make_models import SHAPES


def fuse(model, bits):
    """Adds fused weights beside the originals (so every variant reads the same numbers)."""
    for layer in model.layers:
        a, m = layer.self_attn, layer.mlp
        cat = lambda *ls: cat_linear(ls, bits)
        a.qkv = cat(a.q_proj, a.k_proj, a.v_proj)
        m.gate_up = cat(m.gate_proj, m.up_proj)
    mx.eval(model.parameters())


def cat_linear(ls, bits):
    if bits:
        q = nn.QuantizedLinear(ls[0].group_size, 1, bias=False, group_size=ls[0].group_size, bits=ls[0].bits)
        q.weight = mx.concatenate([l.weight for l in ls])
        q.scales = mx.concatenate([l.scales for l in ls])
        q.biases = mx.concatenate([l.biases for l in ls])
        return q
    lin = nn.Linear(1, 1, bias=False)
    lin.weight = mx.concatenate([l.weight for l in ls])
    return lin


def linear_addmm(lin, x, residual):
    if isinstance(lin, nn.QuantizedLinear):
        return residual + lin(x)
    return mx.addmm(residual, x, lin.weight.T)


def attention(self, x, mask=None, cache=None, variant="base", residual=None):
    B, L, _ = x.shape
    h, k = self.n_heads, self.n_kv_heads
    qkv = self.qkv(x).reshape(B, L, h + 2 * k, -1).transpose(0, 2, 1, 3)
    if variant == "qkv+rope":
        qk = self.rope(qkv[:, : h + k], offset=cache.offset)
        queries, keys = qk[:, :h], qk[:, h:]
    else:
        queries = self.rope(qkv[:, :h], offset=cache.offset)
        keys = self.rope(qkv[:, h : h + k], offset=cache.offset)
    values = qkv[:, h + k :]
    keys, values = cache.update_and_fetch(keys, values)
    out = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
    out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
    if residual is not None:
        return linear_addmm(self.o_proj, out, residual)
    return self.o_proj(out)


def block(self, x, mask=None, cache=None, variant="base"):
    a, m = self.self_attn, self.mlp
    y = self.input_layernorm(x)
    if variant == "qkv+addmm":
        h = attention(a, y, mask, cache, variant, residual=x)
    else:
        h = x + attention(a, y, mask, cache, variant)
    g, u = mx.split(m.gate_up(self.post_attention_layernorm(h)), 2, axis=-1)
    act = nn.silu(g) * u
    if variant == "qkv+addmm":
        return linear_addmm(m.down_proj, act, h)
    return h + m.down_proj(act)


def decode(model, prompt, gen):
    """Decode tok/s after the first token, as the engine's bench counts it."""
    first = None
    toks = []
    for tok, _ in generate_step(prompt, model, max_tokens=gen):
        if first is None:
            mx.eval(tok)
            first = time.perf_counter()
        toks.append(int(tok))
    return (len(toks) - 1) / (time.perf_counter() - first), toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    ap.add_argument("--bits", type=int, default=0)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--variants", default="base,qkv,qkv+rope,qkv+addmm")
    a = ap.parse_args()
    model = llama.Model(llama.ModelArgs.from_dict(SHAPES[a.shape]))
    model.set_dtype(mx.bfloat16)
    if a.bits:
        nn.quantize(model, group_size=64, bits=a.bits)
    mx.eval(model.parameters())
    fuse(model, a.bits)
    stock = llama.TransformerBlock.__call__
    prompt = mx.random.randint(0, 1000, (a.prompt,))
    variants = a.variants.split(",")
    speeds = {v: [] for v in variants}
    tokens = {}
    for r in range(a.rounds + 1):
        for v in variants:
            if v == "base":
                llama.TransformerBlock.__call__ = stock
            else:
                llama.TransformerBlock.__call__ = lambda self, x, mask=None, cache=None, v=v: block(self, x, mask, cache, v)
            s, tokens[v] = decode(model, prompt, a.gen)
            if r:  # the first round compiles each variant's kernels
                speeds[v].append(s)
    base = statistics.median(speeds["base"]) if "base" in speeds else None
    for v in variants:
        med = statistics.median(speeds[v])
        row = {"shape": a.shape, "bits": a.bits, "prompt": a.prompt, "variant": v, "decode_tok_s": round(med, 1),
               "runs": [round(s, 1) for s in speeds[v]]}
        if base:
            row["vs_base"] = round(med / base, 3)
            # bf16 rounding may differ once two GEMVs become one; count where the tokens part.
            same = next((i for i, (x, y) in enumerate(zip(tokens[v], tokens["base"])) if x != y), len(tokens[v]))
            row["tokens_equal_to_base"] = same
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
