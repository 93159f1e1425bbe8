"""Record mlx-lm reference outputs ("goldens") that the engine's tests compare against.

Usage (what `make goldens` runs; `make models` must have run first):
  .venv/bin/python scripts/goldens/record.py --models-dir models --out tests/goldens

Writes tests/goldens/<name>.json for the tiny random models (built here by tiny_models.py into
--tiny-dir) and for SmolLM2-135M-Instruct and Gemma 3 270M in f32 and bf16, plus SmolLM2 f32
with an 8-bit quantized KV cache (`--kv-bits 8` parity; see KV_QUANT).

Why it is done this way:
  * Same BLAS as the engine: the engine links Debian's OpenBLAS ahead of the wheel's reference
    BLAS, so f32 GEMMs round the same way only if mlx-lm uses OpenBLAS too. The script re-executes
    itself with LD_PRELOAD=<libopenblas.so.0> and records which BLAS was mapped.
  * mlx-lm's own `generate_step` with an argmax sampler produces the greedy tokens, so the goldens
    have mlx-lm's exact semantics: prompt[:-1] is prefilled into the KV cache in one chunk, the
    last prompt token runs as its own step, logprobs = logits - logsumexp(logits) in the model's
    dtype, and greedy picks argmax over those logprobs (lowest id on a tie). The loop does not
    stop at EOS; `eos_index` tells where mlx-lm's generate would have stopped.
  * `top2_gap` (top-1 minus top-2 logprob, as the sampler saw it) lets tests skip near-ties:
    bf16 logprobs are coarse, a gap of 0 there is a real tie broken by the lower id.
  * Prompt logits come from one forward pass over the whole prompt without a cache.
  * Prompt token ids come from the model folder's tokenizer exactly as mlx-lm's CLI makes them:
    chat prompts are rendered with the chat template to text, then encode(text,
    add_special_tokens=False); raw prompts use encode(text) (Gemma adds <bos>).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"


def ensure_env(argv: list[str]) -> None:
    """Re-exec with OpenBLAS preloaded and the hub off, before mlx is imported."""
    want_blas = "--no-openblas" not in argv and Path(OPENBLAS).exists()
    if want_blas and OPENBLAS not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, HF_HUB_OFFLINE="1",
                   LD_PRELOAD=":".join(filter(None, [OPENBLAS, os.environ.get("LD_PRELOAD")])))
        os.execve(sys.executable, [sys.executable, *argv], env)
    os.environ["HF_HUB_OFFLINE"] = "1"


ensure_env(sys.argv)

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models  # noqa: E402

N_FIXED_IDS = 16
TOP_K = 20

# Counting lines: ~20 tokens each, so 28 lines is ~560 tokens -- past Gemma 3's 512-token
# sliding window, so the long prompt exercises the window in prefill and in decode.
LONG_TEXT = "".join(f"Line {i}: {i} squared is {i * i}, and {i} cubed is {i ** 3}.\n"
                    for i in range(1, 29))
CODE_TEXT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'

TINY_PROMPTS = [
    {"name": "seven", "ids": [1, 17, 254, 3, 99, 400, 12]},
    {"name": "single", "ids": [5]},
    {"name": "twenty", "ids": list(range(100, 140, 2))},  # longer than tiny-gemma3's window (8)
]
SMOLLM2_PROMPTS = [
    {"name": "capital", "chat": "What is the capital of France?"},
    {"name": "story", "chat": "Write a short story about a robot who learns to paint."},
    {"name": "rainbow", "chat": "Explain how a rainbow forms, step by step."},
    {"name": "code", "text": CODE_TEXT},
]
GEMMA3_PROMPTS = [
    {"name": "capital", "text": "The capital of France is"},
    {"name": "story", "text": "Once upon a time, there was a little robot who"},
    {"name": "code", "text": CODE_TEXT},
]
LONG_PROMPT = {"name": "long", "text": LONG_TEXT}
# In bf16, Gemma 3's greedy continuations of the prompts above hit exact top-2 ties (the
# reference resolves them by lowest id) within 32 steps; these have no tie in 32 steps, so the
# bf16 parity test has prompts it can compare token for token.
GEMMA3_BF16_EXTRA = [
    {"name": "counting", "text": "1, 2, 3, 4, 5, 6,"},
    {"name": "weekdays", "text": "Monday, Tuesday, Wednesday,"},
]

# name -> (folder relative to models dir or "tiny:<name>", prompts, decode steps)
GOLDENS = {
    "tiny-llama": ("tiny:tiny-llama", TINY_PROMPTS, 64),
    "tiny-llama-rope-llama3": ("tiny:tiny-llama-rope-llama3", TINY_PROMPTS, 64),
    "tiny-gemma3": ("tiny:tiny-gemma3", TINY_PROMPTS, 64),
    "smollm2-135m-instruct-f32": ("smollm2-135m-instruct/f32", SMOLLM2_PROMPTS + [LONG_PROMPT], 64),
    "smollm2-135m-instruct-bf16": ("smollm2-135m-instruct/bf16", SMOLLM2_PROMPTS, 32),
    "gemma3-270m-f32": ("gemma3-270m/f32", GEMMA3_PROMPTS + [LONG_PROMPT], 64),
    "gemma3-270m-bf16": ("gemma3-270m/bf16", GEMMA3_PROMPTS + GEMMA3_BF16_EXTRA, 32),
    "smollm2-135m-instruct-f32-kv8": ("smollm2-135m-instruct/f32", SMOLLM2_PROMPTS, 32),
    "smollm2-135m-instruct-f32-reppen": ("smollm2-135m-instruct/f32", SMOLLM2_PROMPTS, 32),
}

# Goldens recorded through logits processors: name -> make_logits_processors' arguments (the
# engine's `repetition_penalty` / `repetition_context_size` take the same values).
PROCESSORS = {
    "smollm2-135m-instruct-f32-reppen": {"repetition_penalty": 1.3, "repetition_context_size": 20},
}

# Goldens recorded with a quantized KV cache: name -> generate_step's KV arguments. mlx-lm
# converts each KVCache to a QuantizedKVCache after every model call once its offset reaches
# quantized_kv_start (maybe_quantize_kv_cache), so with start 0 the prefill chunk attends
# densely and the last prompt token and every decode step attend through
# quantized_scaled_dot_product_attention. SmolLM2 has only full-attention layers, so every
# layer is quantized (mlx-lm cannot quantize rotating caches).
KV_QUANT = {
    "smollm2-135m-instruct-f32-kv8": {"kv_bits": 8, "kv_group_size": 64, "quantized_kv_start": 0},
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def loaded_blas() -> list[str]:
    """BLAS/LAPACK libraries mapped into this process (proves the preload took). numpy's own
    bundled OpenBLAS shows too; MLX uses the first libblas-compatible one, OpenBLAS."""
    libs = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if "blas" in path or "lapack" in path:
            libs.add(Path(path).name)
    return sorted(libs)


def openblas_core() -> str | None:
    """The OpenBLAS kernel set in use (it depends on the CPU, or OPENBLAS_CORETYPE): f32 sums
    round differently under each, which is why the tests' bounds are measured across them."""
    import ctypes

    try:
        lib = ctypes.CDLL(OPENBLAS)
    except OSError:
        return None
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_corename().decode()


