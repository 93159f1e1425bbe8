//! Masks and the attention kernels behind the cache: MLX's fused attention for dense keys,
//! plain ops where the fused kernel cannot help (logit softcapping) or costs more than it saves
//! (small multi-query calls on CUDA), and attention through quantized matmuls for quantized keys
//! (mlx-lm's `quantized_scaled_dot_product_attention`).

use std::sync::OnceLock;

use mlx_engine_plugin_api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{concatenate, quantized_matmul, where_, Array, Dtype, Error, Result};

use super::tensor::Tensor;

/// Which keys each query may see, as decided by the layer that produced the keys.
pub(crate) enum Mask {
    /// Every query sees every key (one query over keys that are all visible to it).
    None,
    /// Queries are the last `L` of the `T` keys, in order, and see keys at or before
    /// themselves: what MLX's fused kernel builds itself.
    Causal,
    /// An explicit boolean `[L, T]` mask (true = attend): windows, and rotating caches whose
    /// keys are not one run of consecutive positions.
    Explicit(Array),
}

/// Boolean mask `[L, T]` for queries at absolute positions `q_start..q_start + L` over keys at
/// `k_start..k_start + T`: a query sees a key at or before itself and, with a window `w`, less
/// than `w` positions back.
pub fn attention_mask(q_start: i32, queries: i32, k_start: i32, keys: i32, window: Option<u32>) -> Result<Array> {
    let q = positions(q_start, queries)?.reshape(&[queries, 1])?;
    let k = positions(k_start, keys)?.reshape(&[1, keys])?;
    let causal = k.less_equal(&q)?;
    match window {
        None => Ok(causal),
        Some(w) => causal.logical_and(&q.subtract(&k)?.less(&Array::scalar(w as f64, Dtype::I32)?)?),
    }
}

fn positions(start: i32, n: i32) -> Result<Array> {
    Array::arange(start as f64, (start + n) as f64, 1.0, Dtype::I32)
}

fn int(v: i32) -> Result<Array> {
    Array::scalar(v as f64, Dtype::I32)
}

/// Which absolute position each key handed to attention holds.
#[derive(Clone, Debug)]
pub(crate) enum KeyPositions {
    /// Positions `0..keys`, in order.
    Consecutive { keys: i32 },
    /// A full ring buffer of `size` entries just after entry `written` got position `newest`:
    /// entries `0..keep` are positions `0..keep`, the others run in time order from
    /// `written + 1` round to `written`.
    Ring { keep: i32, size: i32, written: i32, newest: i32 },
    /// Sinks, then consecutive recent positions, as [`RingKeys`] describes.
    Gathered(RingKeys),
}

impl KeyPositions {
    /// The positions as an int32 array `[T]`.
    pub fn to_array(&self) -> Result<Array> {
        match self {
            KeyPositions::Consecutive { keys } => positions(0, *keys),
            KeyPositions::Ring { keep, size, written, newest } => {
                let span = size - keep;
                // Entry j (keep <= j < size) is `(written - j) mod span` steps older than `newest`.
                let back = int(*written)?.subtract(&positions(*keep, span)?)?;
                let back = where_(&back.less(&int(0)?)?, &back.add(&int(span)?)?, &back)?;
                let ring = int(*newest)?.subtract(&back)?;
                if *keep > 0 {
                    concatenate(&[&positions(0, *keep)?, &ring], 0)
                } else {
                    Ok(ring)
                }
            }
            KeyPositions::Gathered(layout) => {
                let recent = positions(layout.recent_start, layout.keys - layout.sinks)?;
                if layout.sinks > 0 {
                    concatenate(&[&positions(0, layout.sinks)?, &recent], 0)
                } else {
                    Ok(recent)
                }
            }
        }
    }
}

/// What a request adds to the masks the layers build, in the cache's absolute positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttentionExtras {
    /// Spans of positions whose tokens all see each other (an image's tokens, for VLMs that
    /// attend bidirectionally within an image). A span only takes effect for queries that are
    /// prefilled in the same forward pass as the whole span.
    pub bidirectional: Vec<std::ops::Range<i32>>,
}

