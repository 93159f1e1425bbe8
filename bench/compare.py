#!/usr/bin/env python3
"""Side-by-side speed of mlx-engine and mlx-lm on the same model folder, prompt and backend.

Both sides run warm and in-process: `mlx-engine bench --only speed --json` (one process per
model, one untimed run per prompt length, then --runs timed ones) and mlx-lm's
`stream_generate` in a Python process doing the same. Greedy, EOS ignored, so both decode
exactly --gen-tokens tokens of the same prompt (BOS, then engine/src/cli/bench_passage.txt
repeated). Decode tok/s counts the tokens after the first over the time after the first, on
both sides. Sides alternate for --rounds rounds; each cell keeps the best round's median.

    .venv/bin/python bench/compare.py --model models/smollm2-135m-instruct/f32 \\
        --prompt-tokens 128,512 --gen-tokens 128 [--device gpu] [--json out.json]

On the CPU the mlx-lm side preloads the OpenBLAS the engine links, so both use the same BLAS
(--stock-blas leaves mlx-lm on the wheel's reference BLAS).

--llamacpp-python PY --gguf FILE (one per --model) adds llama.cpp and the engine on that GGUF as
two more sides: the prebuilt
`xllamacpp` wheel in PY's environment (pip install xllamacpp; not in the project venv), the same
prompt ids, in-process through its server API with the prompt cache off, --threads threads. Its
rates are llama.cpp's own timings (prompt_per_second, predicted_per_second).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
PASSAGE = ROOT / "engine/src/cli/bench_passage.txt"

MLX_LM_SIDE = r"""
import json, sys, time
import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
path, passage_file, lengths, n, runs, device, kv_bits = sys.argv[1:8]
mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
lengths, n, runs = [int(x) for x in lengths.split(",")], int(n), int(runs)
model, tok = load(path)
tok.eos_token_ids = set()
kw = {}
if kv_bits != "none":
    kw = dict(kv_bits=int(kv_bits), kv_group_size=64, quantized_kv_start=0)
passage = tok.encode(open(passage_file).read(), add_special_tokens=False)
def prompt(k):
    ids = [] if tok.bos_token_id is None else [tok.bos_token_id]
    while len(ids) < k:
        ids += passage[: k - len(ids)]
    return ids
def once(ids):
    mx.reset_peak_memory()
    t0 = time.perf_counter(); first = last = None; count = 0
    for r in stream_generate(model, tok, ids, max_tokens=n, sampler=make_sampler(0.0), **kw):
        now = time.perf_counter()
        if first is None:
            first = now
        last, count, res = now, count + 1, r
    assert count == n, f"generated {count} tokens, expected {n}"
    return dict(prompt_tps=res.prompt_tps, decode_tps=(count - 1) / (last - first), ttft_s=first - t0,
                peak_mb=mx.get_peak_memory() / 1e6)
med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
for k in lengths:
    ids = prompt(k)
    once(ids)
    rs = [once(ids) for _ in range(runs)]
    print(json.dumps({"part": "speed", "runtime": "mlx-lm", "model": path, "device": device, "prompt_tokens": len(ids),
                      "gen_tokens": n, "runs": runs, "prompt_tps": med([r["prompt_tps"] for r in rs]),
                      "decode_tps": med([r["decode_tps"] for r in rs]), "ttft_s": med([r["ttft_s"] for r in rs]),
                      "peak_mb": max(r["peak_mb"] for r in rs),
                      "decode_tps_runs": [r["decode_tps"] for r in rs]}), flush=True)
"""


LLAMACPP_SIDE = r"""
import json, sys
import xllamacpp as x
gguf, ids_file, n, runs, threads = sys.argv[1:6]
n, runs, threads = int(n), int(runs), int(threads)
lengths = json.load(open(ids_file))
p = x.CommonParams()
p.model.path = gguf
p.n_ctx = max(len(ids) for ids in lengths) + n + 16
p.cpuparams.n_threads = threads
p.cpuparams_batch.n_threads = threads
p.n_parallel = 1
server = x.Server(p)
def once(ids):
    r = server.handle_completions({"prompt": ids, "n_predict": n, "ignore_eos": True, "temperature": 0,
                                   "cache_prompt": False, "add_special": False})
    t = r["timings"]
    assert t["predicted_n"] == n and t["prompt_n"] == len(ids), t
    return dict(prompt_tps=t["prompt_per_second"], decode_tps=t["predicted_per_second"], ttft_s=t["prompt_ms"] / 1e3)
