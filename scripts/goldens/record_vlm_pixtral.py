"""Record mlx-vlm's outputs for the tiny Pixtral and Mistral 3 VLMs (their vision parity goldens).

Usage:  .venv-vlm/bin/python scripts/goldens/record_vlm_pixtral.py [--out tests/goldens]
(`make goldens-vlm` runs it after record_vlm.py.)

The models come from tiny_models.py (its sha256 is recorded; engine/tests/tiny_vlm/pixtral.rs
writes the same bytes from Rust). The images are two deterministic non-square RGB patterns whose
sizes are not patch multiples: 37x23 (upsized to whole patches) and 50x70 (over the longest
edge, so downsized first), stored as uint8 rows. Per model, on the CPU in f32:
  - each image's pixel values from mlx-vlm's own Pixtral image processor (as its processor calls
    it: patch size times spatial_merge_size), NHWC float32 in base64,
  - each image's projected features (the tower, one image at a time, then the projector),
  - greedy decoding from get_input_embeddings for two prompts (the second with both images in one
    padded batch, the reference's block-diagonal attention): token ids, logprobs, top-2 gaps,
  - `generate --image --chat "Describe the image."` through mlx-vlm's prompt formatting,
    processor and generate.
"""
from __future__ import annotations

import argparse
import base64
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

IMG, BREAK, END = 10, 12, 13
STEPS = 24
CHAT = "Describe the image."
SIZES = [(37, 23), (50, 70)]  # (width, height)


def pattern(seed: int, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 64, size=(height, width, 3))
    base = np.stack([x * 7, y * 5, (x + 2 * y) * 3 + seed * 40], axis=-1)
    return ((base + noise) % 256).astype(np.uint8)


def span(rows: int, cols: int) -> list[int]:
    out = []
    for r in range(rows):
        out += [IMG] * cols + [BREAK if r < rows - 1 else END]
    return out


def record(name: str, path: Path, tmp: Path) -> dict:
    import mlx.core as mx
    import mlx_vlm
    from mlx_vlm import generate as vlm_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load as vlm_load
    from PIL import Image

    sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    model, processor = vlm_load(str(path))
    cfg = model.config
    unit = processor.patch_size * processor.spatial_merge_size
    images = [pattern(i + 1, w, h) for i, (w, h) in enumerate(SIZES)]

    def pixels(ims):
        out = processor.image_processor([Image.fromarray(im) for im in ims], patch_size=unit)
        return mx.array(out["pixel_values"]), [tuple(map(int, s)) for s in out["image_sizes"]]

    def project(px, sizes):
        *_, hidden = model.vision_tower(px.transpose(0, 2, 3, 1), output_hidden_states=True, image_sizes=sizes)
        sel = hidden[model.vision_feature_layer]
        if name == "tiny-mistral3":
            return model.multi_modal_projector(sel.squeeze(0), sizes)
        return model.multi_modal_projector(sel)[0]

    per_image, features, spans = [], [], []
    for im in images:
        px, sizes = pixels([im])
        per_image.append(np.array(px[0].transpose(1, 2, 0)))
        features.append(np.array(project(px, sizes)))
        h, w = sizes[0]
        spans.append(span(h // unit, w // unit))

    prompts = [
        {"ids": [1, 3] + spans[0] + [71, 400, 9, 4], "images": [0]},
        {"ids": [1, 3, 20, 21] + spans[1] + [22, 23] + spans[0] + [24, 25, 4], "images": [1, 0]},
    ]
    runs = []
    for p in prompts:
        ids = mx.array([p["ids"]])
        px, sizes = pixels([images[i] for i in p["images"]])
        embeds = model.get_input_embeddings(ids, px, image_sizes=sizes).inputs_embeds
        cache = model.language_model.make_cache() if hasattr(model.language_model, "make_cache") else None
        if cache is None:
            from mlx_vlm.models.cache import make_prompt_cache
            cache = make_prompt_cache(model.language_model)
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
        print(f"{name}: prompt of {len(p['ids'])}: {tokens}\n  min gap {min(gaps):.4f}")

    image_file = tmp / f"{name}-a.png"
    Image.fromarray(images[0]).save(image_file)
    chat_prompt = apply_chat_template(processor, cfg, CHAT, num_images=1)
    result = vlm_generate(model, processor, chat_prompt, image=[str(image_file)],
                          max_tokens=STEPS, temperature=0.0, verbose=False)
    chat_ids = processor.tokenizer.encode(result.text, add_special_tokens=False)
    print(f"{name}: chat {chat_prompt!r} -> {chat_ids}")
    return {
        "model": name,
        "safetensors_sha256": sha,
        "mlx_vlm": mlx_vlm.__version__,
        "mlx": mx.__version__,
        # Every file of the checkpoint but the weights, so the Rust writer reproduces the folder.
        "files": {f.name: f.read_text() for f in sorted(path.iterdir()) if f.suffix != ".safetensors"},
        "images": [im.tolist() for im in images],
        # float32 little-endian, base64 (exact and a quarter of the JSON's size).
        "pixels": [{"shape": list(p.shape), "f32_base64": base64.b64encode(p.astype("<f4").tobytes()).decode()}
                   for p in per_image],
        "features": [f.tolist() for f in features],
        "prompts": runs,
        "chat": {"message": CHAT, "image": 0, "rendered": chat_prompt, "tokens": chat_ids},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
    args = ap.parse_args()
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny_models.write_pixtral_models(Path(tmp))
        for name, path in paths.items():
            golden = record(name, path, Path(tmp))
            out = Path(args.out) / f"{name}.json"
            out.write_text(json.dumps(golden) + "\n")
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
