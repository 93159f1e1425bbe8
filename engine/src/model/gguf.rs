//! GGUF checkpoints. MLX's loader gives F32/F16/BF16 tensors as they are and Q4_0/Q4_1/Q8_0 as
//! affine triples (`.weight` packed, `.scales`, `.biases`, group 32); it refuses K-quants, which
//! must be converted to safetensors first (`scripts/models/`).
//!
//! The engine knows only what is common to every GGUF file: the structural renaming of tensors
//! (`mlx_engine_plugin_api::gguf` documents it), the quantization layout of MLX's loader and
//! the tokenizer metadata. What the metadata and the per-layer tensor names mean is the
//! architecture's: the plugin resolved for `general.architecture` maps the metadata to its
//! config (`ModelArch::config_from_gguf`), and its `sanitize`, told the format is GGUF, renames
//! the layer tensors and undoes llama.cpp's layouts (llama's Q/K row permutation, Gemma's
//! `1 + w` norms).

use std::path::Path;

use mlx_engine_plugin_api::io::{load_gguf, Loaded, MetaValue};
use mlx_engine_plugin_api::Weights;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::plugin_host::PluginHost;

/// A GGUF file read into engine terms.
pub struct GgufModel {
    pub model_type: String,
    /// A config.json equivalent built from the metadata.
    pub config: Value,
    pub weights: Weights,
    /// All metadata, for the tokenizer and chat template.
    pub metadata: Vec<(String, MetaValue)>,
    /// How the file stores its tensors (see [`super::gguf_header::GgufHeader::storage`]).
    pub storage: String,
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

/// The structural renaming every architecture shares; per-layer part names stay llama.cpp's.
fn structural_name(name: &str) -> String {
    let (stem, suffix) = match name.rsplit_once('.') {
        Some(x) => x,
        None => return name.to_string(),
    };
    let stem = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        s => match s.strip_prefix("blk.") {
            Some(rest) => format!("model.layers.{rest}"),
            None => return name.to_string(),
        },
    };
    format!("{stem}.{suffix}")
}

/// The metadata and tensor shapes as the plugin's GGUF hook reads them (`GgufInfo`).
fn describe(meta: &[(String, MetaValue)], weights: &Weights) -> Result<String> {
    let mut m = Map::new();
    for (k, v) in meta {
        let value = match v {
            MetaValue::String(s) => json!(s),
            MetaValue::Strings(list) => json!({ "strings": list.len() }),
            MetaValue::Empty => Value::Null,
            // Long numeric lists (token types, scores) are tokenizer data no config needs.
            MetaValue::Array(a) if a.size() > 1024 => continue,
            MetaValue::Array(a) => {
                let nums = a.to_f64_host()?;
                if a.ndim() == 0 || (a.size() == 1 && a.ndim() <= 1) {
                    json!(nums.first().copied())
                } else {
                    json!(nums)
                }
            }
        };
        m.insert(k.clone(), value);
    }
    let tensors: Map<String, Value> = weights.iter().map(|(n, a)| (n.to_string(), json!(a.shape()))).collect();
    Ok(json!({ "metadata": m, "tensors": tensors }).to_string())
}

/// `model.layers.N.<part>` with llama.cpp's part renamed to the Hugging Face one, as
/// `gguf::rename_llama_cpp_parts` does for the tensors.
fn hf_layer_name(prefix: &str) -> Option<String> {
    let rest = prefix.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    Some(format!("model.layers.{layer}.{}", mlx_engine_plugin_api::gguf::llama_cpp_part(part)?))
}

/// What every GGUF config gets on top of the plugin's mapping: MLX's quantization layout and
/// the tokenizer's special ids.
fn add_generic_fields(config: &mut Map<String, Value>, meta: &[(String, MetaValue)], weights: &Weights) -> Result<()> {
    for key in ["bos_token_id", "eos_token_id"] {
        if let Some(v) = meta_number(meta, &format!("tokenizer.ggml.{key}")) {
            config.entry(key).or_insert(json!(v as i64));
        }
    }
    // MLX loads Q4_0/Q4_1/Q8_0 as group-32 affine triples; the bit width follows from the
    // packed width: cols(wq) * 32 / bits == cols(scales) * 32. Files mix widths (llama.cpp's
    // Q4_1 keeps the embedding at Q8_0), so the default is the most common width and the rest
    // are per-layer overrides. Layer tensors still carry llama.cpp part names here, which the
    // plugin renames in `sanitize`; an override is written under both names, so it applies
    // whichever the plugin looks up.
    let mut widths: Vec<(String, i32)> = Vec::new();
    for (name, scales) in weights.iter().filter(|(n, _)| n.ends_with(".scales")) {
        let prefix = &name[..name.len() - ".scales".len()];
        let Some(wq) = weights.get(&format!("{prefix}.weight")) else { continue };
        widths.push((prefix.to_string(), wq.dim(-1)? / scales.dim(-1)?.max(1)));
    }
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for (_, bits) in &widths {
        match counts.iter_mut().find(|(b, _)| b == bits) {
            Some((_, n)) => *n += 1,
            None => counts.push((*bits, 1)),
        }
    }
    if let Some(&(default_bits, _)) = counts.iter().max_by_key(|&&(b, n)| (n, b)) {
        let mut quant = Map::new();
        quant.insert("group_size".into(), json!(32));
        quant.insert("bits".into(), json!(default_bits));
        for (prefix, bits) in widths.into_iter().filter(|&(_, b)| b != default_bits) {
            let entry = json!({"group_size": 32, "bits": bits});
            if let Some(renamed) = hf_layer_name(&prefix) {
                quant.insert(renamed, entry.clone());
            }
            quant.insert(prefix, entry);
        }
        config.insert("quantization".into(), Value::Object(quant));
    }
    Ok(())
}

/// Loads a `.gguf` file: tensors renamed structurally, config from the plugin that `host`
/// resolves for the file's `general.architecture`.
pub fn load(path: &Path, host: &PluginHost) -> Result<GgufModel> {
    // MLX's reader follows the file's lengths and offsets blindly; check them first.
    let header = super::gguf_header::check_file(path)?;
    let Loaded { arrays, metadata } = load_gguf(path).map_err(|e| err(path, e.to_string()))?;
    let arch = meta_string(&metadata, "general.architecture")
        .ok_or_else(|| err(path, "GGUF metadata `general.architecture` is missing"))?
        .to_string();
    let weights: Weights = arrays.into_iter().map(|(name, a)| (structural_name(&name), a)).collect();
    let resolved = host.resolve_text(&arch)?;
    let mapped = resolved.gguf_config(&describe(&metadata, &weights)?).map_err(|e| match e {
        Error::Plugin { path: plugin, reason } => err(path, format!("{reason} (plugin {})", plugin.display())),
        e => e,
    })?;
    let config_text = mapped.ok_or_else(|| {
        err(
            path,
            format!("{} does not map GGUF files of architecture `{arch}` (it has no GGUF hook)", resolved.provider),
        )
    })?;
    let mut config = match serde_json::from_str(&config_text) {
        Ok(Value::Object(c)) => c,
        _ => {
            return Err(err(
                path,
                format!("{} mapped the GGUF metadata to something other than a JSON object", resolved.provider),
            ))
        }
    };
    add_generic_fields(&mut config, &metadata, &weights)?;
    let model_type = match config.get("model_type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            config.insert("model_type".into(), json!(arch));
            arch
        }
    };
    Ok(GgufModel { model_type, config: Value::Object(config), weights, metadata, storage: header.storage() })
}