med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
for ids in lengths:
    once(ids)
    rs = [once(ids) for _ in range(runs)]
    print(json.dumps({"part": "speed", "runtime": "llama.cpp", "model": gguf, "device": "cpu", "prompt_tokens": len(ids),
                      "gen_tokens": n, "runs": runs, "prompt_tps": med([r["prompt_tps"] for r in rs]),
                      "decode_tps": med([r["decode_tps"] for r in rs]), "ttft_s": med([r["ttft_s"] for r in rs]),
                      "peak_mb": 0.0, "decode_tps_runs": [r["decode_tps"] for r in rs]}), flush=True)
"""


def prompt_ids(model: Path, lengths: str):
    """The prompts both other sides build (BOS, then the passage repeated), from tokenizer.json."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    passage = tok.encode(PASSAGE.read_text(), add_special_tokens=False).ids
    bos = tok.encode("", add_special_tokens=True).ids[:1]
    out = []
    for k in (int(x) for x in lengths.split(",")):
        ids = list(bos)
        while len(ids) < k:
            ids += passage[: k - len(ids)]
        out.append(ids)
    return out


def run_llamacpp(a, model, gguf):
    ids_file = Path(os.environ.get("TMPDIR", "/tmp")) / "compare-llamacpp-ids.json"
    ids_file.write_text(json.dumps(prompt_ids(model, a.prompt_tokens)))
    cmd = [str(a.llamacpp_python), "-c", LLAMACPP_SIDE, str(gguf), str(ids_file), str(a.gen_tokens), str(a.runs),
           str(a.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"llama.cpp failed on {gguf}:\n{p.stderr[-4000:]}")
    return rows(p.stdout)


def rows(out: str):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_engine(a, model):
    cmd = [str(a.engine), "bench", "--model", str(model), "--device", a.device, "--only", "speed",
           "--prompt-tokens", a.prompt_tokens, "--gen-tokens", str(a.gen_tokens), "--runs", str(a.runs), "--json"]
    if a.kv_bits != "none":
        cmd += ["--kv-bits", a.kv_bits]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"mlx-engine failed ({' '.join(cmd)}):\n{p.stderr[-4000:]}")
    return rows(p.stdout)


def run_mlx_lm(a, model):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if a.device == "cpu" and not a.stock_blas and Path(OPENBLAS).exists():
        env["LD_PRELOAD"] = OPENBLAS
    cmd = [str(a.python), "-c", MLX_LM_SIDE, str(model), str(PASSAGE), a.prompt_tokens, str(a.gen_tokens),
           str(a.runs), a.device, a.kv_bits]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"mlx-lm failed on {model}:\n{p.stderr[-4000:]}")
    return rows(p.stdout)


