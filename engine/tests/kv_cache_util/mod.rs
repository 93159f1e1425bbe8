//! Helpers shared by the KV cache tests: random data, feeding a cache in chunks, and
//! references computed as one masked attention per chunk over explicitly chosen keys.
#![allow(dead_code)]

use mlx_engine::api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine::api::{
    concatenate, dequantize, quantize, random, where_, Array, AttentionOptions, Dtype, ForwardContext,
};
use mlx_engine::cache::KvCache;

/// The usual attention scale, `1 / sqrt(head_dim)`.
pub fn scale(q: &Array) -> f32 {
    1.0 / (q.dim(-1).unwrap() as f32).sqrt()
}

pub fn rand(shape: &[i32], seed: u64) -> Array {
    let _ = mlx_engine::mlx::ffi::ops_table();
    random::normal(shape, 0.0, 1.0, Dtype::F32, Some(&random::key(seed).unwrap())).unwrap()
}

/// Grouped-query data: 4 query heads over 2 kv heads, `t` positions, head dim `d`.
pub fn qkv_d(t: i32, d: i32, seed: u64) -> (Array, Array, Array) {
    (rand(&[1, 4, t, d], seed), rand(&[1, 2, t, d], seed + 1), rand(&[1, 2, t, d], seed + 2))
}

pub fn max_diff(a: &Array, b: &Array) -> f32 {
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn mean_diff(a: &Array, b: &Array) -> f32 {
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32
}

pub fn part(a: &Array, start: i32, stop: i32) -> Array {
    a.slice_axis(2, start, stop).unwrap()
}

/// Feeds positions `0..sum(chunks)` of layer 0 through `cache` (which may already hold some
/// positions: feeding starts at its offset) and returns the concatenated outputs.
pub fn feed(cache: &mut KvCache, q: &Array, k: &Array, v: &Array, chunks: &[i32], softcap: Option<f32>) -> Array {
    let mut outs = Vec::new();
    let mut at = cache.offset(0).unwrap();
    for &n in chunks {
        let opts = AttentionOptions { logit_softcap: softcap };
        let (qp, kp, vp) = (part(q, at, at + n), part(k, at, at + n), part(v, at, at + n));
        outs.push(cache.attention(0, &qp, &kp, &vp, scale(q), &opts).unwrap());
        at += n;
        assert_eq!(cache.offset(0).unwrap(), at);
    }
    let refs: Vec<&Array> = outs.iter().collect();
    concatenate(&refs, 2).unwrap()
}

/// `[L, T]` visibility for queries `q0..q0+L` over keys `0..T`: causal, and a key older than
/// `span` positions is visible only when it is one of the first `keep`.
pub fn sink_mask(q0: i32, l: i32, t: i32, keep: i32, span: Option<i32>) -> Array {
    let q = Array::arange(q0 as f64, (q0 + l) as f64, 1.0, Dtype::I32).unwrap().reshape(&[l, 1]).unwrap();
    let k = Array::arange(0.0, t as f64, 1.0, Dtype::I32).unwrap().reshape(&[1, t]).unwrap();
    let causal = k.less_equal(&q).unwrap();
    let Some(span) = span else { return causal };
    let recent = q.subtract(&k).unwrap().less(&Array::scalar(span as f64, Dtype::I32).unwrap()).unwrap();
    let sink = k.less(&Array::scalar(keep as f64, Dtype::I32).unwrap()).unwrap();
    causal.logical_and(&recent.logical_or(&sink).unwrap()).unwrap()
}

/// GQA by repetition: `[B, Hkv, T, D]` -> `[B, Hq, T, D]`.
fn repeat_heads(a: &Array, hq: i32) -> Array {
    let s = a.shape();
    let rep = hq / s[1];
    a.expand_dims(&[2])
        .unwrap()
        .broadcast_to(&[s[0], s[1], rep, s[2], s[3]])
        .unwrap()
        .reshape(&[s[0], hq, s[2], s[3]])
        .unwrap()
}

/// One masked attention of `q` over `k`/`v` written with plain ops (no cache, no fused kernel
/// when softcapping).
pub fn masked_attention(q: &Array, k: &Array, v: &Array, mask: &Array, softcap: Option<f32>) -> Array {
    match softcap {
        None => scaled_dot_product_attention(q, k, v, scale(q), AttnMask::Array(mask)).unwrap(),
        Some(cap) => {
            let hq = q.dim(1).unwrap();
            let scores = q.matmul(&repeat_heads(k, hq).swapaxes(-1, -2).unwrap()).unwrap();
            let scores = (&(&(&scores * scale(q)).unwrap() / cap).unwrap().tanh().unwrap() * cap).unwrap();
            let scores = where_(mask, &scores, &Array::scalar(f64::NEG_INFINITY, Dtype::F32).unwrap()).unwrap();
            scores.softmax(&[-1], true).unwrap().matmul(&repeat_heads(v, hq)).unwrap()
        }
    }
}

/// Reference for feeding `chunks`: each chunk's queries attend over all keys up to the chunk's
/// end with `sink_mask`, taking keys from `quantized` (dequantized data) for the chunks a
/// quantized cache attends quantized, and from `dense` for the others: the first chunk, and
/// chunks that start before `quant_from` (the cache's `quantized_kv_start`). The first chunk is
/// dense whatever the start, because a layer converts between updates (as mlx-lm converts after
/// each model call), never before its first one.
pub struct Reference<'a> {
    pub q: &'a Array,
    pub dense: (&'a Array, &'a Array),
    pub quantized: Option<(Array, Array)>,
    /// `quantized_kv_start`: chunks starting at or after it (and after position 0) are quantized.
    pub quant_from: i32,
    pub keep: i32,
    pub span: Option<i32>,
    pub softcap: Option<f32>,
}

impl Reference<'_> {
    pub fn run(&self, chunks: &[i32]) -> Array {
        let mut outs = Vec::new();
        let mut at = 0;
        for &n in chunks {
            let (k, v) = match &self.quantized {
                Some((kq, vq)) if at > 0 && at >= self.quant_from => (kq, vq),
                _ => self.dense,
            };
            let mask = sink_mask(at, n, at + n, self.keep, self.span);
            outs.push(masked_attention(
                &part(self.q, at, at + n),
                &part(k, 0, at + n),
                &part(v, 0, at + n),
                &mask,
                self.softcap,
            ));
            at += n;
        }
        let refs: Vec<&Array> = outs.iter().collect();
        concatenate(&refs, 2).unwrap()
    }
}

/// What a quantized cache stores, dequantized: quantization is per position, so quantizing the
/// whole sequence at once gives the same values.
pub fn roundtrip(a: &Array, group: i32, bits: i32) -> Array {
    let (w, s, b) = quantize(a, group, bits).unwrap();
    dequantize(&w, &s, Some(&b), group, bits).unwrap()
}
