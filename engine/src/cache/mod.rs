//! The engine-owned KV cache behind the forward context.
//!
//! Architectures never touch keys and values after handing them to
//! [`ForwardContext::attention`]: the cache stores them, builds the mask for the layer's kind
//! and runs attention. Full-attention layers keep every position in a buffer that grows in
//! steps of [`STEP`] positions (so decoding writes in place instead of copying the whole cache
//! every token); sliding-window layers keep only the last `window` positions in a ring buffer,
//! as mlx-lm's `RotatingKVCache` does. Trimming, quantization and prefix reuse arrive with the
//! caching work and stay behind this same interface.

mod layer;

use mlx_engine_plugin_api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine_plugin_api::{where_, Array, AttentionOptions, Dtype, ForwardContext, LayerCache, Result};

pub use layer::STEP;
use layer::{Layer, Update};

/// The KV cache of one sequence: one layer cache per attention layer of the model.
pub struct KvCache {
    layers: Vec<Layer>,
}

impl KvCache {
    pub fn new(layout: Vec<LayerCache>) -> KvCache {
        KvCache { layers: layout.into_iter().map(Layer::new).collect() }
    }

    /// Number of positions processed so far (layer 0's offset).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.offset() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by keys and values (allocated capacity, not just the used part).
    pub fn nbytes(&self) -> usize {
        self.layers.iter().map(Layer::nbytes).sum()
    }

    /// The arrays holding the cached keys and values, to evaluate the cache without the
    /// logits (prefill computes only what later tokens need).
    pub fn state(&self) -> Vec<&Array> {
        self.layers.iter().flat_map(Layer::state).collect()
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut Layer> {
        let n = self.layers.len();
        self.layers.get_mut(layer).ok_or_else(|| out_of_range(layer, n))
    }
}

fn out_of_range(layer: usize, n: usize) -> mlx_engine_plugin_api::Error {
    mlx_engine_plugin_api::Error::Boundary(format!(
        "the model attended through layer {layer}, but its cache layout declares {n} layers"
    ))
}

/// Boolean mask `[L, T]` for queries at absolute positions `q_start..q_start + L` over keys at
/// `k_start..k_start + T`: a query sees a key at or before itself and, with a window `w`, less
/// than `w` positions back.
pub fn attention_mask(q_start: i32, queries: i32, k_start: i32, keys: i32, window: Option<u32>) -> Result<Array> {
    let q = Array::arange(q_start as f64, (q_start + queries) as f64, 1.0, Dtype::I32)?.reshape(&[queries, 1])?;
    let k = Array::arange(k_start as f64, (k_start + keys) as f64, 1.0, Dtype::I32)?.reshape(&[1, keys])?;
    let causal = k.less_equal(&q)?;
    match window {
        None => Ok(causal),
        Some(w) => causal.logical_and(&q.subtract(&k)?.less(&Array::scalar(w as f64, Dtype::I32)?)?),
    }
}

/// Attention written out with plain ops, for what the fused kernel cannot do (softcapping).
fn manual_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>, softcap: f32) -> Result<Array> {
    let (hq, hkv) = (q.dim(1)?, k.dim(1)?);
    let (k, v) = if hq != hkv {
        // Grouped-query attention: repeat each kv head for its group of query heads.
        let rep = hq / hkv;
        let expand = |a: &Array| -> Result<Array> {
            let s = a.shape();
            a.expand_dims(&[2])?.broadcast_to(&[s[0], s[1], rep, s[2], s[3]])?.reshape(&[s[0], hq, s[2], s[3]])
        };
        (expand(k)?, expand(v)?)
    } else {
        (k.clone(), v.clone())
    };
    let cap = q.scalar_like(softcap as f64)?;
    let scores = q.matmul(&k.swapaxes(-1, -2)?)?.multiply(&q.scalar_like(scale as f64)?)?;
    let scores = scores.divide(&cap)?.tanh()?.multiply(&cap)?;
    let scores = match mask {
        Some(m) => where_(m, &scores, &Array::scalar(f64::NEG_INFINITY, scores.dtype())?)?,
        None => scores,
    };
    scores.softmax(&[-1], true)?.matmul(&v)
}

impl ForwardContext for KvCache {
    fn offset(&self, layer: usize) -> Result<i32> {
        let n = self.layers.len();
        Ok(self.layers.get(layer).ok_or_else(|| out_of_range(layer, n))?.offset())
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> Result<Array> {
        let queries = q.dim(2)?;
        let Update { keys, values, k_start, window, needs_mask } = self.layer_mut(layer)?.update(k, v)?;
        let q_start = k_start + keys.dim(2)? - queries;
        let mask = if needs_mask {
            Some(attention_mask(q_start, queries, k_start, keys.dim(2)?, window)?)
        } else {
            None
        };
        if let Some(cap) = options.logit_softcap {
            return manual_attention(q, &keys, &values, scale, mask.as_ref(), cap);
        }
        match &mask {
            // A plain causal mask aligned to the end of the keys is what MLX's fused kernel
            // builds itself; only windows need an explicit mask.
            Some(_) if window.is_none() => {
                scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::Causal)
            }
            Some(m) => scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::Array(m)),
            None => scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::None),
        }
    }
}
