//! GGUF checkpoints: llama.cpp names and metadata -> the Hugging Face names and `config.json`
//! fields the architectures read. MLX's loader gives F32/F16/BF16 tensors as they are and
//! Q4_0/Q4_1/Q8_0 as affine triples (`.weight` packed, `.scales`, `.biases`, group 32); it
//! refuses K-quants, which must be converted to safetensors first (`scripts/models/`).
//!
//! What stays architecture-specific (llama.cpp's Q/K row permutation for llama, Gemma's `1 + w`
//! norms) is undone by the plugin's `sanitize`, which is told the format is GGUF.

use std::path::Path;

use mlx_engine_plugin_api::io::{load_gguf, Loaded, MetaValue};
use mlx_engine_plugin_api::Weights;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// A GGUF file read into engine terms.
pub struct GgufModel {
    pub model_type: String,
    /// A config.json equivalent built from the metadata.
    pub config: Value,
    pub weights: Weights,
    /// All metadata, for the tokenizer and chat template.
    pub metadata: Vec<(String, MetaValue)>,
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Model { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads a scalar number of the metadata.
pub fn meta_number(meta: &[(String, MetaValue)], key: &str) -> Option<f64> {
    meta.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        MetaValue::Array(a) if a.size() == 1 => a.to_f64_host().ok().and_then(|v| v.first().copied()),
        _ => None,
    })
}

pub fn meta_string<'a>(meta: &'a [(String, MetaValue)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        MetaValue::String(s) => Some(s.as_str()),
        _ => None,
    })
}

/// llama.cpp tensor name -> Hugging Face name, for the architectures we map.
fn hf_name(arch: &str, name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let sub = match (arch, part) {
                (_, "attn_norm") => "input_layernorm",
                (_, "attn_q") => "self_attn.q_proj",
                (_, "attn_k") => "self_attn.k_proj",
                (_, "attn_v") => "self_attn.v_proj",
                (_, "attn_output") => "self_attn.o_proj",
                (_, "attn_q_norm") => "self_attn.q_norm",
                (_, "attn_k_norm") => "self_attn.k_norm",
                (_, "ffn_gate") => "mlp.gate_proj",
                (_, "ffn_up") => "mlp.up_proj",
                (_, "ffn_down") => "mlp.down_proj",
                ("gemma3", "post_attention_norm") => "post_attention_layernorm",
                ("gemma3", "ffn_norm") => "pre_feedforward_layernorm",
                ("gemma3", "post_ffw_norm") => "post_feedforward_layernorm",
                (_, "ffn_norm") => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{sub}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Builds the config.json fields an architecture reads from `<arch>.*` metadata.
fn config_from_metadata(path: &Path, arch: &str, meta: &[(String, MetaValue)], weights: &Weights) -> Result<Value> {
    let num = |k: &str| meta_number(meta, &format!("{arch}.{k}"));
    let need = |k: &str| num(k).ok_or_else(|| err(path, format!("GGUF metadata `{arch}.{k}` is missing")));
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let vocab = match num("vocab_size") {
        Some(v) => v,
        None => meta
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| if let MetaValue::Strings(s) = v { Some(s.len() as f64) } else { None })
            .ok_or_else(|| err(path, "GGUF has neither `vocab_size` nor `tokenizer.ggml.tokens`"))?,
    };
    let model_type = match arch {
        "gemma3" => "gemma3_text",
        a => a,
    };
    let mut c = Map::new();
    c.insert("model_type".into(), json!(model_type));
    c.insert("hidden_size".into(), json!(hidden as i64));
    c.insert("num_hidden_layers".into(), json!(need("block_count")? as i64));
    c.insert("intermediate_size".into(), json!(need("feed_forward_length")? as i64));
    c.insert("num_attention_heads".into(), json!(heads as i64));
    c.insert("num_key_value_heads".into(), json!(num("attention.head_count_kv").unwrap_or(heads) as i64));
    c.insert("rms_norm_eps".into(), json!(num("attention.layer_norm_rms_epsilon").unwrap_or(1e-6)));
    c.insert("vocab_size".into(), json!(vocab as i64));
    c.insert("tie_word_embeddings".into(), json!(!weights.contains("lm_head.weight")));
    if let Some(v) = num("context_length") {
        c.insert("max_position_embeddings".into(), json!(v as i64));
    }
    if let Some(v) = num("rope.freq_base") {
        c.insert("rope_theta".into(), json!(v));
    }
    if let Some(v) = num("attention.key_length") {
        c.insert("head_dim".into(), json!(v as i64));
    }
    if let Some(v) = num("attention.sliding_window") {
        c.insert("sliding_window".into(), json!(v as i64));
    }
    if arch == "gemma3" {
        c.insert("rope_local_base_freq".into(), json!(10000.0));
        c.insert("sliding_window_pattern".into(), json!(6));
        let hd = num("attention.key_length").unwrap_or(hidden / heads);
        c.insert("query_pre_attn_scalar".into(), json!(hd));
    }
    for key in ["bos_token_id", "eos_token_id"] {
        if let Some(v) = meta_number(meta, &format!("tokenizer.ggml.{key}")) {
            c.insert(key.into(), json!(v as i64));
        }
    }
    // MLX loads Q4_0/Q4_1/Q8_0 as group-32 affine triples; the bit width follows from the
    // packed width: cols(wq) * 32 / bits == cols(scales) * 32.
    let mut quant = Map::new();
    let mut default_bits = None;
    for (name, scales) in weights.iter().filter(|(n, _)| n.ends_with(".scales")) {
        let prefix = &name[..name.len() - ".scales".len()];
        let Some(wq) = weights.get(&format!("{prefix}.weight")) else { continue };
        let bits = wq.dim(-1)? / scales.dim(-1)?.max(1);
        default_bits.get_or_insert(bits);
        quant.insert(prefix.to_string(), json!({"group_size": 32, "bits": bits}));
    }
    if let Some(bits) = default_bits {
        quant.insert("group_size".into(), json!(32));
        quant.insert("bits".into(), json!(bits));
        c.insert("quantization".into(), Value::Object(quant));
    }
    Ok(Value::Object(c))
}

/// Loads a `.gguf` file: tensors renamed to Hugging Face names, config from metadata.
pub fn load(path: &Path) -> Result<GgufModel> {
    let Loaded { arrays, metadata } = load_gguf(path).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("gguf_tensor_to") {
            err(path, format!("{msg} (K-quant tensors cannot be loaded by MLX: convert the file to safetensors with scripts/models/)"))
        } else {
            err(path, msg)
        }
    })?;
    let arch = meta_string(&metadata, "general.architecture")
        .ok_or_else(|| err(path, "GGUF metadata `general.architecture` is missing"))?
        .to_string();
    let mut weights = Weights::new();
    for (name, a) in arrays {
        let Some(hf) = hf_name(&arch, &name) else {
            return Err(err(path, format!("tensor `{name}` has no mapping for GGUF architecture `{arch}`")));
        };
        weights.insert(hf, a);
    }
    let config = config_from_metadata(path, &arch, &metadata, &weights)?;
    let model_type = config["model_type"].as_str().unwrap_or(&arch).to_string();
    Ok(GgufModel { model_type, config, weights, metadata })
}
