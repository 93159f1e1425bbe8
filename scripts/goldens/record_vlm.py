"""Record mlx-vlm's outputs for the tiny Gemma 3 VLM (the vision parity goldens).

Usage:  .venv-vlm/bin/python scripts/goldens/record_vlm.py [--out tests/goldens]
(`make goldens-vlm` creates .venv-vlm from scripts/goldens/vlm-constraints.txt and runs this.)

The model comes from tiny_models.py (written to a temporary folder; its sha256 is recorded). The
images are two deterministic 32x32 RGB patterns (stored in the golden as uint8 rows), so no resize
happens and pixel values depend only on rescale/normalise. For each prompt (token ids with the
processor's image spans already expanded: <start_of_image>, 4 soft tokens, <end_of_image>) the
script records what mlx-vlm computes on the CPU in f32:
  - the projected image features of each image (before the merge's division by sqrt(hidden)),
  - greedy decoding from mlx-vlm's multimodal prefill: token ids, logprobs and top-2 gaps.
The decode loop is mlx-vlm's own pieces (get_input_embeddings, the language model with its
make_cache caches), as its generate_step runs them for an unchunked prompt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

IMAGE, BOI, EOI = 300, 301, 302
SPAN = [BOI] + [IMAGE] * 4 + [EOI]
STEPS = 24
CHAT = "Describe the image."


def pattern(seed: int) -> np.ndarray:
    """A 32x32 RGB uint8 image: gradients plus a fixed pseudo-random texture."""
    y, x = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 64, size=(32, 32, 3))
    base = np.stack([x * 8, y * 8, (x + y) * 4 + seed * 40], axis=-1)
    return ((base + noise) % 256).astype(np.uint8)


PROMPTS = [
    {"ids": [2, 107, 33, 250] + SPAN + [71, 400, 9, 18], "images": [0]},
    {"ids": [2, 20, 21] + SPAN + [22, 23] + SPAN + [24, 25], "images": [1, 0]},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_vlm
    from mlx_vlm.utils import load_model
    from PIL import Image
    from transformers import AutoImageProcessor

    mx.set_default_device(mx.cpu)
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_models.write_all(Path(tmp))["tiny-gemma3-vlm"]
        sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
        model = load_model(path)
        processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
    images = [pattern(1), pattern(2)]
    pixels = [mx.array(processor([Image.fromarray(im)], return_tensors="np")["pixel_values"]) for im in images]

    features = []
    for px in pixels:
        hidden, _, _ = model.vision_tower(px.transpose(0, 2, 3, 1), output_hidden_states=True)
        features.append(model.multi_modal_projector(hidden)[0])

    runs = []
    for p in PROMPTS:
        ids = mx.array([p["ids"]])
        px = mx.concatenate([pixels[i] for i in p["images"]], axis=0)
        embeds = model.get_input_embeddings(ids, px, mask=mx.ones(ids.shape)).inputs_embeds
        cache = model.language_model.make_cache()
        logits = model.language_model(ids, inputs_embeds=embeds, cache=cache).logits[0, -1]
        tokens, logprobs, gaps = [], [], []
        for _ in range(STEPS):
            lp = logits - mx.logsumexp(logits)
            tok = int(mx.argmax(lp))
            top2 = mx.sort(lp)[-2:].tolist()
            tokens.append(tok)
            logprobs.append(float(lp[tok]))
            gaps.append(top2[1] - top2[0])
            logits = model.language_model(mx.array([[tok]]), cache=cache).logits[0, -1]
        runs.append({**p, "tokens": tokens, "logprobs": logprobs, "top2_gaps": gaps})
        print(f"prompt of {len(p['ids'])}: {tokens}\n  min gap {min(gaps):.4f}")

    # The end-to-end check: `generate --image a.png --chat "Describe the image."
    # --temp 0`, through mlx-vlm's own prompt formatting, processor and generate.
    from mlx_vlm import generate as vlm_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load as vlm_load

    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_models.write_all(Path(tmp))["tiny-gemma3-vlm"]
        image_file = Path(tmp) / "a.png"
        Image.fromarray(images[0]).save(image_file)
        vlm_model, vlm_processor = vlm_load(str(path))
        chat_prompt = apply_chat_template(vlm_processor, vlm_model.config, CHAT, num_images=1)
        result = vlm_generate(vlm_model, vlm_processor, chat_prompt, image=[str(image_file)],
                              max_tokens=STEPS, temperature=0.0, verbose=False)
        chat_ids = vlm_processor.tokenizer.encode(result.text, add_special_tokens=False)
        print(f"chat: {chat_prompt!r} -> {chat_ids}")

    golden = {
        "model": "tiny-gemma3-vlm",
        "safetensors_sha256": sha,
        "mlx_vlm": mlx_vlm.__version__,
        "mlx": mx.__version__,
        "images": [im.tolist() for im in images],
        "features": [np.array(f).tolist() for f in features],
        "prompts": runs,
        "chat": {"message": CHAT, "image": 0, "rendered": chat_prompt, "tokens": chat_ids},
    }
    out = Path(args.out) / "tiny-gemma3-vlm.json"
    out.write_text(json.dumps(golden) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
