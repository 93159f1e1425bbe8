//! Mixture-of-experts layers: every expert's weights stacked in one tensor, each token's chosen
//! experts applied by `gather_mm` / `gather_qmm` (one kernel per projection, no loop over
//! experts), as mlx-lm's `switch_layers.py` does.

use crate::array::Array;
use crate::error::{Error, Result};
use crate::nn::{check_quant, layer_quant, Activation, Quantization};
use crate::ops::{gather_mm, gather_qmm};
use crate::traits::Weights;

/// Below this many (token, expert) pairs the gathers run unsorted; above it tokens are sorted by
/// expert first so each expert's rows are read once (mlx-lm's threshold).
const SORT_THRESHOLD: i32 = 64;

/// The stacked weights of `experts` linear layers `[E, out, in]`, dense or affine-quantized.
#[derive(Clone, Debug)]
pub enum SwitchLinear {
    Dense(Array),
    Quantized { wq: Array, scales: Array, biases: Option<Array>, group_size: i32, bits: i32 },
}

impl SwitchLinear {
    /// Loads `{prefix}.weight` (`[experts, out, in]`, packed when `{prefix}.scales` exists) of
    /// `experts` layers mapping `inp` features to `out`, checking its shape.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        experts: i32,
        (inp, out): (i32, i32),
        quant: Option<&Quantization>,
    ) -> Result<SwitchLinear> {
        let name = format!("{prefix}.weight");
        let Some(scales) = w.remove(&format!("{prefix}.scales")) else {
            return Ok(SwitchLinear::Dense(w.take_shaped(&name, &[experts, out, inp])?));
        };
        let weight = w.take(&name)?;
        let bad = |what: &str, found: Vec<i32>, want: Vec<i32>| {
            Err(Error::Weights(format!("tensor `{prefix}.{what}` has shape {found:?}, expected {want:?}")))
        };
        let q = layer_quant(quant, prefix).ok_or_else(|| {
            Error::Config(format!("`{prefix}` is quantized but config.json has no `quantization` entry"))
        })?;
        let q = check_quant(prefix, q)?;
        let packed = vec![experts, out, inp * q.bits / 32];
        if weight.shape() != packed {
            return bad("weight", weight.shape(), packed);
        }
        let groups = vec![experts, out, inp / q.group_size];
        if scales.shape() != groups {
            return bad("scales", scales.shape(), groups);
        }
        let biases = w.remove(&format!("{prefix}.biases"));
        Ok(SwitchLinear::Quantized { wq: weight, scales, biases, group_size: q.group_size, bits: q.bits })
    }

    /// `x [.., 1, in]` times the transposed weight of expert `indices[..]` -> `[.., 1, out]`.
    /// `sorted` says `indices` is in ascending order (faster gathers).
    pub fn forward(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array> {
        match self {
            SwitchLinear::Dense(w) => gather_mm(x, &w.swapaxes(-1, -2)?, None, Some(indices), sorted),
            SwitchLinear::Quantized { wq, scales, biases, group_size, bits } => {
                gather_qmm(x, wq, scales, biases.as_ref(), None, Some(indices), true, *group_size, *bits, sorted)
            }
        }
    }
}

/// The experts of a gated MLP: `down(act(gate(x)) * up(x))` with each token's `k` experts.
#[derive(Clone, Debug)]
pub struct SwitchGlu {
    pub gate: SwitchLinear,
    pub up: SwitchLinear,
    pub down: SwitchLinear,
    pub act: Activation,
}

impl SwitchGlu {
    /// Loads `{prefix}.gate_proj`, `.up_proj` (`dim -> hidden`) and `.down_proj`
    /// (`hidden -> dim`), each stacked over `experts`.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        experts: i32,
        (dim, hidden): (i32, i32),
        act: Activation,
        quant: Option<&Quantization>,
    ) -> Result<SwitchGlu> {
        let mut lin = |name: &str, shape| SwitchLinear::load(w, &format!("{prefix}.{name}"), experts, shape, quant);
        Ok(SwitchGlu {
            gate: lin("gate_proj", (dim, hidden))?,
            up: lin("up_proj", (dim, hidden))?,
            down: lin("down_proj", (hidden, dim))?,
            act,
        })
    }

    /// `x [B, L, D]` through the experts `indices [B, L, k]` (int) -> `[B, L, k, D]`, one row per
    /// chosen expert (the caller weighs and sums them).
    pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        let s = indices.shape();
        let k = *s.last().ok_or_else(|| Error::Array("SwitchGlu: indices must have a last axis of experts".into()))?;
        // [B, L, 1, 1, D]: gather_mm broadcasts the token's row against each of its k experts.
        let x = x.expand_dims(&[-2, -3])?;
        let pairs: i32 = s.iter().product();
        if pairs < SORT_THRESHOLD {
            let h = self.act.gate(&self.gate.forward(&x, indices, false)?, &self.up.forward(&x, indices, false)?)?;
            return self.down.forward(&h, indices, false)?.squeeze(&[-2]);
        }
        // Sort the (token, expert) pairs by expert, run, and put the rows back in token order.
        let flat = indices.reshape(&[-1])?;
        let order = flat.argsort(0)?;
        let inverse = order.argsort(0)?;
        let dim = x.dim(-1)?;
        let rows = x.reshape(&[-1, 1, dim])?.take(&order.floor_divide(&Array::scalar(k as f64, order.dtype())?)?, 0)?;
        let idx = flat.take(&order, 0)?;
        let h = self.act.gate(&self.gate.forward(&rows, &idx, true)?, &self.up.forward(&rows, &idx, true)?)?;
        let y = self.down.forward(&h, &idx, true)?.take(&inverse, 0)?;
        let mut shape = s.clone();
        shape.push(dim);
        y.reshape(&shape)
    }
}
