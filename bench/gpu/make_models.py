#!/usr/bin/env python3
"""Random-weight models of real Llama shapes, written by mlx-lm's own model classes, so the
engine and mlx-lm read the same folder. The tokenizer is SmolLM2's (its ids fit every vocab
here); speed does not depend on what the weights say.

    python3 bench/gpu/make_models.py --out /tmp/models --tokenizer DIR [--only llama-1b-bf16,...]

Also writes the 4-bit copy of a real model folder with --quantize SRC:DST (mlx-lm convert's
quantization: affine, group 64).
"""
import argparse
import shutil
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.utils import load, quantize_model, save_config, save_model

ROPE_LLAMA3 = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
BASE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False}
SHAPES = {
    # Llama-3.2-1B
    "llama-1b": dict(BASE, hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
                     rope_scaling=ROPE_LLAMA3, tie_word_embeddings=True, max_position_embeddings=131072),
    # Llama-3.1-8B
    "llama-8b": dict(BASE, hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                     rope_scaling=ROPE_LLAMA3, tie_word_embeddings=False, max_position_embeddings=131072),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def write(name: str, shape: str, bits, out: Path, tokenizer: Path):
    dst = out / name
    if (dst / "config.json").exists():
        return
    t = time.perf_counter()
    config = dict(SHAPES[shape], torch_dtype="bfloat16")
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    if bits:
        model, config = quantize_model(model, config, 64, bits)
    save_model(dst, model, donate_model=True)
    save_config(config, dst / "config.json")
    for f in TOKENIZER_FILES:
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, dst / f)
    print(f"wrote {dst} in {time.perf_counter() - t:.1f}s", flush=True)


def quantize_copy(src: Path, dst: Path):
    if (dst / "config.json").exists():
        return
    model, tok, config = load(str(src), return_config=True)
    model, config = quantize_model(model, config, 64, 4)
    save_model(dst, model)
    save_config(config, dst / "config.json")
    tok.save_pretrained(str(dst))
    print(f"wrote {dst} (4-bit copy of {src})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json")
    ap.add_argument("--only", default="llama-1b-bf16,llama-1b-4bit,llama-8b-bf16,llama-8b-4bit")
    ap.add_argument("--quantize", action="append", default=[], help="SRC:DST, a 4-bit copy of a real model")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        if not name:
            continue
        shape, _, kind = name.rpartition("-")
        write(name, shape, {"bf16": None, "4bit": 4}[kind], a.out, a.tokenizer)
    for q in a.quantize:
        src, dst = q.split(":")
        quantize_copy(Path(src), Path(dst))


if __name__ == "__main__":
    main()