/// The mask of one attention call once batch padding and the request's extras are applied to
/// the layer's own mask: `pads` is `[B, 1, 1, 1]` int32 (each row's left padding) or `None`
/// for an unpadded batch; queries are at `q_start..q_start + L`. A padding query sees only
/// itself (so no row is ever fully masked), and no real query sees padding.
pub(crate) fn extend_mask(
    layer_mask: Mask,
    key_positions: &KeyPositions,
    q_start: i32,
    queries: i32,
    pads: Option<&Array>,
    spans: &[std::ops::Range<i32>],
) -> Result<Mask> {
    let q_end = q_start + queries;
    let spans: Vec<_> = spans.iter().filter(|s| queries > 1 && s.start < q_end && q_start < s.end).collect();
    if pads.is_none() && spans.is_empty() {
        return Ok(layer_mask);
    }
    let k = key_positions.to_array()?;
    let keys = k.dim(0)?;
    let k = k.reshape(&[1, keys])?;
    let q = positions(q_start, queries)?.reshape(&[queries, 1])?;
    let mut visible = match layer_mask {
        Mask::None => Array::full(&[queries, keys], 1.0, Dtype::Bool)?,
        Mask::Causal => k.less_equal(&q)?,
        Mask::Explicit(m) => m,
    };
    for s in spans {
        let inside =
            |a: &Array| -> Result<Array> { a.greater_equal(&int(s.start)?)?.logical_and(&a.less(&int(s.end)?)?) };
        visible = visible.logical_or(&inside(&q)?.logical_and(&inside(&k)?)?)?;
    }
    if let Some(pads) = pads {
        let real_key = k.greater_equal(pads)?;
        visible = visible.logical_and(&real_key.logical_or(&k.equal(&q)?)?)?;
    }
    Ok(Mask::Explicit(visible))
}

/// Keys laid out as a ring cache hands them to attention: the first `sinks` positions of the
/// sequence, then consecutive positions from `recent_start` on (`keys - sinks` of them).
#[derive(Clone, Debug)]
pub(crate) struct RingKeys {
    pub sinks: i32,
    pub recent_start: i32,
    pub keys: i32,
}

/// Boolean mask `[L, T]` of a ring cache that always keeps the first `keep` positions and
/// otherwise the last `span`: a query at `p` sees a key at `k <= p` when `k < keep` or
/// `p - k < span`. With `keep = 0` this is a plain sliding window of `span` positions.
pub(crate) fn ring_mask(q_start: i32, queries: i32, layout: &RingKeys, keep: i32, span: i32) -> Result<Array> {
    let recent = positions(layout.recent_start, layout.keys - layout.sinks)?;
    let k = if layout.sinks > 0 { concatenate(&[&positions(0, layout.sinks)?, &recent], 0)? } else { recent };
    let k = k.reshape(&[1, layout.keys])?;
    let q = positions(q_start, queries)?.reshape(&[queries, 1])?;
    let in_window = q.subtract(&k)?.less(&Array::scalar(span as f64, Dtype::I32)?)?;
    let visible =
        if keep > 0 { in_window.logical_or(&k.less(&Array::scalar(keep as f64, Dtype::I32)?)?)? } else { in_window };
    k.less_equal(&q)?.logical_and(&visible)
}

