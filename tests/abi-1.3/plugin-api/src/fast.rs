//! Fused kernels from `mlx::core::fast`: normalisation, rotary embeddings, attention.

use crate::array::{call1, ops, Array};
use crate::error::Result;
use crate::ops::opt_raw;
use crate::ops_table::MaskMode;

/// RMS normalisation over the last axis, scaled by `weight` when given.
pub fn rms_norm(x: &Array, weight: Option<&Array>, eps: f32) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().rms_norm)(x.as_raw(), opt_raw(weight), eps, out) })
}

/// Layer normalisation over the last axis with optional affine parameters.
pub fn layer_norm(x: &Array, weight: Option<&Array>, bias: Option<&Array>, eps: f32) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().layer_norm)(x.as_raw(), opt_raw(weight), opt_raw(bias), eps, out) })
}

/// How rotary frequencies are given to [`rope`].
#[derive(Clone, Copy, Debug)]
pub enum RopeFreqs<'a> {
    /// `base^(-2i/dims)` computed by MLX.
    Base(f32),
    /// Explicit per-pair periods (shape `[dims / 2]`), e.g. llama3 scaling. As in MLX, these
    /// are `base^(2i/dims)`-like values that positions are *divided* by (angle =
    /// `scale * position / freqs[i]`), not inverse frequencies.
    Freqs(&'a Array),
}

impl<'a> RopeFreqs<'a> {
    /// The base (0 when unused) and the explicit periods, as MLX takes them.
    pub fn split(self) -> (f32, Option<&'a Array>) {
        match self {
            RopeFreqs::Base(b) => (b, None),
            RopeFreqs::Freqs(a) => (0.0, Some(a)),
        }
    }
}

/// Rotary position embedding of the first `dims` features of the last axis; positions are
/// `offset + i` along axis -2. `traditional` rotates adjacent pairs instead of halves.
pub fn rope(x: &Array, dims: i32, traditional: bool, freqs: RopeFreqs<'_>, scale: f32, offset: i32) -> Result<Array> {
    let (base, f) = freqs.split();
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().rope)(x.as_raw(), dims, traditional, base, scale, offset, opt_raw(f), out) })
}

/// [`rope`] with each row's first position given separately: `offsets` is `[B]` int32 for `x`
/// `[B, H, L, D]` (row `b`'s tokens are at `offsets[b] + i`).
pub fn rope_offsets(
    x: &Array,
    dims: i32,
    traditional: bool,
    freqs: RopeFreqs<'_>,
    scale: f32,
    offsets: &Array,
) -> Result<Array> {
    let (base, f) = freqs.split();
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().rope_offsets)(x.as_raw(), dims, traditional, base, scale, offsets.as_raw(), opt_raw(f), out)
    })
}

/// The mask of [`scaled_dot_product_attention`].
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a> {
    None,
    /// Queries are the last `Lq` of the `Lk` positions and see only earlier keys.
    Causal,
    /// Boolean (true = attend) or additive mask broadcastable to `[B, H, Lq, Lk]`.
    Array(&'a Array),
}

/// `softmax(q k^T * scale + mask) v` with q `[B, Hq, Lq, D]`, k/v `[B, Hkv, Lk, D]`.
pub fn scaled_dot_product_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: AttnMask<'_>) -> Result<Array> {
    let (mode, m) = match mask {
        AttnMask::None => (MaskMode::None, None),
        AttnMask::Causal => (MaskMode::Causal, None),
        AttnMask::Array(a) => (MaskMode::Array, Some(a)),
    };
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().sdpa)(q.as_raw(), k.as_raw(), v.as_raw(), scale, mode as u32, opt_raw(m), out) })
}