def print_table(title, header, rows):
    print(title)
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def main():
    if sys.argv[1:] == ["--print-mlx-lm-side"]:  # for bench/gpu/run.sh profile, which runs it under ncu
        print(MLX_LM_SIDE)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", required=True, help="repeat for several models")
    ap.add_argument("--prompt-tokens", default="512", help="comma-separated prompt lengths")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per length in each process (median)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating processes per side (best median)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--kv-bits", default="none")
    ap.add_argument("--engine", type=Path, default=ROOT / "target/release/mlx-engine")
    ap.add_argument("--python", type=Path, default=ROOT / ".venv/bin/python")
    ap.add_argument("--stock-blas", action="store_true", help="mlx-lm on the wheel's own BLAS (CPU)")
    ap.add_argument("--label", action="append", help="a name per --model for the table")
    ap.add_argument("--llamacpp-python", type=Path, help="a Python with xllamacpp: adds llama.cpp as a side")
    ap.add_argument("--gguf", action="append", help="the GGUF llama.cpp runs, one per --model ('-' for none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp's threads")
    ap.add_argument("--json", type=Path, help="write every row here")
    a = ap.parse_args()
    labels = a.label or [m.name if m.name not in ("f32", "bf16") else f"{m.parent.name}/{m.name}" for m in a.model]
    ggufs = a.gguf or []
    if a.llamacpp_python and len(ggufs) != len(a.model):
        sys.exit("--llamacpp-python needs one --gguf per --model ('-' for none)")
    table, peers = [], []
    for i, (model, label) in enumerate(zip(a.model, labels)):
        best = {}
        sides = [("mlx-engine", run_engine), ("mlx-lm", run_mlx_lm)]
        if a.llamacpp_python and ggufs[i] != "-":
            # The engine reads the same GGUF, so the peer rows compare one file's weights.
            sides.append(("mlx-engine-gguf", lambda a, m, g=ggufs[i]: run_engine(a, Path(g))))
            sides.append(("llama.cpp", lambda a, m, g=ggufs[i]: run_llamacpp(a, m, g)))
        for _ in range(a.rounds):
            for side, fn in sides:
                for r in fn(a, model):
                    key = (side, r["prompt_tokens"])
                    if key not in best or r["decode_tps"] > best[key]["decode_tps"]:
                        best[key] = r
        for n in sorted({k[1] for k in best}):
            e, m = best.get(("mlx-engine", n)), best.get(("mlx-lm", n))
            if e is None or m is None:
                continue
            table.append({"model": label, "path": str(model), "device": a.device, "prompt_tokens": n,
                          "gen_tokens": a.gen_tokens, "kv_bits": a.kv_bits, "engine": e, "mlx_lm": m,
                          "decode_ratio": e["decode_tps"] / m["decode_tps"],
                          "prompt_ratio": e["prompt_tps"] / m["prompt_tps"],
                          "ttft_ratio": m["ttft_s"] / e["ttft_s"]})
            p, e = best.get(("llama.cpp", n)), best.get(("mlx-engine-gguf", n))
            if p is not None and e is not None:
                peers.append({"model": label, "prompt_tokens": n, "gguf": ggufs[i], "engine": e, "llama_cpp": p,
                              "decode_ratio": e["decode_tps"] / p["decode_tps"],
                              "prompt_ratio": e["prompt_tps"] / p["prompt_tps"]})
    print_table(f"device {a.device}, greedy, {a.gen_tokens} tokens generated, kv_bits {a.kv_bits}; "
                f"ratios engine / mlx-lm (TTFT: mlx-lm / engine, higher is better for the engine)",
                ["model", "prompt", "engine decode tok/s", "mlx-lm", "ratio", "engine prompt tok/s", "mlx-lm", "ratio",
                 "engine TTFT s", "mlx-lm", "engine peak MB", "mlx-lm"],
                [[t["model"], t["prompt_tokens"], f"{t['engine']['decode_tps']:.1f}", f"{t['mlx_lm']['decode_tps']:.1f}",
                  f"{t['decode_ratio']:.2f}", f"{t['engine']['prompt_tps']:.0f}", f"{t['mlx_lm']['prompt_tps']:.0f}",
                  f"{t['prompt_ratio']:.2f}", f"{t['engine']['ttft_s']:.3f}", f"{t['mlx_lm']['ttft_s']:.3f}",
                  f"{t['engine']['peak_mb']:.0f}", f"{t['mlx_lm']['peak_mb']:.0f}"] for t in table])
    if peers:
        print_table(f"\nllama.cpp (xllamacpp, {a.threads} threads) on the GGUF; ratios engine / llama.cpp",
                    ["model", "gguf", "prompt", "engine decode tok/s", "llama.cpp", "ratio", "engine prompt tok/s",
                     "llama.cpp", "ratio"],
                    [[t["model"], Path(t["gguf"]).name, t["prompt_tokens"], f"{t['engine']['decode_tps']:.1f}",
                      f"{t['llama_cpp']['decode_tps']:.1f}", f"{t['decode_ratio']:.2f}",
                      f"{t['engine']['prompt_tps']:.0f}", f"{t['llama_cpp']['prompt_tps']:.0f}",
                      f"{t['prompt_ratio']:.2f}"] for t in peers])
    if a.json:
        a.json.write_text(json.dumps({"rows": table, "llama_cpp": peers} if peers else table, indent=1))


if __name__ == "__main__":
    main()