/// `softmax(q k^T * scale [softcapped] [masked]) v` over the cached keys and values.
pub(crate) fn attend(
    q: &Array,
    keys: &Tensor,
    values: &Tensor,
    scale: f32,
    mask: &Mask,
    softcap: Option<f32>,
) -> Result<Array> {
    let explicit = |keys_len: i32| -> Result<Option<Array>> {
        match mask {
            Mask::None => Ok(None),
            Mask::Explicit(m) => Ok(Some(m.clone())),
            Mask::Causal => {
                let l = q.dim(2)?;
                Ok(Some(attention_mask(keys_len - l, l, 0, keys_len, None)?))
            }
        }
    };
    match (keys, values) {
        (Tensor::Dense(k), Tensor::Dense(v)) => match softcap {
            Some(cap) => manual_attention(q, k, v, scale, explicit(k.dim(2)?)?.as_ref(), cap),
            None if composed_pays(q, k, mask)? => composed_attention(q, k, v, scale, explicit(k.dim(2)?)?.as_ref()),
            None => match mask {
                Mask::None => scaled_dot_product_attention(q, k, v, scale, AttnMask::None),
                Mask::Causal => scaled_dot_product_attention(q, k, v, scale, AttnMask::Causal),
                Mask::Explicit(m) => scaled_dot_product_attention(q, k, v, scale, AttnMask::Array(m)),
            },
        },
        (Tensor::Quantized { .. }, Tensor::Quantized { .. }) => {
            quantized_attention(q, keys, values, scale, explicit(keys.positions()?)?.as_ref(), softcap)
        }
        _ => Err(Error::Boundary("KV cache: dense keys with quantized values (engine bug)".into())),
    }
}

