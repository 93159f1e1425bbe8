"""Write tiny deterministic random-weight models (HF layout: config.json + f32 model.safetensors).

Usage:  .venv/bin/python scripts/goldens/tiny_models.py OUT_DIR [--check]

Writes OUT_DIR/tiny-llama, OUT_DIR/tiny-llama-rope-llama3 and OUT_DIR/tiny-gemma3 (no tokenizer:
tests drive them with token ids), and the VLMs tiny-gemma3-vlm, tiny-pixtral, tiny-mistral3,
tiny-llava (CLIP + llama) and tiny-llava-qwen2 (SigLIP + qwen2) with word-level tokenizers, chat
templates and image-processor files. Why they exist: exact f32 parity tests against mlx-lm
(mlx-vlm for the VLMs) that run in a second, cover every code path of an architecture (GQA, tied
embeddings, llama3 RoPE scaling, Gemma 3 sliding + global layers, q/k norms, 1+w norms, embedding
scale) and need no download.

Determinism: every tensor comes from numpy's PCG64 `default_rng` seeded with a fixed seed plus a
stable hash of the tensor name, in a fixed order, so the bytes do not depend on dict order or on
which other tensors exist. record.py stores the sha256 of each model.safetensors in the goldens, so
a test can tell if it is looking at different weights.

Scales (tuned with --check so greedy decoding neither copies its input token nor falls into a
one-token loop at once, and top-1/top-2 gaps stay mostly > 0.01): projections ~N(0, 0.1^2), MLP
down projection ~N(0, 0.3^2) so token-local features dominate the attention mix, a small
embedding table (std 0.1, tied LM head) whose logits are spread by a final-norm gain of ~4. Norm
weights are 1+N(0, 0.1^2) for llama (stored as the multiplier) and N(0, 0.1^2) for Gemma (stored as
w; the model multiplies by 1+w; Gemma's post-MLP norm uses w ~ 2), so a forgotten norm weight or a
wrong `1+` shows in the outputs.
`--check` prints the smallest top-2 logit gap over a few greedy steps (needs mlx-lm).
"""
from __future__ import annotations

import argparse
import json
import math
import zlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

SEED = 20261126
EMBED_STD = 0.1          # embedding table (= tied LM head)
FINAL_NORM_GAIN = 4.0    # final norm multiplier: sets the logit spread
O_STD = 0.1              # attention output projection
DOWN_STD = 0.3           # MLP down projection
GEMMA_POST_FFW_W = 2.0   # Gemma post-MLP norm w (multiplier 1 + w = 3)

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

# Same weights as tiny-llama, only the RoPE frequencies differ. original_max_position_embeddings
# is small (64) so that, with head_dim 16, the scaled, smoothed and untouched frequency bands all
# occur (wavelengths 2*pi*10000^(2i/16) span 6 .. 20000).
TINY_LLAMA_ROPE_LLAMA3 = {
    **TINY_LLAMA,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}

TINY_GEMMA3 = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    # Layers 0 and 2 slide (window 8), 1 and 3 are global: (i + 1) % pattern == 0 is global.
    "sliding_window": 8,
    "sliding_window_pattern": 2,
    "_sliding_window_pattern": 2,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}


def normal(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    """N(mean, std^2) f32 tensor, seeded by the model seed and the tensor's name only."""
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)


MIX = 0x9E3779B97F4A7C15


