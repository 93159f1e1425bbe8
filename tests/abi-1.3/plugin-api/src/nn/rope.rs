//! Rotary position embeddings as configured by `rope_theta` / `rope_scaling`, matching
//! mlx-lm's `initialize_rope` for the variants we support.

use serde::Deserialize;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast::{rope, rope_offsets, RopeFreqs};
use crate::ops::concatenate;
use crate::traits::Positions;

use super::{decode_fusion, exactly};

/// `rope_scaling` of config.json (the keys the supported variants read).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub factor: Option<f32>,
    pub low_freq_factor: Option<f32>,
    pub high_freq_factor: Option<f32>,
    pub original_max_position_embeddings: Option<f32>,
}

/// A configured rotary embedding over the first `dims` features of each head.
#[derive(Clone, Debug)]
pub struct Rope {
    dims: i32,
    traditional: bool,
    base: f32,
    scale: f32,
    /// Explicit per-pair wavelengths (llama3 scaling), passed to MLX instead of `base`.
    freqs: Option<Array>,
}

impl Rope {
    /// `rope_type` default/linear/llama3; anything else is an error naming it.
    pub fn new(dims: i32, traditional: bool, base: f32, scaling: Option<&RopeScaling>) -> Result<Rope> {
        let kind = scaling.and_then(|s| s.rope_type.clone()).unwrap_or_else(|| "default".into());
        let mut r = Rope { dims, traditional, base, scale: 1.0, freqs: None };
        match kind.as_str() {
            "default" => {}
            "linear" => {
                let f = scaling.and_then(|s| s.factor).ok_or_else(|| missing("factor"))?;
                r.scale = 1.0 / f;
            }
            "llama3" => r.freqs = Some(llama3_freqs(dims, base, scaling.unwrap_or(&RopeScaling::default()))?),
            other => {
                return Err(Error::Config(format!(
                    "rope_scaling type `{other}` is not supported (supported: default, linear, llama3)"
                )))
            }
        }
        Ok(r)
    }

    /// Divides each pair's frequency by `factors[i]` (llama.cpp's `rope_freqs.weight`, which
    /// holds llama3-style scaling precomputed per pair), as llama.cpp does:
    /// `theta_i = pos * base^(-2i/dims) / factors[i]`.
    pub fn with_freq_factors(mut self, factors: &Array) -> Result<Rope> {
        let half = self.dims / 2;
        if factors.shape() != [half] {
            return Err(Error::Weights(format!(
                "tensor `rope_freqs.weight` has shape {:?}, expected [{half}]",
                factors.shape()
            )));
        }
        // MLX's `freqs` are wavelengths: theta = pos / freqs.
        let exps = Array::arange(0.0, self.dims as f64, 2.0, crate::Dtype::F32)?
            .multiply(&Array::scalar(1.0 / self.dims as f64, crate::Dtype::F32)?)?;
        let base = Array::scalar(self.base as f64, crate::Dtype::F32)?;
        let wavelengths = base.power(&exps)?;
        self.freqs = Some(wavelengths.multiply(&factors.astype(crate::Dtype::F32)?)?);
        Ok(self)
    }

