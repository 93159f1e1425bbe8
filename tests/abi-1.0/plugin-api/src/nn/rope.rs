//! Rotary position embeddings as configured by `rope_theta` / `rope_scaling`, matching
//! mlx-lm's `initialize_rope` for the variants we support.

use serde::Deserialize;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast::{rope, RopeFreqs};

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

    /// Rotates `x` `[B, H, L, D]` for positions `offset..offset + L`.
    pub fn apply(&self, x: &Array, offset: i32) -> Result<Array> {
        let freqs = match &self.freqs {
            Some(f) => RopeFreqs::Freqs(f),
            None => RopeFreqs::Base(self.base),
        };
        rope(x, self.dims, self.traditional, freqs, self.scale, offset)
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
