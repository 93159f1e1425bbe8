#!/usr/bin/env python3
"""Side-by-side speed of mlx-engine and mlx-lm on the same model folder, prompt and backend.

Runs `mlx-engine generate` (release build) and mlx-lm's `stream_generate` (from the project
venv, with the same OpenBLAS the engine links) on an identical raw-text prompt, greedy, with
EOS ignored so both decode exactly `--max-tokens` tokens, and prints prompt tok/s, decode tok/s,
time to first token, peak memory, and the engine/mlx-lm ratios.

    .venv/bin/python bench/compare.py --model models/smollm2-135m-instruct/f32 \
        --prompt-tokens 512 --max-tokens 128 [--kv-bits 4] [--runs 2]
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
PASSAGE = "".join(f"Line {i}: {i} squared is {i * i}, and {i} cubed is {i ** 3}.\n" for i in range(1, 400))

MLX_LM_SIDE = r"""
import json, sys, time, os
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
import mlx.core as mx
path, text, n, kv_bits = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model, tok = load(path)
kw = {}
if kv_bits != "none":
    kw = dict(kv_bits=int(kv_bits), kv_group_size=64, quantized_kv_start=0)
ids = tok.encode(text)
mx.reset_peak_memory()
t0 = time.perf_counter(); first = None; last = None
for r in stream_generate(model, tok, ids, max_tokens=n, sampler=make_sampler(0.0), **kw):
    if first is None: first = time.perf_counter() - t0
    last = r
print(json.dumps({"prompt_tokens": last.prompt_tokens, "prompt_tps": last.prompt_tps,
                  "gen_tokens": last.generation_tokens, "gen_tps": last.generation_tps,
                  "ttft": first, "peak_mb": mx.get_peak_memory() / 1e6}))
"""


def prompt_text(model: Path, n: int) -> str:
    """The first n tokens of the passage, as text (so both sides encode the same ids)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tok.encode(PASSAGE, add_special_tokens=False).ids[:n]
    return tok.decode(ids)


def run_engine(model, text, n, kv_bits):
    cmd = [str(ROOT / "target/release/mlx-engine"), "generate", "--model", str(model), "--prompt", text,
           "--max-tokens", str(n), "--temp", "0", "--ignore-eos"]
    if kv_bits != "none":
        cmd += ["--kv-bits", kv_bits]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tok/s \| generation: (\d+) tokens, ([\d.]+) tok/s \| "
                  r"time to first token ([\d.]+)s \| peak memory ([\d.]+) MB", err)
    if not m:
        sys.exit(f"could not parse mlx-engine output:\n{err}")
    return {"prompt_tokens": int(m[1]), "prompt_tps": float(m[2]), "gen_tokens": int(m[3]),
            "gen_tps": float(m[4]), "ttft": float(m[5]), "peak_mb": float(m[6])}


def run_mlx_lm(model, text, n, kv_bits):
    env = dict(os.environ, HF_HUB_OFFLINE="1", LD_PRELOAD=OPENBLAS)
    out = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", MLX_LM_SIDE, str(model), text, str(n), kv_bits],
                         capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--kv-bits", default="none")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs per side; the best is kept")
    a = ap.parse_args()
    text = prompt_text(a.model, a.prompt_tokens)
    best = {}
    for _ in range(a.runs):
        for name, fn in (("mlx-engine", run_engine), ("mlx-lm", run_mlx_lm)):
            r = fn(a.model, text, a.max_tokens, a.kv_bits)
            if name not in best or r["gen_tps"] > best[name]["gen_tps"]:
                best[name] = r
    e, m = best["mlx-engine"], best["mlx-lm"]
    print(f"model {a.model}  prompt {e['prompt_tokens']} tokens  decode {a.max_tokens} tokens  kv_bits {a.kv_bits}")
    print(f"{'':12}{'prompt tok/s':>14}{'decode tok/s':>14}{'TTFT s':>10}{'peak MB':>10}")
    for name, r in best.items():
        print(f"{name:12}{r['prompt_tps']:>14.1f}{r['gen_tps']:>14.2f}{r['ttft']:>10.3f}{r['peak_mb']:>10.0f}")
    print(f"{'ratio':12}{e['prompt_tps'] / m['prompt_tps']:>13.2f}x{e['gen_tps'] / m['gen_tps']:>13.2f}x"
          f"{m['ttft'] / e['ttft']:>9.2f}x{e['peak_mb'] / m['peak_mb']:>9.2f}x  (engine / mlx-lm; TTFT as mlx-lm / engine)")


if __name__ == "__main__":
    main()