def fixed_ids(vocab: int) -> list[int]:
    """16 vocab ids spread evenly over the vocabulary (first and last included)."""
    return [round(i * (vocab - 1) / (N_FIXED_IDS - 1)) for i in range(N_FIXED_IDS)]


def f(x) -> float:
    """An f32 value as the shortest decimal that reads back as the same f32."""
    return float(str(np.float32(x)))


def prompt_ids(prompt: dict, tokenizer) -> tuple[list[int], str | None]:
    if "ids" in prompt:
        return list(prompt["ids"]), None
    if "chat" in prompt:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt["chat"]}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False), text
    return tokenizer.encode(prompt["text"]), prompt["text"]


def greedy(model, ids: list[int], steps: int, kv: dict, processors: dict | None = None) -> dict:
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors

    tokens, logprobs, gaps = [], [], []
    extra = {"logits_processors": make_logits_processors(**processors)} if processors else {}
    for tok, lp in generate_step(mx.array(ids), model, max_tokens=steps,
                                 sampler=lambda x: mx.argmax(x, axis=-1), **kv, **extra):
        lp32 = np.array(lp.astype(mx.float32))
        top2 = np.partition(lp32, -2)[-2:]
        tokens.append(int(tok))
        logprobs.append(f(lp32[int(tok)]))
        gaps.append(f(top2[1] - top2[0]))
    return {"generated_ids": tokens, "logprobs": logprobs, "top2_gap": gaps,
            "min_top2_gap": min(gaps)}


def prompt_logits(model, ids: list[int], fixed: list[int]) -> dict:
    logits = model(mx.array(ids)[None])[0].astype(mx.float32)
    a = np.array(logits)  # (positions, vocab)
    last = a[-1]
    top = np.argsort(-last, kind="stable")[:TOP_K]
    return {
        "last_top20": [[int(i), f(last[i])] for i in top],
        "per_position": {
            "max": [f(v) for v in a.max(axis=1)],
            "argmax": [int(v) for v in a.argmax(axis=1)],
            "mean": [f(v) for v in a.mean(axis=1, dtype=np.float64)],
            "std": [f(v) for v in a.std(axis=1, dtype=np.float64)],
            "fixed_ids_logits": [[f(v) for v in row] for row in a[:, fixed]],
        },
    }