/// Attention written out with plain ops, for what the fused kernel cannot do (softcapping).
fn manual_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>, softcap: f32) -> Result<Array> {
    let (hq, hkv) = (q.dim(1)?, k.dim(1)?);
    let (k, v) = if hq != hkv {
        // Grouped-query attention: repeat each kv head for its group of query heads.
        let rep = heads_per_kv(hq, hkv)?;
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

/// Score count (batch x query heads x queries x keys) up to which a multi-query call on CUDA runs
/// [`composed_attention`]. MLX's CUDA backend runs fused attention over 4 or more queries (2 or
/// more with an explicit mask) through cuDNN, which builds a graph the first time it meets each
/// shape: 42-69 ms on an H100. In real use nearly every call is new: each prompt has its own
/// length, a reused cache adds its own key length, and each speculative verify pass sees a few
/// more keys. The plain ops cost 0.2-0.9 ms per layer up to this bound (a 1024-token prompt at
/// 32 heads), so a model pays a few milliseconds more on a length it has seen and saves 30-45 ms
/// on a new one (a cold 563-token Llama-1B prompt: 0.023-0.036 s to the first token, against
/// 0.099-0.102 s fused). Past the bound, plain ops over every layer cost more than one graph.
/// Measured by `bench/gpu/attention_choice.py` and `bench/gpu/run.sh attention`
/// (docs/benchmarks.md, 2026-12-08).
const COMPOSED_MAX_SCORES: usize = 32 * 1024 * 1024;

/// Whether `q` over dense keys `k` should skip the fused kernel (see [`COMPOSED_MAX_SCORES`];
/// `MLX_ENGINE_COMPOSED_ATTENTION_MAX_SCORES` overrides it, 0 = always fused).
fn composed_pays(q: &Array, k: &Array, mask: &Mask) -> Result<bool> {
    let queries = q.dim(2)?;
    // One query, or up to 3 without an explicit mask, run MLX's vector kernel: no per-shape set-up.
    if queries < 2 || (queries < 4 && !matches!(mask, Mask::Explicit(_))) {
        return Ok(false);
    }
    // Metal's fused kernels have no per-shape set-up, and the CPU has no fused kernel at all.
    if cfg!(target_os = "macos") || Device::default_device() != Device::Gpu {
        return Ok(false);
    }
    static MAX: OnceLock<usize> = OnceLock::new();
    let max = *MAX.get_or_init(|| {
        std::env::var("MLX_ENGINE_COMPOSED_ATTENTION_MAX_SCORES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(COMPOSED_MAX_SCORES)
    });
    let scores = [q.dim(0)?, q.dim(1)?, queries, k.dim(2)?].iter().map(|&n| n as usize).product::<usize>();
    Ok(scores <= max)
}

/// `softmax(q k^T * scale [masked]) v` as plain ops, in f32 as the fused kernel computes it
/// (scores rounded to bf16 would lose 8 bits the fused kernel keeps). Query heads are grouped
/// under their kv head (`[B, Hkv, n_rep, L, D]`) so keys and values broadcast, not repeat.
fn composed_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>) -> Result<Array> {
    let s = q.shape();
    let (b, hq, l, d) = (s[0], s[1], s[2], s[3]);
    let hkv = k.dim(1)?;
    let rep = heads_per_kv(hq, hkv)?;
    let dtype = q.dtype();
    let f32 = |a: &Array| -> Result<Array> { a.astype(Dtype::F32)?.expand_dims(&[2]) };
    let q = q.astype(Dtype::F32)?;
    let q = q.multiply(&q.scalar_like(scale as f64)?)?.reshape(&[b, hkv, rep, l, d])?;
    let mut scores = q.matmul(&f32(k)?.swapaxes(-1, -2)?)?;
    if let Some(m) = mask {
        // A per-row mask `[B, 1, L, T]` broadcasts over `[B, Hkv, rep, L, T]` with the group
        // axis added.
        let m = if m.ndim() == 4 { m.expand_dims(&[2])? } else { m.clone() };
        scores = where_(&m, &scores, &Array::scalar(lowest(Dtype::F32), Dtype::F32)?)?;
    }
    let out = scores.softmax(&[-1], false)?.matmul(&f32(v)?)?;
    out.reshape(&[b, hq, l, v.dim(3)?])?.astype(dtype)
}

fn heads_per_kv(hq: i32, hkv: i32) -> Result<i32> {
    if hkv <= 0 || hq % hkv != 0 {
        return Err(Error::Boundary(format!(
            "attention with {hq} query heads over {hkv} key/value heads: query heads must be a multiple"
        )));
    }
    Ok(hq / hkv)
}

/// Attention over quantized keys and values without dequantizing them, as mlx-lm's
/// `quantized_scaled_dot_product_attention`: queries are scaled first, query heads are
/// grouped under their kv head (`[B, Hkv, n_rep, L, D]`) so the quantized keys broadcast
/// instead of being repeated, scores and outputs come from `quantized_matmul`, masked scores
/// get the dtype's lowest finite value (as mlx-lm; never a fully masked row here, so -inf would
/// give the same result), and the softmax runs in f32.
fn quantized_attention(
    q: &Array,
    keys: &Tensor,
    values: &Tensor,
    scale: f32,
    mask: Option<&Array>,
    softcap: Option<f32>,
) -> Result<Array> {
    let (
        Tensor::Quantized { wq: kq, scales: ks, biases: kb, spec },
        Tensor::Quantized { wq: vq, scales: vs, biases: vb, .. },
    ) = (keys, values)
    else {
        return Err(Error::Boundary("KV cache: quantized attention over dense keys (engine bug)".into()));
    };
    let s = q.shape();
    let (b, hq, l, d) = (s[0], s[1], s[2], s[3]);
    let hkv = kq.dim(1)?;
    let rep = heads_per_kv(hq, hkv)?;
    let mut q = q.multiply(&q.scalar_like(scale as f64)?)?;
    let group = |a: &Array| if rep > 1 { a.expand_dims(&[2]) } else { Ok(a.clone()) };
    if rep > 1 {
        q = q.reshape(&[b, hkv, rep, l, d])?;
    }
    let (g, bits) = (spec.group_size, spec.bits);
    let mut scores = quantized_matmul(&q, &group(kq)?, &group(ks)?, Some(&group(kb)?), true, g, bits)?;
    if let Some(cap) = softcap {
        let cap = scores.scalar_like(cap as f64)?;
        scores = scores.divide(&cap)?.tanh()?.multiply(&cap)?;
    }
    if let Some(m) = mask {
        // A per-row mask `[B, 1, L, T]` broadcasts over the grouped `[B, Hkv, rep, L, T]`
        // scores only with the group axis added.
        let m = if rep > 1 && m.ndim() == 4 { m.expand_dims(&[2])? } else { m.clone() };
        scores = where_(&m, &scores, &Array::scalar(lowest(scores.dtype()), scores.dtype())?)?;
    }
    let probs = scores.softmax(&[-1], true)?;
    let out = quantized_matmul(&probs, &group(vq)?, &group(vs)?, Some(&group(vb)?), false, g, bits)?;
    if rep > 1 {
        let dv = out.dim(-1)?;
        return out.reshape(&[b, hq, l, dv]);
    }
    Ok(out)
}

/// The lowest finite value of a float dtype (`finfo(dtype).min`), exactly representable in it.
fn lowest(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F16 => -65504.0,
        // 0xFF7F: the largest-magnitude finite bfloat16; f32::MIN would round to -inf.
        Dtype::BF16 => -3.389_531_389_251_535_5e38,
        Dtype::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `softmax(q k^T * scale, masked) v` per head in f64; `visible(b, i, j)` for query i, key j.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize, usize, usize, usize),
        scale: f64,
        visible: impl Fn(usize, usize, usize) -> bool,
    ) -> Vec<f32> {
        let (b, hq, hkv, l, t, d) = dims;
        let mut out = vec![0f32; b * hq * l * d];
        for bi in 0..b {
            for h in 0..hq {
                let g = h / (hq / hkv);
                for i in 0..l {
                    let qi = &q[((bi * hq + h) * l + i) * d..][..d];
                    let key = |j: usize| ((bi * hkv + g) * t + j) * d;
                    let s: Vec<f64> = (0..t)
                        .map(|j| {
                            let dot: f64 = (0..d).map(|x| qi[x] as f64 * k[key(j) + x] as f64).sum();
                            if visible(bi, i, j) {
                                dot * scale
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for x in 0..d {
                        let o: f64 = (0..t).map(|j| e[j] / z * v[key(j) + x] as f64).sum();
                        out[((bi * hq + h) * l + i) * d + x] = o as f32;
                    }
                }
            }
        }
        out
    }

    fn data(seed: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0).collect()
    }

    /// The written-out attention against an f64 reference: grouped query heads, a causal mask
    /// with more keys than queries, one `[L, T]` mask and one per-row `[B, 1, L, T]` mask.
    #[test]
    fn composed_attention_matches_reference() {
        let _ = crate::mlx::ffi::ops_table();
        let (b, hq, hkv, l, t, d) = (2usize, 4usize, 2usize, 5usize, 9usize, 8usize);
        let (qd, kd, vd) = (data(1, b * hq * l * d), data(2, b * hkv * t * d), data(3, b * hkv * t * d));
        let arr =
            |x: &[f32], h: usize, n: usize| Array::from_slice(x, &[b as i32, h as i32, n as i32, d as i32]).unwrap();
        let (q, k, v) = (arr(&qd, hq, l), arr(&kd, hkv, t), arr(&vd, hkv, t));
        let scale = 0.35f32;
        let causal = |_: usize, i: usize, j: usize| j <= i + (t - l);
        let pad = [0usize, 3];
        let padded = move |bi: usize, i: usize, j: usize| causal(bi, i, j) && j >= pad[bi];
        let rows: Vec<bool> =
            (0..b).flat_map(|bi| (0..l).flat_map(move |i| (0..t).map(move |j| padded(bi, i, j)))).collect();
        let row_mask = Array::from_slice(&rows, &[b as i32, 1, l as i32, t as i32]).unwrap();
        // What `attend` builds for `Mask::Causal`.
        let causal_mask = attention_mask((t - l) as i32, l as i32, 0, t as i32, None).unwrap();
        for (mask, visible) in [
            (&causal_mask, &causal as &dyn Fn(usize, usize, usize) -> bool),
            (&row_mask, &padded as &dyn Fn(usize, usize, usize) -> bool),
        ] {
            let got = composed_attention(&q, &k, &v, scale, Some(mask)).unwrap().to_vec_f32().unwrap();
            let want = reference(&qd, &kd, &vd, (b, hq, hkv, l, t, d), scale as f64, visible);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "composed attention differs from the f64 reference by {err}");
        }
    }
}
