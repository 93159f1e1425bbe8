"""Record mlx-vlm's outputs for the tiny llava checkpoints (the generic VLM fallback's goldens).

Usage:  .venv-vlm/bin/python scripts/goldens/record_vlm_llava.py [--out tests/goldens]
(`make goldens-vlm` runs this after record_vlm.py.)

The models come from tiny_models.py: tiny-llava (CLIP tower + llama text) and tiny-llava-qwen2
(SigLIP tower + qwen2 text); each golden records its model.safetensors sha256 and its JSON files
verbatim, from which the Rust tests write the same checkpoint without Python. mlx-vlm 0.7.10's
own llava pipeline (LlavaProcessor) fails with transformers 5.24 (../shared/reference/models.md,
fix 6), so this calls the pieces directly, as record_vlm.py does: the checkpoint's image processor
(CLIPImageProcessor / SiglipImageProcessor, called on its own, which works) for pixel values,
then mlx-vlm's vision tower, feature selection, projector and merge (`get_input_embeddings`) and
its language model with KV caches for greedy decoding, in f32 on the CPU.

Images: the two 32x32 patterns of record_vlm.py and a 48x40 one, which CLIP's processor resizes
(short side to 32, bicubic) and center-crops, so the engine's preprocessing is checked too. For
each: the processor's pixel values (NHWC) and the projected features. For each prompt (ids with
the 16-token `<image>` spans already expanded): greedy tokens, logprobs and top-2 gaps. And the
chat check: the message rendered by the checkpoint's chat template (text, then the image, as the
engine writes chat messages), expanded and tokenized, then decoded greedily.
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
from record_vlm import pattern  # noqa: E402

IMAGE = 300
STEPS = 24
CHAT = "Describe the image."
MODELS = ["tiny-llava", "tiny-llava-qwen2"]


def wide_pattern() -> np.ndarray:
    """A 40 (high) x 48 (wide) RGB uint8 image, so CLIP's resize and crop both act."""
    y, x = np.mgrid[0:40, 0:48]
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 48, size=(40, 48, 3))
    base = np.stack([x * 5, 255 - y * 6, (x * y) % 200], axis=-1)
    return ((base + noise) % 256).astype(np.uint8)


def prompts(n: int) -> list[dict]:
    span = [IMAGE] * n
    return [
        {"ids": [1, 3, 33, 250] + span + [71, 400, 9, 18], "images": [0]},
        {"ids": [1, 20, 21] + span + [22, 23] + span + [24, 25], "images": [1, 2]},
    ]


def greedy(model, ids, embeds) -> tuple[list[int], list[float], list[float]]:
    import mlx.core as mx
    from mlx_vlm.models.cache import KVCache

    cache = [KVCache() for _ in model.language_model.layers]
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
    return tokens, logprobs, gaps


def record(name: str, path: Path) -> dict:
    import jinja2
    import mlx.core as mx
    import mlx_vlm
    from mlx_vlm.utils import load_model
    from PIL import Image
    from tokenizers import Tokenizer
    from transformers import AutoImageProcessor

    sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    model = load_model(path)
    processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
    images = [pattern(1), pattern(2), wide_pattern()]
    pixels = [mx.array(processor([Image.fromarray(im)], return_tensors="np")["pixel_values"]) for im in images]

    # The features exactly as get_input_embeddings computes them (layer, strategy, projector).
    features = []
    for px in pixels:
        *_, hidden = model.vision_tower(px.transpose(0, 2, 3, 1), output_hidden_states=True)
        sel = hidden[model.vision_feature_layer]
        if model.vision_feature_select_strategy == "default":
            sel = sel[:, 1:]
        features.append(model.multi_modal_projector(sel)[0])
    n = features[0].shape[0]

    runs = []
    for p in prompts(n):
        ids = mx.array([p["ids"]])
        px = mx.concatenate([pixels[i] for i in p["images"]], axis=0)
        embeds = model.get_input_embeddings(ids, px).inputs_embeds
        tokens, logprobs, gaps = greedy(model, ids, embeds)
        runs.append({**p, "tokens": tokens, "logprobs": logprobs, "top2_gaps": gaps})
        print(f"{name}: prompt of {len(p['ids'])}: {tokens}\n  min gap {min(gaps):.4f}")

    # The chat check, rendered with the checkpoint's own template and tokenizer.
    config = json.loads((path / "tokenizer_config.json").read_text())
    messages = [{"role": "user", "content": [{"type": "text", "text": CHAT}, {"type": "image"}]}]
    rendered = jinja2.Environment().from_string(config["chat_template"]).render(
        messages=messages, add_generation_prompt=True, bos_token=config["bos_token"])
    expanded = rendered.replace("<image>", "<image>" * n)
    chat_ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode(expanded, add_special_tokens=False).ids
    ids = mx.array([chat_ids])
    embeds = model.get_input_embeddings(ids, pixels[2]).inputs_embeds
    chat_tokens, _, chat_gaps = greedy(model, ids, embeds)
    print(f"{name}: chat {rendered!r} -> {chat_tokens} (min gap {min(chat_gaps):.4f})")

    # The text files verbatim: the Rust tests write the checkpoint from these and their own copy
    # of the weight recipe (engine/tests/tiny_vlm/llava.rs), checked against `safetensors_sha256`.
    files = {f.name: f.read_text() for f in sorted(path.iterdir()) if f.suffix == ".json"}
    return {
        "model": name,
        "safetensors_sha256": sha,
        "files": files,
        "mlx_vlm": mlx_vlm.__version__,
        "mlx": mx.__version__,
        "image_tokens": n,
        "images": [im.tolist() for im in images],
        "pixels": [np.array(px[0].transpose(1, 2, 0)).tolist() for px in pixels],
        "features": [np.array(f).tolist() for f in features],
        "prompts": runs,
        "chat": {"message": CHAT, "image": 2, "rendered": rendered, "prompt_ids": chat_ids,
                 "tokens": chat_tokens, "top2_gaps": chat_gaps},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
    args = ap.parse_args()

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny_models.write_all(Path(tmp))
        for name in MODELS:
            golden = record(name, paths[name])
            out = Path(args.out) / f"{name}.json"
            out.write_text(json.dumps(golden) + "\n")
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
