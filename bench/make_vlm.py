#!/usr/bin/env python3
"""Write a Gemma 3 VLM for vision benchmarks: Gemma 3 270M's real text weights (from `make
models`) plus a random SigLIP-base-sized tower (224 px, 16 px patches -> 196 patches pooled to
49 image tokens, 12 layers of width 768), in the checkpoint layout mlx-vlm and the engine read.
No such checkpoint exists on a registry, and timing needs realistic sizes, not real outputs.

    .venv/bin/python bench/make_vlm.py OUT_DIR [--models-dir models]

The text vocabulary grows from 262144 to 262208 rows (as Gemma 3 4B's) so that the image soft
token, id 262144, has an embedding row; the tokenizer gains that token.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "goldens"))
from tiny_models import normal  # noqa: E402

VOCAB = 262208
IMAGE_TOKEN = 262144
VISION = {"model_type": "siglip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
          "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16, "image_size": 224,
          "num_channels": 3, "layer_norm_eps": 1e-6}
MM_TOKENS = 49


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models-dir", default="models")
    args = ap.parse_args()
    src = Path(args.models_dir) / "gemma3-270m" / "f32"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    text = json.loads((src / "config.json").read_text())
    text.pop("architectures", None)
    text.update({"vocab_size": VOCAB, "mm_tokens_per_image": MM_TOKENS, "sliding_window_pattern": 6,
                 "rope_global_base_freq": text.get("rope_theta", 1e6),
                 "rope_local_base_freq": text.get("rope_local_base_freq", 1e4)})
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "hidden_size": text["hidden_size"], "image_token_index": IMAGE_TOKEN,
              "boi_token_index": 255999, "eoi_token_index": 256000, "mm_tokens_per_image": MM_TOKENS,
              "pad_token_id": 0, "eos_token_id": [1, 106], "text_config": text, "vision_config": VISION}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    w = {"language_model." + k: v for k, v in load_file(str(src / "model.safetensors")).items()}
    emb = w["language_model.model.embed_tokens.weight"]
    # Zero rows: the tied head gives them logit 0, below the real vocabulary's best, so greedy
    # decoding never picks an id the tokenizer cannot decode.
    extra = np.zeros((VOCAB - emb.shape[0], emb.shape[1]), dtype=emb.dtype)
    w["language_model.model.embed_tokens.weight"] = np.concatenate([emb, extra])
    d, f, p = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    t = "vision_tower.vision_model."
    w[t + "embeddings.patch_embedding.weight"] = normal("b.patch", (d, 3, p, p), 0.02)
    w[t + "embeddings.patch_embedding.bias"] = normal("b.patch_b", (d,), 0.02)
    w[t + "embeddings.position_embedding.weight"] = normal("b.pos", ((224 // p) ** 2, d), 0.02)
    for i in range(VISION["num_hidden_layers"]):
        q = f"{t}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            w[q + n + ".weight"] = normal(q + n, (d,), 0.02, 1.0)
            w[q + n + ".bias"] = normal(q + n + "b", (d,), 0.02)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[q + "self_attn." + n + ".weight"] = normal(q + n, (d, d), 0.02)
            w[q + "self_attn." + n + ".bias"] = normal(q + n + "b", (d,), 0.02)
        w[q + "mlp.fc1.weight"] = normal(q + "fc1", (f, d), 0.02)
        w[q + "mlp.fc1.bias"] = normal(q + "fc1b", (f,), 0.02)
        w[q + "mlp.fc2.weight"] = normal(q + "fc2", (d, f), 0.02)
        w[q + "mlp.fc2.bias"] = normal(q + "fc2b", (d,), 0.02)
    w[t + "post_layernorm.weight"] = normal("b.post", (d,), 0.02, 1.0)
    w[t + "post_layernorm.bias"] = normal("b.postb", (d,), 0.02)
    w["multi_modal_projector.mm_soft_emb_norm.weight"] = normal("b.soft", (d,), 0.02)
    w["multi_modal_projector.mm_input_projection_weight"] = normal("b.proj", (d, text["hidden_size"]), 0.02)
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})

    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": IMAGE_TOKEN, "content": "<image_soft_token>", "single_word": False,
                                "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    tok["model"]["vocab"]["<image_soft_token>"] = IMAGE_TOKEN
    (out / "tokenizer.json").write_text(json.dumps(tok))
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc.update({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tc.pop("added_tokens_decoder", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    for name in ("generation_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Gemma3Processor",
                                                           "image_seq_length": MM_TOKENS}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