def portable_normal(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    """About N(mean, std^2) f32, reproducible bit for bit outside numpy (the Rust tests write the
    llava checkpoints themselves, engine/tests/tiny_vlm/llava.rs): splitmix64 from the seed and the
    tensor name's crc32, 12 uniforms (53-bit) per value summed in order (Irwin-Hall), then
    `(sum - 6) * std + mean`; only exactly rounded f64 operations, no library functions."""
    n = int(np.prod(shape, dtype=np.int64))
    seed = np.uint64((SEED << 32) | zlib.crc32(name.encode()))
    z = seed + np.arange(1, 12 * n + 1, dtype=np.uint64) * np.uint64(MIX)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(n, 12)
    acc = u[:, 0].copy()
    for k in range(1, 12):
        acc = acc + u[:, k]
    return ((acc - 6.0) * std + mean).astype(np.float32).reshape(shape)


def llama_weights(c: dict, normal=normal) -> dict[str, np.ndarray]:
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    w = {"model.embed_tokens.weight": normal("embed", (c["vocab_size"], h), EMBED_STD),
         "model.norm.weight": normal("norm", (h,), 0.3, FINAL_NORM_GAIN)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = normal(p + "in_norm", (h,), 0.1, 1.0)
        w[p + "post_attention_layernorm.weight"] = normal(p + "post_norm", (h,), 0.1, 1.0)
        w[p + "self_attn.q_proj.weight"] = normal(p + "q", (nq * d, h), 0.1)
        w[p + "self_attn.k_proj.weight"] = normal(p + "k", (nkv * d, h), 0.1)
        w[p + "self_attn.v_proj.weight"] = normal(p + "v", (nkv * d, h), 0.1)
        w[p + "self_attn.o_proj.weight"] = normal(p + "o", (h, nq * d), O_STD)
        w[p + "mlp.gate_proj.weight"] = normal(p + "gate", (i, h), 0.1)
        w[p + "mlp.up_proj.weight"] = normal(p + "up", (i, h), 0.1)
        w[p + "mlp.down_proj.weight"] = normal(p + "down", (h, i), DOWN_STD)
    return w


def gemma3_weights(c: dict) -> dict[str, np.ndarray]:
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    # Gemma multiplies the embeddings by sqrt(hidden) = 8; the tied LM head sees the raw table.
    w = {"model.embed_tokens.weight": normal("g.embed", (c["vocab_size"], h), EMBED_STD),
         "model.norm.weight": normal("g.norm", (h,), 0.3, FINAL_NORM_GAIN - 1.0)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm"):
            w[p + n + ".weight"] = normal("g." + p + n, (h,), 0.1)
        # Multiplier ~2 on the MLP output: token-local features outweigh the attention mix.
        w[p + "post_feedforward_layernorm.weight"] = normal("g." + p + "post_ffw", (h,), 0.1,
                                                            GEMMA_POST_FFW_W)
        w[p + "self_attn.q_norm.weight"] = normal("g." + p + "q_norm", (d,), 0.1)
        w[p + "self_attn.k_norm.weight"] = normal("g." + p + "k_norm", (d,), 0.1)
        w[p + "self_attn.q_proj.weight"] = normal("g." + p + "q", (nq * d, h), 0.1)
        w[p + "self_attn.k_proj.weight"] = normal("g." + p + "k", (nkv * d, h), 0.1)
        w[p + "self_attn.v_proj.weight"] = normal("g." + p + "v", (nkv * d, h), 0.1)
        w[p + "self_attn.o_proj.weight"] = normal("g." + p + "o", (h, nq * d), 0.1)
        w[p + "mlp.gate_proj.weight"] = normal("g." + p + "gate", (i, h), 0.1)
        w[p + "mlp.up_proj.weight"] = normal("g." + p + "up", (i, h), 0.1)
        w[p + "mlp.down_proj.weight"] = normal("g." + p + "down", (h, i), DOWN_STD)
    return w


# Gemma 3 with a SigLIP tower: 32x32 images in 8x8 patches (a 4x4 grid), pooled to 2x2 = 4
# image tokens. Written in the pre-4.52 VLM layout (`language_model.model.*`), with the keys
# mlx-vlm reads from text_config (mm_tokens_per_image, sliding_window_pattern,
# rope_global_base_freq) and a top-level hidden_size (mlx-vlm divides image features by its
# square root and defaults it to 2048). Token ids: 300 image soft token, 301 <start_of_image>,
# 302 <end_of_image>.
TINY_GEMMA3_VLM = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "hidden_size": 64,
    "image_token_index": 300,
    "boi_token_index": 301,
    "eoi_token_index": 302,
    "mm_tokens_per_image": 4,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "text_config": {
        **{k: v for k, v in TINY_GEMMA3.items() if k not in ("architectures", "layer_types")},
        "rope_global_base_freq": 1000000.0,
        "mm_tokens_per_image": 4,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 32,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
    },
    "torch_dtype": "float32",
}


def gemma3_vlm_weights(c: dict) -> dict[str, np.ndarray]:
    w = {"language_model." + k: v for k, v in gemma3_weights(c["text_config"]).items()}
    v = c["vision_config"]
    d, f, p, ch = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["num_channels"]
    n = (v["image_size"] // p) ** 2
    t = "vision_tower.vision_model."
    # Torch layout [D, C, P, P]; both readers transpose it.
    w[t + "embeddings.patch_embedding.weight"] = normal("v.patch", (d, ch, p, p), 0.05)
    w[t + "embeddings.patch_embedding.bias"] = normal("v.patch_b", (d,), 0.1)
    w[t + "embeddings.position_embedding.weight"] = normal("v.pos", (n, d), 0.3)
    for l in range(v["num_hidden_layers"]):
        q = f"{t}encoder.layers.{l}."
        for nm in ("layer_norm1", "layer_norm2"):
            w[q + nm + ".weight"] = normal("v." + q + nm, (d,), 0.1, 1.0)
            w[q + nm + ".bias"] = normal("v." + q + nm + "b", (d,), 0.1)
        for nm in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[q + "self_attn." + nm + ".weight"] = normal("v." + q + nm, (d, d), 0.2)
            w[q + "self_attn." + nm + ".bias"] = normal("v." + q + nm + "b", (d,), 0.05)
        w[q + "mlp.fc1.weight"] = normal("v." + q + "fc1", (f, d), 0.2)
        w[q + "mlp.fc1.bias"] = normal("v." + q + "fc1b", (f,), 0.05)
        w[q + "mlp.fc2.weight"] = normal("v." + q + "fc2", (d, f), 0.2)
        w[q + "mlp.fc2.bias"] = normal("v." + q + "fc2b", (d,), 0.05)
    w[t + "post_layernorm.weight"] = normal("v.post", (d,), 0.1, 1.0)
    w[t + "post_layernorm.bias"] = normal("v.postb", (d,), 0.1)
    w["multi_modal_projector.mm_soft_emb_norm.weight"] = normal("v.soft", (d,), 0.1)
    # Features land in the text model's input space, where token embeddings have std ~0.8
    # after Gemma's sqrt(64) scale.
    w["multi_modal_projector.mm_input_projection_weight"] = normal("v.proj", (d, c["hidden_size"]), 0.2)
    return w


# llava with a CLIP tower and the tiny-llama text model: 32x32 images in 8x8 patches, a class
# token, features from the second-to-last layer (`vision_feature_layer` -2) without the class
# token (`default`): 16 image tokens (id 300, `<image>`) per image. Written in the pre-4.52 VLM
# layout (`language_model.model.*`) with the tower under `vision_tower.vision_model.*` (fix 6 of
# ../shared/reference/models.md: what mlx-vlm and hub llava checkpoints use).
TINY_LLAVA = {
    "architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava",
    "image_token_index": 300,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    # tiny-llama with 2 heads of 32 (1 KV head): KV-cache quantization needs a head dimension
    # its group sizes (32, 64, 128) divide.
    "text_config": {**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"},
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 32,
        "num_channels": 3,
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",
    },
    "torch_dtype": "float32",
}

# Composition: the same llava recipe over a qwen2 text model (q/k/v biases), with a SigLIP
# tower (no class token), the last layer's states (`vision_feature_layer` -1) and every token
# (`full`), as llava-interleave-qwen does. `hidden_act` is quick_gelu because mlx-vlm 0.7.10's
# llava tower runs every MLP with the fast GELU whatever the config says (SigLIP checkpoints
# say gelu_pytorch_tanh); the engine follows the config, so this keeps mlx-vlm a valid reference.
TINY_QWEN2 = {
    **{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "rope_scaling", "attention_bias",
                                                       "mlp_bias")},
    "model_type": "qwen2",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
TINY_LLAVA_QWEN2 = {
    "architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava",
    "image_token_index": 300,
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "full",
    "projector_hidden_act": "gelu",
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "text_config": TINY_QWEN2,
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": 32,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "hidden_act": "quick_gelu",
    },
    "torch_dtype": "float32",
}


def qwen2_weights(c: dict, normal=normal) -> dict[str, np.ndarray]:
    """tiny-llama's recipe plus qwen2's q/k/v biases (under their own seeds)."""
    w = llama_weights(c, normal)
    d = c["head_dim"]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}.self_attn."
        w[p + "q_proj.bias"] = normal("q2." + p + "q_b", (c["num_attention_heads"] * d,), 0.1)
        w[p + "k_proj.bias"] = normal("q2." + p + "k_b", (c["num_key_value_heads"] * d,), 0.1)
        w[p + "v_proj.bias"] = normal("q2." + p + "v_b", (c["num_key_value_heads"] * d,), 0.1)
    return w


def tower_weights(v: dict, tag: str, normal=portable_normal) -> dict[str, np.ndarray]:
    """A CLIP or SigLIP tower under `vision_tower.vision_model.*` (torch conv layout)."""
    clip = v["model_type"] == "clip_vision_model"
    d, f, p, ch = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["num_channels"]
    n = (v["image_size"] // p) ** 2 + (1 if clip else 0)
    t = "vision_tower.vision_model."
    w = {t + "embeddings.patch_embedding.weight": normal(tag + "patch", (d, ch, p, p), 0.05),
         t + "embeddings.position_embedding.weight": normal(tag + "pos", (n, d), 0.3)}
    if clip:
        w[t + "embeddings.class_embedding"] = normal(tag + "cls", (d,), 0.5)
        w[t + "pre_layrnorm.weight"] = normal(tag + "pre", (d,), 0.1, 1.0)
        w[t + "pre_layrnorm.bias"] = normal(tag + "preb", (d,), 0.1)
    else:
        w[t + "embeddings.patch_embedding.bias"] = normal(tag + "patch_b", (d,), 0.1)
    for l in range(v["num_hidden_layers"]):
        q = f"{t}encoder.layers.{l}."
        for nm in ("layer_norm1", "layer_norm2"):
            w[q + nm + ".weight"] = normal(tag + q + nm, (d,), 0.1, 1.0)
            w[q + nm + ".bias"] = normal(tag + q + nm + "b", (d,), 0.1)
        for nm in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[q + "self_attn." + nm + ".weight"] = normal(tag + q + nm, (d, d), 0.2)
            w[q + "self_attn." + nm + ".bias"] = normal(tag + q + nm + "b", (d,), 0.05)
        w[q + "mlp.fc1.weight"] = normal(tag + q + "fc1", (f, d), 0.2)
        w[q + "mlp.fc1.bias"] = normal(tag + q + "fc1b", (f,), 0.05)
        w[q + "mlp.fc2.weight"] = normal(tag + q + "fc2", (d, f), 0.2)
        w[q + "mlp.fc2.bias"] = normal(tag + q + "fc2b", (d,), 0.05)
    w[t + "post_layernorm.weight"] = normal(tag + "post", (d,), 0.1, 1.0)
    w[t + "post_layernorm.bias"] = normal(tag + "postb", (d,), 0.1)
    return w


def llava_weights(c: dict) -> dict[str, np.ndarray]:
    """Every tensor from portable_normal, so the Rust tests can write the same bytes."""
    normal = portable_normal
    text = c["text_config"]
    make = qwen2_weights if text["model_type"] == "qwen2" else llama_weights
    tag = "l." if text["model_type"] == "llama" else "lq."
    w = {"language_model." + k: v for k, v in make(text, normal).items()}
    w.update(tower_weights(c["vision_config"], tag))
    dv, dt = c["vision_config"]["hidden_size"], text["hidden_size"]
    # Projected features land among token embeddings (std 0.1), a few times larger so that
    # the image visibly steers the output.
    w["multi_modal_projector.linear_1.weight"] = normal(tag + "mm1", (dt, dv), 0.2)
    w["multi_modal_projector.linear_1.bias"] = normal(tag + "mm1b", (dt,), 0.05)
    w["multi_modal_projector.linear_2.weight"] = normal(tag + "mm2", (dt, dt), 0.1)
    w["multi_modal_projector.linear_2.bias"] = normal(tag + "mm2b", (dt,), 0.05)
    return w


MODELS = {
    "tiny-llama": (TINY_LLAMA, llama_weights),
    "tiny-llama-rope-llama3": (TINY_LLAMA_ROPE_LLAMA3, llama_weights),
    "tiny-gemma3": (TINY_GEMMA3, gemma3_weights),
    "tiny-gemma3-vlm": (TINY_GEMMA3_VLM, gemma3_vlm_weights),
    "tiny-llava": (TINY_LLAVA, llava_weights),
    "tiny-llava-qwen2": (TINY_LLAVA_QWEN2, llava_weights),
}


def write_model(out: Path, config: dict, weights: dict[str, np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(weights.items())), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# What Gemma 3's image processor reads (its real checkpoints' values, at the tiny image size).
TINY_GEMMA3_VLM_PREPROCESSOR = {
    "image_processor_type": "Gemma3ImageProcessor",
    "processor_class": "Gemma3Processor",
    "do_resize": True,
    "size": {"height": 32, "width": 32},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": None,
    "do_pan_and_scan": None,
}


# A word-level tokenizer for the tiny VLM: token i is the word `<i>`, except 300-302, spelled as
# Gemma 3 spells its image tokens; those, EOS/BOS and the turn markers are added special tokens
# (found inside text, as real checkpoints' control tokens are). The
# chat template writes `<3> role text <4>` per turn and `<start_of_image>` per image part, as
# Gemma 3's does with its own markers. Unknown words (role names, plain text) are `<0>`.
TINY_VLM_SPECIAL = {1: "<1>", 2: "<2>", 3: "<3>", 4: "<4>",
                    300: "<image_soft_token>", 301: "<start_of_image>", 302: "<end_of_image>"}
TINY_VLM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<3> {{ m.role }} {% if m.content is string %}{{ m.content }}"
    "{% else %}{% for p in m.content %}{% if p.type == 'image' %}<start_of_image>{% else %}{{ p.text }}"
    "{% endif %}{% endfor %}{% endif %} <4> {% endfor %}{% if add_generation_prompt %}<3> model {% endif %}"
)


def word_tokenizer(vocab: int, special: dict[int, str]) -> dict:
    words = {special.get(i, f"<{i}>"): i for i in range(vocab)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in special.items()]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": None, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
            "model": {"type": "WordLevel", "vocab": words, "unk_token": "<0>"}}


# The llava checkpoints' tokenizer: the same word-level scheme with `<image>` (300) as the added
# image token, BOS `<1>` / EOS `<2>` as in tiny-llama, and the turn template writing `<image>`
# per image part.
TINY_LLAVA_SPECIAL = {1: "<1>", 2: "<2>", 3: "<3>", 4: "<4>", 300: "<image>"}
TINY_LLAVA_TEMPLATE = TINY_VLM_TEMPLATE.replace("<start_of_image>", "<image>").replace(
    "<3> model ", "<3> assistant ")

# CLIP's image processor (resize the short side, center crop, bicubic, CLIP's mean and std) at
# the tiny size, and SigLIP's (resize to the square).
TINY_LLAVA_PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "processor_class": "LlavaProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 32},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}
TINY_SIGLIP_PREPROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "processor_class": "LlavaProcessor",
    "do_resize": True,
    "size": {"height": 32, "width": 32},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def write_llava_files(out: Path, vocab: int, preprocessor: dict, image_tokens: int) -> None:
    (out / "tokenizer.json").write_text(json.dumps(word_tokenizer(vocab, TINY_LLAVA_SPECIAL)) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<1>", "eos_token": "<2>",
              "pad_token": "<0>", "chat_template": TINY_LLAVA_TEMPLATE, "image_token": "<image>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps(
        {"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": 8,
         "num_additional_image_tokens": image_tokens}, indent=2) + "\n")


