//! What a loaded model is, in the terms a user compares models by: its true parameter count
//! (a quantized matrix counts its logical elements, not its packed 32-bit words) and how its
//! weights are stored (`bf16`, `4-bit affine, group 64`, GGUF's `Q4_1`).

use mlx_engine_plugin_api::{Dtype, Weights};
use serde_json::Value;

/// The group size of quantized layer `prefix` under a config's `quantization` table (its
/// per-layer entry, else the default, else MLX's default of 64).
fn group_size(quantization: Option<&Value>, prefix: &str) -> usize {
    let of = |v: Option<&Value>| v.and_then(|v| v.get("group_size")).and_then(Value::as_u64);
    of(quantization.and_then(|q| q.get(prefix))).or_else(|| of(quantization)).unwrap_or(64) as usize
}

/// Parameters of the model: dense tensors count their elements; a quantized weight (packed
/// `.weight` with `.scales` beside it) counts `rows x (scale columns x group size)`, and its
/// scales and biases count nothing.
pub fn parameter_count(weights: &Weights, quantization: Option<&Value>) -> usize {
    let quantized =
        |prefix: &str| weights.contains(&format!("{prefix}.scales")) && weights.contains(&format!("{prefix}.weight"));
    weights
        .iter()
        .map(|(name, a)| {
            let (prefix, part) = name.rsplit_once('.').unwrap_or((name, ""));
            match part {
                "scales" | "biases" if quantized(prefix) => 0,
                "weight" if quantized(prefix) && a.dtype() == Dtype::U32 => {
                    let Some(scales) = weights.get(&format!("{prefix}.scales")) else { return a.size() };
                    let cols = scales.shape().last().copied().unwrap_or(0) as usize;
                    let rows = scales.size() / cols.max(1);
                    rows * cols * group_size(quantization, prefix)
                }
                _ => a.size(),
            }
        })
        .sum()
}

/// How the checkpoint stores its weights, before any cast: the dtype most parameters have, or
/// the quantization (`4-bit affine, group 64`).
pub fn storage(weights: &Weights, quantization: Option<&Value>, checkpoint_dtype: Dtype) -> String {
    match quantization {
        Some(q) if weights.iter().any(|(n, _)| n.ends_with(".scales")) => {
            let bits = q.get("bits").and_then(Value::as_u64).unwrap_or(4);
            let mixed = q.as_object().is_some_and(|m| m.values().any(|v| v.is_object()));
            let more = if mixed { ", mixed per layer" } else { "" };
            format!("{bits}-bit affine, group {}{more}", group_size(Some(q), ""))
        }
        _ => checkpoint_dtype.name().to_string(),
    }
}
