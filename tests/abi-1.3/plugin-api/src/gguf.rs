//! What a plugin sees of a GGUF file when it maps it to its own config ([`ModelArch::config_from_gguf`](crate::ModelArch::config_from_gguf)),
//! and the llama.cpp tensor names most architectures share.
//!
//! The engine loads the file, renames tensors only structurally (`token_embd` ->
//! `model.embed_tokens`, `output_norm` -> `model.norm`, `output` -> `lm_head`,
//! `blk.N.<part>` -> `model.layers.N.<part>`, everything else unchanged) and hands the plugin
//! the metadata and the tensor shapes as [`GgufInfo`]. Which `<part>` means which checkpoint
//! name is the architecture's knowledge: its `sanitize` (told [`WeightsFormat::Gguf`](crate::WeightsFormat::Gguf))
//! renames, usually with [`rename_llama_cpp_parts`] plus its own exceptions.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::traits::Weights;

/// A GGUF file's metadata and tensor shapes, as JSON crosses the boundary.
///
/// Metadata values: numbers (a one-element GGUF array becomes a number), strings, lists of
/// numbers, and for lists of strings (vocabularies, merges) only their length, as
/// `{"strings": n}`, since no config needs their text.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GgufInfo {
    pub metadata: BTreeMap<String, Value>,
    /// Tensor name (after the structural renaming) -> shape.
    pub tensors: BTreeMap<String, Vec<i64>>,
}

impl GgufInfo {
    pub fn from_json(text: &str) -> Result<GgufInfo> {
        serde_json::from_str(text).map_err(|e| Error::Config(format!("GGUF description: {e}")))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture").ok_or_else(|| missing("general.architecture"))
    }

    pub fn number(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(Value::as_f64)
    }

    /// A number that must be there.
    pub fn need(&self, key: &str) -> Result<f64> {
        self.number(key).ok_or_else(|| missing(key))
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// The length of a list of strings (`tokenizer.ggml.tokens`).
    pub fn strings_len(&self, key: &str) -> Option<usize> {
        self.metadata.get(key).and_then(|v| v.get("strings")).and_then(Value::as_u64).map(|n| n as usize)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// `vocab_size`: `<arch>.vocab_size`, else the tokenizer's length.
    pub fn vocab_size(&self, arch: &str) -> Result<f64> {
        self.number(&format!("{arch}.vocab_size"))
            .or_else(|| self.strings_len("tokenizer.ggml.tokens").map(|n| n as f64))
            .ok_or_else(|| Error::Config("GGUF has neither `vocab_size` nor `tokenizer.ggml.tokens`".into()))
    }
}

fn missing(key: &str) -> Error {
    Error::Config(format!("GGUF metadata `{key}` is missing"))
}

/// The Hugging Face name of a llama.cpp per-layer part, for the parts llama-family checkpoints
/// share. Architectures with other meanings (gemma3's `ffn_norm`) map those first.
pub fn llama_cpp_part(part: &str) -> Option<&'static str> {
    Some(match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    })
}

/// Renames every `model.layers.N.<part>.<suffix>` through `map` (then [`llama_cpp_part`]); a
/// layer tensor neither knows is an error naming it, so a checkpoint of another architecture
/// fails here rather than as a missing tensor later.
pub fn rename_llama_cpp_parts(weights: Weights, map: impl Fn(&str) -> Option<&'static str>) -> Result<Weights> {
    weights
        .into_iter()
        .map(|(name, a)| {
            let Some(rest) = name.strip_prefix("model.layers.") else { return Ok((name, a)) };
            let (layer, tail) = rest.split_once('.').ok_or_else(|| unmapped(&name))?;
            let (part, suffix) = tail.rsplit_once('.').ok_or_else(|| unmapped(&name))?;
            let hf = map(part).or_else(|| llama_cpp_part(part)).ok_or_else(|| unmapped(&name))?;
            Ok((format!("model.layers.{layer}.{hf}.{suffix}"), a))
        })
        .collect()
}

fn unmapped(name: &str) -> Error {
    Error::Weights(format!("GGUF tensor `{name}` has no mapping for this architecture"))
}

/// llama.cpp stores the Q and K projection rows of each head interleaved for its rope kernel
/// (`[half, 2]` pairs instead of `[2, half]`). This undoes it, so the standard (non-traditional)
/// RoPE applies, for `a` of `[heads * head_dim, ..]` rows. Works for packed quantized rows too
/// (rows are permuted, columns untouched).
pub fn unpermute_qk_rows(a: &crate::Array, heads: i32) -> Result<crate::Array> {
    let s = a.shape();
    if heads < 1 || s.is_empty() || s[0] % (2 * heads) != 0 {
        return Err(Error::Weights(format!(
            "cannot un-permute Q/K rows: {} rows is not a multiple of 2 x {heads} heads",
            s.first().copied().unwrap_or(0)
        )));
    }
    let mut shape = vec![heads, s[0] / heads / 2, 2];
    shape.extend(&s[1..]);
    a.reshape(&shape)?.swapaxes(1, 2)?.reshape(&s)
}
