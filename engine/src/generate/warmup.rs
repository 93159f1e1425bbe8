//! A throwaway pass through a freshly loaded model, so one-time device costs land in load time
//! rather than in the first request's time to first token.
//!
//! On a GPU the first forward pass of a process pays for MLX initialising cuBLAS and cuDNN and
//! for loading (or JIT-compiling, the first time on a machine) every kernel the pass meets:
//! about 0.5 s on an H200 for a 1B model, against 0.02 s for the prompt itself. llama.cpp does
//! the same at load.

use mlx_engine_plugin_api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine_plugin_api::{eval, Array, Dtype, DynModel, Input};

use super::prefill::{last_logits, token_ids};
use crate::cache::KvCache;
use crate::error::Result;

/// Tokens of the warm-up prompt: more than one, so the prefill kernels (masks, matrix-matrix
/// products) run as well as the decode ones.
const PROMPT: usize = 8;

/// A short prefill, one decode step and the greedy sample's ops, evaluated, into a cache that
/// is dropped, and one call of MLX's fused attention in the model's `dtype`. Token 0 exists in
/// every vocabulary.
pub fn warm_up(model: &dyn DynModel, dtype: Dtype) -> Result<()> {
    // Short prompts run attention as plain ops on CUDA (`cache::attention`), long ones through
    // the fused kernel, whose first call in a process initialises cuDNN (about 0.6 s).
    let x = Array::zeros(&[1, 1, PROMPT as i32, 64], dtype)?;
    eval(&[&scaled_dot_product_attention(&x, &x, &x, 1.0, AttnMask::Causal)?])?;
    let mut cache = KvCache::new(model.cache_layout());
    let logits = model.forward(Input::Tokens(&token_ids(&[0; PROMPT])?), &mut cache)?;
    let first = last_logits(&logits)?.log_softmax(-1)?.argmax(-1, false)?;
    eval(&[&first])?;
    let next = model.forward(Input::Tokens(&token_ids(&[first.item::<u32>()?])?), &mut cache)?;
    let logprobs = last_logits(&next)?.log_softmax(-1)?;
    let token = logprobs.argmax(-1, false)?;
    let logprob = logprobs.take(&token, 0)?;
    eval(&[&token, &logprob])?;
    Ok(())
}
