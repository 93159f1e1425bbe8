//! The engine-owned KV cache behind the forward context.
//!
//! Architectures never touch keys and values after handing them to
//! [`ForwardContext::attention`]: the cache appends them, builds the mask for the layer's kind
//! (causal, sliding window) and runs attention. This first version keeps every position of
//! every layer; growth in steps, rotation, trimming, quantization and prefix reuse arrive with
//! the caching work and stay behind this same interface.

use mlx_engine_plugin_api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine_plugin_api::{concatenate, where_, Array, AttentionOptions, Dtype, ForwardContext, LayerCache, Result};

/// Keys and values of one layer, `[B, Hkv, T, D]`.
#[derive(Default)]
struct LayerKv {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
}

/// A growing KV cache for one sequence.
pub struct KvCache {
    layout: Vec<LayerCache>,
    layers: Vec<LayerKv>,
}

impl KvCache {
    pub fn new(layout: Vec<LayerCache>) -> KvCache {
        let layers = layout.iter().map(|_| LayerKv::default()).collect();
        KvCache { layout, layers }
    }

    /// Number of positions already cached (layer 0's offset).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.offset as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn layer(&self, layer: usize) -> Result<&LayerKv> {
        self.layers.get(layer).ok_or_else(|| out_of_range(layer, self.layers.len()))
    }
}

fn out_of_range(layer: usize, n: usize) -> mlx_engine_plugin_api::Error {
    mlx_engine_plugin_api::Error::Boundary(format!(
        "the model attended through layer {layer}, but its cache layout declares {n} layers"
    ))
}

/// Boolean mask `[L, T]`: query `i` (absolute position `offset + i`) may see key `j` when
/// `j <= offset + i` and, for a window `w`, `offset + i - j < w`.
fn window_mask(offset: i32, queries: i32, keys: i32, window: Option<u32>) -> Result<Array> {
    let q = Array::arange(offset as f64, (offset + queries) as f64, 1.0, Dtype::I32)?.reshape(&[queries, 1])?;
    let k = Array::arange(0.0, keys as f64, 1.0, Dtype::I32)?.reshape(&[1, keys])?;
    let causal = k.less_equal(&q)?;
    match window {
        None => Ok(causal),
        Some(w) => {
            let dist = q.subtract(&k)?;
            causal.logical_and(&dist.less(&Array::scalar(w as f64, Dtype::I32)?)?)
        }
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
    let scores = q.matmul(&k.swapaxes(-1, -2)?)?.multiply(&q.scalar_like(scale as f64)?)?;
    let scores = scores.divide(&q.scalar_like(softcap as f64)?)?.tanh()?.multiply(&q.scalar_like(softcap as f64)?)?;
    let scores = match mask {
        Some(m) => where_(m, &scores, &Array::scalar(f64::NEG_INFINITY, scores.dtype())?)?,
        None => scores,
    };
    scores.softmax(&[-1], true)?.matmul(&v)
}

impl ForwardContext for KvCache {
    fn offset(&self, layer: usize) -> Result<i32> {
        Ok(self.layer(layer)?.offset)
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
        let n = self.layers.len();
        let kind = *self.layout.get(layer).ok_or_else(|| out_of_range(layer, n))?;
        let slot = &mut self.layers[layer];
        let new = k.dim(2)?;
        let offset = slot.offset;
        let (keys, values) = match (&slot.keys, &slot.values) {
            (Some(pk), Some(pv)) => (concatenate(&[pk, k], 2)?, concatenate(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        slot.keys = Some(keys.clone());
        slot.values = Some(values.clone());
        slot.offset += new;
        let total = keys.dim(2)?;
        let window = match kind {
            LayerCache::Full => None,
            LayerCache::SlidingWindow { window } => Some(window),
        };
        let needs_window = window.is_some_and(|w| total as u32 > w);
        if let Some(cap) = options.logit_softcap {
            let mask = if new > 1 || needs_window { Some(window_mask(offset, new, total, window)?) } else { None };
            return manual_attention(q, &keys, &values, scale, mask.as_ref(), cap);
        }
        if needs_window {
            let mask = window_mask(offset, new, total, window)?;
            scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::Array(&mask))
        } else if new > 1 {
            scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::Causal)
        } else {
            scaled_dot_product_attention(q, &keys, &values, scale, AttnMask::None)
        }
    }
}
