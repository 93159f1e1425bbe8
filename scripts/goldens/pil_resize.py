"""Record Pillow's resize outputs, and HF-style pixel values, for the engine's vision tests.

Usage (Pillow is not in the project venv; a throwaway venv is enough):
  python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow==13.0.0 numpy
  /tmp/pilvenv/bin/python scripts/goldens/pil_resize.py --out tests/goldens

Writes tests/goldens/pil_resize.json and tests/goldens/images/grad37x23.png, which
engine/tests/vision_images.rs reads:
  * "cases": the test images (made by `pixel` below, which the Rust test reproduces bit for
    bit) resized with `Image.resize((w, h), filter)` for every filter to sizes that go down, up,
    one axis only, to 1x1, and height first (Pillow 13: the height shrinks by over twice the width) for images more than 100 times
    taller than wide; each output's RGB bytes, row-major, base64.
  * "preprocess": the PNG decoded and processed as HF's PIL backend does for Gemma 3 / SigLIP
    (BaseImageProcessor: resize with PIL BILINEAR to 32x32, rescale as float64 x * (1/255)
    cast to float32, normalize in float32 (x - 0.5) / 0.5), as little-endian float32, base64.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

IMAGES = {"grad37x23": (37, 23), "grad64x48": (64, 48), "tall3x320": (3, 320)}
SIZES = {
    "grad37x23": [(16, 16), (39, 25), (37, 11), (12, 23), (1, 1), (50, 4)],
    "grad64x48": [(15, 11), (9, 48), (100, 2)],
    "tall3x320": [(2, 40), (5, 25)],
}
FILTERS = ["NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX", "HAMMING"]


def pixel(x: int, y: int, c: int, w: int, h: int) -> int:
    """Gradients, hash noise and pure black/white blocks (to exercise clipping)."""
    if (x // 5 + y // 4) % 4 == 0:
        return 255 if (x // 5) % 2 == 0 else 0
    grad = (x * 255 // max(w - 1, 1) + y * 128 // max(h - 1, 1) + c * 85) % 256
    noise = (((x * 73 + y * 151 + c * 29) * 2654435761) & 0xFFFFFFFF) >> 24
    return (grad * 3 + noise) // 4


def make(w: int, h: int) -> Image.Image:
    data = bytes(pixel(x, y, c, w, h) for y in range(h) for x in range(w) for c in range(3))
    return Image.frombytes("RGB", (w, h), data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/goldens")
    out = Path(ap.parse_args().out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    cases = []
    for name, (w, h) in IMAGES.items():
        img = make(w, h)
        for size in SIZES[name]:
            for f in FILTERS:
                code = int(Image.Resampling[f])
                rgb = img.resize(size, resample=code).tobytes()
                cases.append({"image": name, "filter": f, "code": code, "size": list(size), "rgb": b64(rgb)})

    png = out / "images" / "grad37x23.png"
    make(37, 23).save(png, optimize=True)
    rgb = Image.open(png).convert("RGB")
    resized = np.array(rgb.resize((32, 32), resample=Image.Resampling.BILINEAR))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    std = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    x = ((x - mean) / std).astype("<f4")
    preprocess = {
        "png": "images/grad37x23.png",
        "png_sha256": hashlib.sha256(png.read_bytes()).hexdigest(),
        "size": [32, 32],
        "resample": int(Image.Resampling.BILINEAR),
        "shape": list(x.shape),
        "pixel_values_f32le": b64(x.tobytes()),
    }

    doc = {
        "generator": "scripts/goldens/pil_resize.py",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "images": {k: list(v) for k, v in IMAGES.items()},
        "cases": cases,
        "preprocess": preprocess,
    }
    # One case a line: small, and diffs stay readable.
    text = json.dumps(doc, separators=(",", ":"))
    text = text.replace('{"image":', '\n{"image":')
    (out / "pil_resize.json").write_text(text + "\n")
    print(f"wrote {len(cases)} resize cases and the preprocess golden to {out}")


if __name__ == "__main__":
    main()
