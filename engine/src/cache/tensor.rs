//! Cached keys (or values) as stored: one dense array, or the three arrays of MLX's affine
//! quantization. Every array has positions along axis 2 (`[B, H, positions, ...]`), and
//! quantization works per position (groups run along the head dimension only), so slicing,
//! writing, concatenating and growing apply to each part in the same way. That is what lets
//! the full and ring-buffer logic in `layer.rs` stay the same for dense and quantized caches.

use mlx_engine_plugin_api::{concatenate, dequantize, quantize, Array, Result};

use super::config::QuantSpec;

/// Keys or values of one layer.
#[derive(Clone)]
pub(crate) enum Tensor {
    /// `[B, H, T, D]` in the model's dtype.
    Dense(Array),
    /// `wq` `[B, H, T, D * bits / 32]` (uint32), `scales` and `biases` `[B, H, T, D / group]`
    /// in the model's dtype.
    Quantized { wq: Array, scales: Array, biases: Array, spec: QuantSpec },
}

impl Tensor {
    /// Quantizes `[B, H, T, D]` along the head dimension.
    pub fn quantize(a: &Array, spec: QuantSpec) -> Result<Tensor> {
        let (wq, scales, biases) = quantize(a, spec.group_size, spec.bits)?;
        Ok(Tensor::Quantized { wq, scales, biases, spec })
    }

    /// Converts a dense tensor (no-op when already quantized).
    pub fn to_quantized(&self, spec: QuantSpec) -> Result<Tensor> {
        match self {
            Tensor::Dense(a) => Tensor::quantize(a, spec),
            q @ Tensor::Quantized { .. } => Ok(q.clone()),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Tensor::Quantized { .. })
    }

    /// The arrays that hold the data.
    pub fn parts(&self) -> Vec<&Array> {
        match self {
            Tensor::Dense(a) => vec![a],
            Tensor::Quantized { wq, scales, biases, .. } => vec![wq, scales, biases],
        }
    }

    /// Applies `f` to every part, keeping the representation.
    fn map(&self, f: impl Fn(&Array) -> Result<Array>) -> Result<Tensor> {
        self.with_parts(self.parts().into_iter().map(f).collect::<Result<Vec<Array>>>()?)
    }

    /// Applies `f` to matching parts of `self` and `other`. Both must have the same
    /// representation; the layer guarantees it by quantizing new keys and values exactly when
    /// its buffers are quantized.
    fn zip(&self, other: &Tensor, f: impl Fn(&Array, &Array) -> Result<Array>) -> Result<Tensor> {
        if self.is_quantized() != other.is_quantized() {
            return Err(bug("mixing dense and quantized keys in one layer"));
        }
        let parts = self.parts().into_iter().zip(other.parts()).map(|(a, b)| f(a, b));
        self.with_parts(parts.collect::<Result<Vec<Array>>>()?)
    }

    /// Number of positions (axis 2).
    pub fn positions(&self) -> Result<i32> {
        self.parts()[0].dim(2)
    }

    pub fn nbytes(&self) -> usize {
        self.parts().iter().map(|a| a.nbytes()).sum()
    }

    /// Positions `start..stop`.
    pub fn slice(&self, start: i32, stop: i32) -> Result<Tensor> {
        self.map(|a| a.slice_axis(2, start, stop))
    }

    /// A copy with `update`'s positions written from position `at` on. MLX writes in place
    /// when nothing else holds the buffer, which is what makes decoding cheap; a snapshot
    /// (a clone of the cache) holds it, so MLX copies instead and the snapshot never changes.
    pub fn write_at(&self, update: &Tensor, at: i32) -> Result<Tensor> {
        self.zip(update, |buf, u| {
            let s = u.shape();
            buf.slice_update(u, &[0, 0, at, 0], &[s[0], s[1], at + s[2], s[3]], &[1, 1, 1, 1])
        })
    }

    /// Concatenation along the positions (one MLX concatenation per part).
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| bug("concatenating nothing"))?;
        if parts.iter().any(|t| t.is_quantized() != first.is_quantized()) {
            return Err(bug("mixing dense and quantized keys in one layer"));
        }
        let columns = (0..first.parts().len())
            .map(|i| {
                let column: Vec<&Array> = parts.iter().map(|t| t.parts()[i]).collect();
                concatenate(&column, 2)
            })
            .collect::<Result<Vec<Array>>>()?;
        first.with_parts(columns)
    }

    /// A tensor of the same representation holding `parts` (in [`Tensor::parts`] order).
    fn with_parts(&self, parts: Vec<Array>) -> Result<Tensor> {
        let mut it = parts.into_iter();
        let mut next = || it.next().ok_or_else(|| bug("missing quantization part"));
        Ok(match self {
            Tensor::Dense(_) => Tensor::Dense(next()?),
            Tensor::Quantized { spec, .. } => {
                Tensor::Quantized { wq: next()?, scales: next()?, biases: next()?, spec: *spec }
            }
        })
    }

    /// Zeros shaped like `self` but with `n` positions.
    pub fn zeros_like(&self, n: i32) -> Result<Tensor> {
        self.map(|a| {
            let mut s = a.shape();
            s[2] = n;
            Array::zeros(&s, a.dtype())
        })
    }

    /// The dense values (quantized data dequantized), for tests and debugging.
    pub fn dense(&self) -> Result<Array> {
        match self {
            Tensor::Dense(a) => Ok(a.clone()),
            Tensor::Quantized { wq, scales, biases, spec } => {
                dequantize(wq, scales, Some(biases), spec.group_size, spec.bits)
            }
        }
    }
}

/// An invariant of the cache broke: reported as an error rather than a panic, since it runs
/// inside a request.
fn bug(what: &str) -> mlx_engine_plugin_api::Error {
    mlx_engine_plugin_api::Error::Boundary(format!("KV cache: {what} (engine bug)"))
}