    /// The frequencies handed to MLX's `rope`.
    pub fn freqs(&self) -> RopeFreqs<'_> {
        match &self.freqs {
            Some(f) => RopeFreqs::Freqs(f),
            None => RopeFreqs::Base(self.base),
        }
    }

    /// The position scale handed to MLX's `rope` (`1 / factor` for linear scaling).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Rotates `x` `[B, H, L, D]` for positions `offset..offset + L`.
    pub fn apply(&self, x: &Array, offset: i32) -> Result<Array> {
        if decode_fusion::applies(x) {
            let offset = Array::scalar(offset as f64, Dtype::I32)?;
            return decode_fusion::rope(x, self.dims, self.traditional, self.freqs(), self.scale, &offset);
        }
        rope(x, self.dims, self.traditional, self.freqs(), self.scale, offset)
    }

    /// Rotates `x` `[B, H, L, D]` for the positions the forward context gives (one offset,
    /// one per row of a left-padded batch, or explicit ones). Architectures call this with
    /// `ctx.positions(layer)?` so that batches need nothing else from them.
    pub fn apply_at(&self, x: &Array, positions: &Positions) -> Result<Array> {
        match positions {
            Positions::Offset(offset) => self.apply(x, *offset),
            Positions::PerRow(offsets) if decode_fusion::applies(x) => {
                decode_fusion::rope(x, self.dims, self.traditional, self.freqs(), self.scale, offsets)
            }
            Positions::PerRow(offsets) => {
                rope_offsets(x, self.dims, self.traditional, self.freqs(), self.scale, offsets)
            }
            Positions::Explicit(p) => self.apply_explicit(x, p),
        }
    }

    /// Rotates queries `[B, Hq, L, D]` and keys `[B, Hkv, L, D]` for the same positions. Where
    /// MLX runs RoPE as a composition of primitives (decode-sized inputs on the CPU, see
    /// `decode_fusion`), the two go through one call, joined along the heads, so the angles
    /// and their sines and cosines are computed once; the values are the same either way.
    pub fn apply_pair(&self, q: &Array, k: &Array, positions: &Positions) -> Result<(Array, Array)> {
        let joinable = !matches!(positions, Positions::Explicit(_)) && q.dtype() == k.dtype();
        if joinable && decode_fusion::applies(q) && decode_fusion::applies(k) {
            let [q, k] = exactly(self.apply_at(&concatenate(&[q, k], 1)?, positions)?.split_at(&[q.dim(1)?], 1)?)?;
            return Ok((q, k));
        }
        Ok((self.apply_at(q, positions)?, self.apply_at(k, positions)?))
    }

    /// The rotation written out with plain ops, for positions `[B, L]` that MLX's fused
    /// kernel cannot take: angle `scale * p / wavelength_i` per pair, computed in f32.
    fn apply_explicit(&self, x: &Array, positions: &Array) -> Result<Array> {
        let s = x.shape();
        if s.len() != 4 || positions.shape() != [s[0], s[2]] {
            return Err(Error::Boundary(format!(
                "explicit positions have shape {:?}, expected [batch, length] = [{}, {}] for input {s:?}",
                positions.shape(),
                s.first().copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0)
            )));
        }
        let half = self.dims / 2;
        let wavelengths = match &self.freqs {
            Some(f) => f.astype(Dtype::F32)?,
            None => Array::scalar(self.base as f64, Dtype::F32)?.power(
                &Array::arange(0.0, self.dims as f64, 2.0, Dtype::F32)?
                    .divide(&Array::scalar(self.dims as f64, Dtype::F32)?)?,
            )?,
        };
        // [B, 1, L, half]
        let theta = positions
            .astype(Dtype::F32)?
            .multiply(&Array::scalar(self.scale as f64, Dtype::F32)?)?
            .reshape(&[s[0], 1, s[2], 1])?
            .divide(&wavelengths.reshape(&[1, 1, 1, half])?)?;
        let (cos, sin) = (theta.cos()?, theta.sin()?);
        let xf = x.astype(Dtype::F32)?;
        let rotated = xf.slice_axis(3, 0, self.dims)?;
        let (a, b) = if self.traditional {
            let pairs = rotated.reshape(&[s[0], s[1], s[2], half, 2])?;
            (pairs.slice_axis(4, 0, 1)?.squeeze(&[4])?, pairs.slice_axis(4, 1, 2)?.squeeze(&[4])?)
        } else {
            (rotated.slice_axis(3, 0, half)?, rotated.slice_axis(3, half, self.dims)?)
        };
        let ra = a.multiply(&cos)?.subtract(&b.multiply(&sin)?)?;
        let rb = a.multiply(&sin)?.add(&b.multiply(&cos)?)?;
        let out = if self.traditional {
            concatenate(&[&ra.expand_dims(&[4])?, &rb.expand_dims(&[4])?], 4)?
                .reshape(&[s[0], s[1], s[2], self.dims])?
        } else {
            concatenate(&[&ra, &rb], 3)?
        };
        let out = if self.dims < s[3] { concatenate(&[&out, &xf.slice_axis(3, self.dims, s[3])?], 3)? } else { out };
        out.astype(x.dtype())
    }
}

fn missing(key: &str) -> Error {
    Error::Config(format!("rope_scaling is missing `{key}`"))
}

/// Llama 3's frequency-dependent scaling: long wavelengths are stretched by `factor`, short
/// ones kept, and the band between interpolated smoothly.
fn llama3_freqs(dims: i32, base: f32, s: &RopeScaling) -> Result<Array> {
    let factor = s.factor.ok_or_else(|| missing("factor"))?;
    let low = s.low_freq_factor.unwrap_or(1.0);
    let high = s.high_freq_factor.unwrap_or(4.0);
    let old_ctx = s.original_max_position_embeddings.unwrap_or(8192.0);
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    let freqs: Vec<f32> = (0..dims / 2)
        .map(|i| {
            let f = base.powf((2 * i) as f32 / dims as f32);
            let wavelen = 2.0 * std::f32::consts::PI * f;
            if wavelen > low_wavelen {
                f * factor
            } else if wavelen > high_wavelen && wavelen < low_wavelen {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                f / ((1.0 - smooth) / factor + smooth)
            } else {
                f
            }
        })
        .collect();
    Array::from_slice(&freqs, &[dims / 2]).and_then(|a| a.astype(Dtype::F32))
}