def record(name: str, folder: Path, prompts: list[dict], steps: int, command: str,
           kv: dict, processors: dict | None = None) -> dict:
    import mlx_lm
    from mlx_lm import load
    from mlx_lm.utils import load_model

    config = json.loads((folder / "config.json").read_text())
    if (folder / "tokenizer.json").exists():
        model, tokenizer = load(str(folder))
        eos = sorted(tokenizer.eos_token_ids)
    else:
        model, _ = load_model(folder)
        tokenizer, eos = None, [config["eos_token_id"]]
    fixed = fixed_ids(config["vocab_size"])
    out = {
        "header": {
            "name": name,
            "generator": "scripts/goldens/record.py",
            "command": command,
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
            "numpy": np.__version__,
            "blas_loaded": loaded_blas(),
            "openblas_core": openblas_core(),
            "model_dir": str(folder),
            "weights_sha256": sha256(folder / "model.safetensors"),
            "dtype": config.get("torch_dtype", "float32"),
            "config": config,
            "decode_steps": steps,
            "eos_token_ids": eos,
            "fixed_vocab_ids": fixed,
            "semantics": (
                "generate_step with argmax sampler: prompt[:-1] prefilled in one chunk, last "
                "prompt token as its own step, logprobs = logits - logsumexp in the model dtype, "
                "argmax over logprobs; no stop at EOS (eos_index = first EOS, else null). "
                "prompt_logits: one cache-less forward over the whole prompt, cast to f32."
                + (" KV cache quantized as kv_cache says (generate_step's arguments): the "
                   "prefill call (prompt[:-1], one chunk as every prompt is shorter than "
                   "prefill_step_size 2048) attends densely, then maybe_quantize_kv_cache "
                   "converts every layer; the last prompt token and all decode steps attend to "
                   "quantized keys and values. prompt_logits do not use the cache."
                   if kv else "")),
        },
        "prompts": [],
    }
    if kv:
        out["header"]["kv_cache"] = kv
    if processors:
        out["header"]["logits_processors"] = processors
        out["header"]["semantics"] += (" Through make_logits_processors(**logits_processors): each step's "
                                       "logits pass them with every token so far, prompt included.")
    for p in prompts:
        ids, text = prompt_ids(p, tokenizer)
        entry = {"name": p["name"], "chat": "chat" in p}
        if "chat" in p:
            entry["messages"] = [{"role": "user", "content": p["chat"]}]
        entry.update(text=text, prompt_ids=ids)
        g = greedy(model, ids, steps, kv, processors)
        entry.update(g)
        entry["eos_index"] = next((i for i, t in enumerate(g["generated_ids"]) if t in eos), None)
        if tokenizer is not None:
            entry["generated_text"] = tokenizer.decode(g["generated_ids"])
        entry["prompt_logits"] = prompt_logits(model, ids, fixed)
        out["prompts"].append(entry)
        print(f"  {name}/{p['name']}: {len(ids)} prompt tokens, min top-2 gap "
              f"{g['min_top2_gap']:.4g}, eos_index {entry['eos_index']}", flush=True)
    return out


def to_json(obj) -> str:
    """Indented JSON with every list of numbers on one line (readable diffs, small files)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    flat = re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    assert json.loads(flat) == obj
    return flat + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path,
                    default=Path(os.environ.get("MLX_ENGINE_MODELS") or "models"))
    ap.add_argument("--out", type=Path, default=Path("tests/goldens"))
    ap.add_argument("--tiny-dir", type=Path, default=Path("target/goldens-models"),
                    help="where tiny_models.py writes the tiny random models")
    ap.add_argument("--only", action="append", choices=sorted(GOLDENS),
                    help="record only this golden (repeatable)")
    ap.add_argument("--skip-missing", action="store_true",
                    help="skip real models whose folder is missing instead of failing")
    ap.add_argument("--no-openblas", action="store_true", help="do not preload OpenBLAS")
    args = ap.parse_args()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])

    tiny = tiny_models.write_all(args.tiny_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or GOLDENS:
        where, prompts, steps = GOLDENS[name]
        folder = tiny[where[5:]] if where.startswith("tiny:") else args.models_dir / where
        if not (folder / "model.safetensors").exists():
            if args.skip_missing:
                print(f"skip {name}: {folder} missing (run `make models`)")
                continue
            raise SystemExit(f"{folder} missing: run `make models` first")
        print(f"{name} ({folder})", flush=True)
        golden = record(name, folder, prompts, steps, command, KV_QUANT.get(name, {}), PROCESSORS.get(name, {}))
        path = args.out / f"{name}.json"
        path.write_text(to_json(golden), encoding="utf-8")


if __name__ == "__main__":
    main()