def write_vlm_tokenizer(out: Path, vocab: int) -> None:
    words = {TINY_VLM_SPECIAL.get(i, f"<{i}>"): i for i in range(vocab)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in TINY_VLM_SPECIAL.items()]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "post_processor": None, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
           "model": {"type": "WordLevel", "vocab": words, "unk_token": "<0>"}}
    (out / "tokenizer.json").write_text(json.dumps(tok) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<2>", "eos_token": "<1>",
              "pad_token": "<0>", "chat_template": TINY_VLM_TEMPLATE, "boi_token": "<start_of_image>",
              "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_all(out_dir: Path) -> dict[str, Path]:
    paths = {}
    for name, (config, make) in MODELS.items():
        write_model(out_dir / name, config, make(config))
        paths[name] = out_dir / name
    write_vlm_tokenizer(out_dir / "tiny-gemma3-vlm", TINY_GEMMA3["vocab_size"])
    (out_dir / "tiny-gemma3-vlm" / "processor_config.json").write_text(
        json.dumps({"processor_class": "Gemma3Processor", "image_seq_length": 4}, indent=2) + "\n")
    (out_dir / "tiny-gemma3-vlm" / "preprocessor_config.json").write_text(
        json.dumps(TINY_GEMMA3_VLM_PREPROCESSOR, indent=2) + "\n")
    write_llava_files(out_dir / "tiny-llava", TINY_LLAMA["vocab_size"], TINY_LLAVA_PREPROCESSOR, 1)
    write_llava_files(out_dir / "tiny-llava-qwen2", TINY_QWEN2["vocab_size"], TINY_SIGLIP_PREPROCESSOR, 0)
    paths.update(write_pixtral_models(out_dir))
    return paths


# --- Pixtral and Mistral 3 (tiny-pixtral, tiny-mistral3) ------------------------------------------
# Written identically by engine/tests/tiny_vlm/pixtral.rs (Rust, no Python), so the generator is one
# both can reproduce bit for bit: splitmix64 over a counter, seeded by SEED and the FNV-1a hash of
# the tensor name, mapped to a uniform value with the requested mean and std, all in float64
# (exact IEEE operations in both languages), then rounded to float32.
# HF layout (`language_model.model.*`, `vision_tower.*` with the patch conv as [D, C, P, P],
# `multi_modal_projector.*`), with ../shared/reference/models.md's fixes: top-level model_type
# `pixtral` (HF writes llava), tie_word_embeddings False (mistral3, or lm_head is not saved), and an
# explicit text_config.rope_theta. Token ids follow Mistral's tokenizers: 1 <s>, 2 </s>, 3 [INST],
# 4 [/INST], 10 [IMG], 12 [IMG_BREAK], 13 [IMG_END].
MASK64 = (1 << 64) - 1


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def uniform(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    """Uniform f32 values of mean `mean` and standard deviation `std` (half-width std*sqrt(3))."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.uint64(SEED ^ fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return (mean + std * math.sqrt(3.0) * (2.0 * u - 1.0)).astype(np.float32).reshape(shape)


TINY_MISTRAL_TEXT = {
    "model_type": "mistral", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
}
TINY_PIXTRAL_VISION = {
    "model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
    "head_dim": 16, "image_size": 64, "patch_size": 8, "num_channels": 3, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5, "hidden_act": "silu",
}
# Pixtral: 3 tower layers, features from the second-to-last hidden state (vision_feature_layer -2).
TINY_PIXTRAL = {
    "architectures": ["LlavaForConditionalGeneration"], "model_type": "pixtral",
    "image_token_index": 10, "vision_feature_layer": -2, "vision_feature_select_strategy": "full",
    "projector_hidden_act": "gelu", "multimodal_projector_bias": True, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    "text_config": TINY_MISTRAL_TEXT,
    "vision_config": {**TINY_PIXTRAL_VISION, "num_hidden_layers": 3},
}
# Mistral 3: 2 tower layers, 2x2 patch merging, projector without biases.
TINY_MISTRAL3 = {
    "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
    "image_token_index": 10, "vision_feature_layer": -1, "spatial_merge_size": 2,
    "projector_hidden_act": "gelu", "multimodal_projector_bias": False, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    "text_config": TINY_MISTRAL_TEXT,
    "vision_config": {**TINY_PIXTRAL_VISION, "num_hidden_layers": 2},
}


def mistral_text_weights(c: dict, tag: str) -> dict[str, np.ndarray]:
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    t = "language_model."
    w = {t + "model.embed_tokens.weight": uniform(tag + "embed", (c["vocab_size"], h), EMBED_STD),
         t + "model.norm.weight": uniform(tag + "norm", (h,), 0.3, FINAL_NORM_GAIN),
         t + "lm_head.weight": uniform(tag + "lm_head", (c["vocab_size"], h), EMBED_STD)}
    for l in range(c["num_hidden_layers"]):
        p = f"{t}model.layers.{l}."
        w[p + "input_layernorm.weight"] = uniform(p + "in_norm", (h,), 0.1, 1.0)
        w[p + "post_attention_layernorm.weight"] = uniform(p + "post_norm", (h,), 0.1, 1.0)
        for nm, shape in (("q", (nq * d, h)), ("k", (nkv * d, h)), ("v", (nkv * d, h)), ("o", (h, nq * d))):
            w[p + f"self_attn.{nm}_proj.weight"] = uniform(p + nm, shape, 0.1)
        w[p + "mlp.gate_proj.weight"] = uniform(p + "gate", (i, h), 0.1)
        w[p + "mlp.up_proj.weight"] = uniform(p + "up", (i, h), 0.1)
        w[p + "mlp.down_proj.weight"] = uniform(p + "down", (h, i), DOWN_STD)
    return w


def pixtral_tower_weights(v: dict, tag: str) -> dict[str, np.ndarray]:
    d, f, p, ch = v["hidden_size"], v["intermediate_size"], v["patch_size"], v["num_channels"]
    t = "vision_tower."
    w = {t + "patch_conv.weight": uniform(tag + "patch", (d, ch, p, p), 0.05),
         t + "ln_pre.weight": uniform(tag + "ln_pre", (d,), 0.1, 1.0)}
    for l in range(v["num_hidden_layers"]):
        q = f"{t}transformer.layers.{l}."
        w[q + "attention_norm.weight"] = uniform(q + "attn_norm", (d,), 0.1, 1.0)
        w[q + "ffn_norm.weight"] = uniform(q + "ffn_norm", (d,), 0.1, 1.0)
        for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w[q + "attention." + nm + ".weight"] = uniform(q + nm, (d, d), 0.2)
        w[q + "feed_forward.gate_proj.weight"] = uniform(q + "gate", (f, d), 0.2)
        w[q + "feed_forward.up_proj.weight"] = uniform(q + "up", (f, d), 0.2)
        w[q + "feed_forward.down_proj.weight"] = uniform(q + "down", (d, f), 0.2)
    return w


def pixtral_weights(c: dict) -> dict[str, np.ndarray]:
    h, d = c["text_config"]["hidden_size"], c["vision_config"]["hidden_size"]
    w = {**mistral_text_weights(c["text_config"], "px."), **pixtral_tower_weights(c["vision_config"], "px.v.")}
    m = "multi_modal_projector."
    w[m + "linear_1.weight"] = uniform("px.lin1", (h, d), 0.2)
    w[m + "linear_1.bias"] = uniform("px.lin1b", (h,), 0.05)
    w[m + "linear_2.weight"] = uniform("px.lin2", (h, h), 0.15)
    w[m + "linear_2.bias"] = uniform("px.lin2b", (h,), 0.05)
    return w


def mistral3_weights(c: dict) -> dict[str, np.ndarray]:
    h, d, s = c["text_config"]["hidden_size"], c["vision_config"]["hidden_size"], c["spatial_merge_size"]
    w = {**mistral_text_weights(c["text_config"], "m3."), **pixtral_tower_weights(c["vision_config"], "m3.v.")}
    m = "multi_modal_projector."
    w[m + "norm.weight"] = uniform("m3.norm", (d,), 0.1, 1.0)
    w[m + "patch_merger.merging_layer.weight"] = uniform("m3.merge", (d, d * s * s), 0.1)
    w[m + "linear_1.weight"] = uniform("m3.lin1", (h, d), 0.2)
    w[m + "linear_2.weight"] = uniform("m3.lin2", (h, h), 0.15)
    return w


MISTRAL_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]",
                   10: "[IMG]", 12: "[IMG_BREAK]", 13: "[IMG_END]"}
# Images before the text of a user turn, whatever order the parts come in: mlx-vlm writes them
# first for pixtral and mistral3, the engine's messages after the text; both render the same.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {% if m.content is string %}"
    "{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}[IMG]{% endif %}{% endfor %}"
    "{% for p in m.content %}{% if p.type == 'text' %} {{ p.text if p.text is defined else p.content }}"
    "{% endif %}{% endfor %}{% endif %} [/INST]{% else %} {{ m.content if m.content is string else "
    "m.content[0].text }} </s>{% endif %}{% endfor %}"
)


def write_mistral_tokenizer(out: Path, vocab: int) -> None:
    words = {MISTRAL_SPECIAL.get(i, f"<{i}>"): i for i in range(vocab)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in MISTRAL_SPECIAL.items()]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "post_processor": None, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
           "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"}}
    (out / "tokenizer.json").write_text(json.dumps(tok) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "chat_template": MISTRAL_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def pixtral_processor_files(out: Path, processor: str, merge: int) -> None:
    """The HF Pixtral image processor's settings (CLIP mean/std, bicubic) at the tiny sizes."""
    pre = {"image_processor_type": "PixtralImageProcessor", "processor_class": processor,
           "patch_size": {"height": 8, "width": 8}, "size": {"longest_edge": 64}, "resample": 3,
           "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    proc = {"processor_class": processor, "patch_size": 8, "spatial_merge_size": merge,
            "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")


PIXTRAL_MODELS = {
    "tiny-pixtral": (TINY_PIXTRAL, pixtral_weights, "PixtralProcessor", 1),
    "tiny-mistral3": (TINY_MISTRAL3, mistral3_weights, "Mistral3Processor", 2),
}


def write_pixtral_models(out_dir: Path) -> dict[str, Path]:
    paths = {}
    for name, (config, make, processor, merge) in PIXTRAL_MODELS.items():
        out = out_dir / name
        write_model(out, config, make(config))
        write_mistral_tokenizer(out, config["text_config"]["vocab_size"])
        pixtral_processor_files(out, processor, merge)
        paths[name] = out
    return paths


def check(paths: dict[str, Path]) -> None:
    """Smallest top-1/top-2 logit gap over 32 greedy steps from a fixed prompt (via mlx-lm)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    for name, path in paths.items():
        if (path / "preprocessor_config.json").exists():
            continue  # the VLMs: mlx-lm cannot load them; record_vlm*.py print their gaps instead
        model, _ = load_model(path)
        gaps, toks = [], []
        for tok, lp in generate_step(mx.array([1, 17, 254, 3, 99, 400, 12]), model, max_tokens=32,
                                     sampler=lambda x: mx.argmax(x, axis=-1)):
            top2 = mx.sort(lp)[-2:].tolist()
            gaps.append(top2[1] - top2[0])
            toks.append(int(tok))
        print(f"{name}: tokens {toks}\n  min top-2 gap {min(gaps):.4f}, "
              f"median {float(np.median(gaps)):.4f}, distinct tokens {len(set(toks))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    paths = write_all(args.out_dir)
    for name, p in paths.items():
        print(f"wrote {p}")
    if args.check:
        check(paths)


if __name__ == "__main__":
    main()
