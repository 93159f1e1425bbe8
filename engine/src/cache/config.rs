//! The user-facing knobs of the KV cache and their validation.
//!
//! Validation lives here, next to the cache, so every front end (CLI, host API, prompt-cache
//! wrapper) refuses the same values with the same words. Checks that need the model (the head
//! dimension) are a separate call, [`CacheConfig::check_head_dim`], because the cache layout
//! an architecture declares does not carry it.

use crate::{Error, Result};

/// Positions a rotating cache (`max_kv_size`) always keeps from the start of the sequence, as
/// mlx-lm's `make_prompt_cache` does (`RotatingKVCache(max_size, keep=4)`): the first tokens
/// act as attention sinks, and dropping them degrades generation far more than dropping any
/// other old position.
pub const KEEP: usize = 4;

/// Bit widths MLX's affine quantization supports for KV caches (mlx-lm and mlx-engine accept
/// the same set).
pub const KV_BITS: [i32; 5] = [2, 3, 4, 6, 8];

/// Group sizes MLX's affine quantization supports.
pub const KV_GROUP_SIZES: [i32; 3] = [32, 64, 128];

/// How the engine builds and bounds a sequence's KV cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bounds every full-attention layer to this many positions: the first [`KEEP`] plus the
    /// most recent `max_kv_size - KEEP`. Sliding-window layers the model declares keep their
    /// own window whatever this is (see `docs/kv-cache.md`).
    pub max_kv_size: Option<usize>,
    /// Store keys and values quantized to this many bits (affine, per group of the head
    /// dimension); attention then runs through quantized matmuls.
    pub kv_bits: Option<i32>,
    /// Elements of the head dimension sharing one scale and bias. Default 64.
    pub kv_group_size: i32,
    /// A layer is stored dense until it holds this many positions, then converted once (at
    /// the start of the next update) and quantized from there on. Default 0: quantized from a
    /// layer's second update on, since its first (the first prefill chunk) is always dense, as
    /// in mlx-lm, which converts after each model call.
    pub quantized_kv_start: usize,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig { max_kv_size: None, kv_bits: None, kv_group_size: 64, quantized_kv_start: 0 }
    }
}

fn param(name: &str, reason: String) -> Error {
    Error::Param { name: name.into(), reason }
}

impl CacheConfig {
    /// Checks each value on its own. `kv_group_size` or `quantized_kv_start` set without
    /// `kv_bits` is not an error here: they are simply unused, and whether a front end treats
    /// that as a mistake (mlx-engine raises) is the front end's call, since only it knows
    /// whether the user actually passed them or they are defaults.
    pub fn validate(&self) -> Result<()> {
        if let Some(bits) = self.kv_bits {
            if !KV_BITS.contains(&bits) {
                return Err(param("kv_bits", format!("{bits} is not supported; use 2, 3, 4, 6 or 8")));
            }
        }
        if !KV_GROUP_SIZES.contains(&self.kv_group_size) {
            return Err(param("kv_group_size", format!("{} is not supported; use 32, 64 or 128", self.kv_group_size)));
        }
        if let Some(m) = self.max_kv_size {
            // A rotating cache always keeps the first KEEP positions; with no room beyond them
            // it could never hold the token being generated.
            if m <= KEEP {
                return Err(param(
                    "max_kv_size",
                    format!(
                        "{m} is too small; it must be at least {} (the first {KEEP} positions are always kept, \
                         plus at least one recent position)",
                        KEEP + 1
                    ),
                ));
            }
            if m > i32::MAX as usize {
                return Err(param("max_kv_size", format!("{m} is larger than {}", i32::MAX)));
            }
        }
        if self.quantized_kv_start > i32::MAX as usize {
            return Err(param(
                "quantized_kv_start",
                format!("{} is larger than {}", self.quantized_kv_start, i32::MAX),
            ));
        }
        Ok(())
    }

    /// Checks the quantization group against the model's head dimension: MLX quantizes along
    /// the head dimension in whole groups, so the group size must divide it. Nothing to check
    /// when `kv_bits` is unset.
    pub fn check_head_dim(&self, head_dim: i32) -> Result<()> {
        if self.kv_bits.is_none() {
            return Ok(());
        }
        let g = self.kv_group_size;
        if g <= 0 || head_dim <= 0 || head_dim % g != 0 {
            return Err(param("kv_group_size", format!("{g} does not divide the model's head dimension {head_dim}")));
        }
        Ok(())
    }

    /// The quantization settings the layers use, once validated.
    pub(crate) fn quant(&self) -> Option<QuantSpec> {
        self.kv_bits.map(|bits| QuantSpec {
            bits,
            group_size: self.kv_group_size,
            start: self.quantized_kv_start as i32,
        })
    }
}

/// Per-layer quantization settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuantSpec {
    pub bits: i32,
    pub group_size: i32,
    /// Offset from which the layer is stored quantized.
    pub start: i32,
}
