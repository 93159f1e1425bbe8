#!/usr/bin/env python3
"""Time to first token with an image: mlx-engine vs mlx-vlm, same checkpoint, image and backend.

Runs `mlx-engine bench --image` (release build) and mlx-vlm's `stream_generate` in-process
(from .venv-vlm, `make goldens-vlm` creates it, with the OpenBLAS the engine links) on the same
raw prompt, each warmed up first
with a mirrored copy of the image, and prints the TTFTs and the ratios for: a cold image prompt;
the same image again (the engine's feature memo; mlx-vlm re-encodes); a text-only follow-up turn
(the engine's prompt cache; mlx-vlm prefills the whole conversation again).

    .venv/bin/python bench/make_vlm.py /tmp/benchvlm
    .venv/bin/python bench/compare_vlm.py --model /tmp/benchvlm --image photo.png
"""
import argparse
import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The BLAS the engine links; MLX's wheel otherwise runs its reference BLAS (bench/compare.py).
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
# Must match engine/src/cli/bench.rs (IMAGE_PROMPT, FOLLOW_UP, REPLY_TOKENS).
PROMPT = "<start_of_image>Describe the image in detail."
FOLLOW_UP = "\n\nQuestion: what drove the looms in the town? Answer:"
REPLY_TOKENS = 8

MLX_VLM_SIDE = r"""
import json, sys, time
import mlx.core as mx
from PIL import Image, ImageOps
from mlx_vlm import load, stream_generate
mx.set_default_device(mx.cpu)
path, image, prompt, follow_up, reply_tokens = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model, processor = load(path)
mirrored = ImageOps.mirror(Image.open(image).convert("RGB"))
def ttft(text, img, n):
    t = time.perf_counter()
    first, out = None, []
    for r in stream_generate(model, processor, text, image=[img], max_tokens=n, temperature=0.0):
        if first is None:
            first = time.perf_counter() - t
        out.append(r.text)
    return first, "".join(out)
ttft(prompt, mirrored, 2)
cold, reply = ttft(prompt, image, reply_tokens)
again, _ = ttft(prompt, image, reply_tokens)
follow, _ = ttft(prompt + reply + follow_up, image, reply_tokens)
print(json.dumps({"cold": cold, "memo hit": again, "follow-up": follow}))
"""


def engine(model: str, image: str) -> dict:
    out = subprocess.run([str(ROOT / "target/release/mlx-engine"), "bench", "--model", model, "--prompt-tokens", "64",
                          "--memory-lengths", "--image", image], check=True, capture_output=True, text=True).stdout
    section = out[out.index("with an image"):]
    return {m[0].strip(): float(m[1]) for m in re.findall(r"^\s+(cold|memo hit|follow-up)\s*:.*TTFT\s+([\d.]+)s", section, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--python", default=str(ROOT / ".venv-vlm/bin/python"))
    args = ap.parse_args()
    eng = engine(args.model, args.image)
    ref = json.loads(subprocess.run([args.python, "-c", MLX_VLM_SIDE, args.model, args.image, PROMPT, FOLLOW_UP,
                                     str(REPLY_TOKENS)], check=True, capture_output=True, text=True,
                                    env=dict(os.environ, HF_HUB_OFFLINE="1", LD_PRELOAD=OPENBLAS)).stdout.splitlines()[-1])
    print(f"TTFT with an image, {args.model}, CPU f32")
    print(f"  {'':<10} {'engine':>9} {'mlx-vlm':>9} {'mlx-vlm / engine':>17}")
    for k in ("cold", "memo hit", "follow-up"):
        print(f"  {k:<10} {eng[k]:>8.3f}s {ref[k]:>8.3f}s {ref[k] / eng[k]:>16.2f}x")


if __name__ == "__main__":
    main()
