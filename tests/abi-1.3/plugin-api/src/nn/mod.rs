//! Shared layers, loaded from checkpoint tensors by name prefix. Plugins build on these instead
//! of re-implementing them.
//!
//! Every loader takes the same arguments in the same order: the weights, the tensor prefix, the
//! layer's sizes in mlx's constructor order (`(input_dims, output_dims)` for linear layers and
//! MLPs, `(vocab, dims)` for embeddings, `dims` for norms), then options, and last, for layers
//! that may be quantized, the config's `Option<&Quantization>` (the loader picks the prefix's
//! own parameters). Every tensor's shape is checked at load, so a wrong checkpoint fails naming
//! the tensor, and the conformance kit can learn the shapes from the loaders (`declare`).

pub mod decode_fusion;
pub mod dense;
pub mod fused;
pub mod moe;
pub mod pipeline;
pub mod rope;
pub mod shard;
pub mod vision;
pub use dense::Dense;
pub use fused::{exactly, Projections};
pub use moe::{SwitchGlu, SwitchLinear};
pub use pipeline::PipelineStage;
pub use rope::{Rope, RopeScaling};
pub use shard::{balanced_range, HeadShard, ShardedToAllLinear};

use std::sync::OnceLock;

use crate::array::Array;
use crate::compile::Compiled;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast;
use crate::ops::{dequantize, quantized_matmul};
use crate::traits::Weights;

/// MLX affine quantization parameters (`quantization` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct QuantConfig {
    pub group_size: i32,
    pub bits: i32,
}

/// The `quantization` (or `quantization_config`) entry of config.json: a default plus
/// per-layer overrides keyed by the layer's weight prefix (mlx-lm's format), e.g.
/// `{"group_size": 64, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Quantization {
    #[serde(default = "default_group")]
    pub group_size: i32,
    #[serde(default = "default_bits")]
    pub bits: i32,
    #[serde(flatten)]
    pub per_layer: std::collections::BTreeMap<String, serde_json::Value>,
}

fn default_group() -> i32 {
    64
}
fn default_bits() -> i32 {
    4
}

impl Quantization {
    /// The parameters of the layer at `prefix`: its override if there is one, else the default.
    pub fn for_layer(&self, prefix: &str) -> Option<QuantConfig> {
        match self.per_layer.get(prefix) {
            Some(v) => serde_json::from_value::<QuantConfig>(v.clone()).ok(),
            None => Some(QuantConfig { group_size: self.group_size, bits: self.bits }),
        }
    }
}

/// `quantization` of a layer, when the config has one.
pub fn layer_quant(q: Option<&Quantization>, prefix: &str) -> Option<QuantConfig> {
    q.and_then(|q| q.for_layer(prefix))
}

fn check_quant(prefix: &str, q: QuantConfig) -> Result<QuantConfig> {
    if ![2, 3, 4, 5, 6, 8].contains(&q.bits) || ![32, 64, 128].contains(&q.group_size) {
        return Err(Error::Config(format!(
            "`{prefix}`: unsupported quantization bits={} group_size={} (bits 2/3/4/5/6/8, groups 32/64/128)",
            q.bits, q.group_size
        )));
    }
    Ok(q)
}

/// A dense or affine-quantized weight `[out, in]`, chosen from what the checkpoint holds.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Dense),
    Quantized { wq: Array, scales: Array, biases: Option<Array>, group_size: i32, bits: i32 },
}

impl Weight {
    /// Loads `{prefix}.weight` of a layer mapping `inp` features to `out` (`[out, in]`), quantized
    /// when `{prefix}.scales` exists (with this prefix's parameters from `quant`, which must then
    /// be given), and checks its shape.
    pub fn load(w: &mut Weights, prefix: &str, (inp, out): (i32, i32), quant: Option<&Quantization>) -> Result<Weight> {
        let name = format!("{prefix}.weight");
        let Some(scales) = w.remove(&format!("{prefix}.scales")) else {
            let weight = Weight::Dense(w.take_shaped(&name, &[out, inp])?.into());
            weight.check_shape(prefix, out, inp)?;
            return Ok(weight);
        };
        let weight = w.take(&name)?;
        let q = layer_quant(quant, prefix).ok_or_else(|| {
            Error::Config(format!("`{prefix}` is quantized but config.json has no `quantization` entry"))
        })?;
        let q = check_quant(prefix, q)?;
        let biases = w.remove(&format!("{prefix}.biases"));
        let (rows, packed) = (weight.dim(0)?, weight.dim(-1)?);
        if scales.dim(0)? != rows || packed * 32 / q.bits != scales.dim(-1)? * q.group_size {
            return Err(Error::Weights(format!(
                "`{prefix}`: packed weight {:?} and scales {:?} do not match bits={} group_size={}",
                weight.shape(),
                scales.shape(),
                q.bits,
                q.group_size
            )));
        }
        let weight = Weight::Quantized { wq: weight, scales, biases, group_size: q.group_size, bits: q.bits };
        weight.check_shape(prefix, out, inp)?;
        Ok(weight)
    }

    /// Checks that this is a `[out, in]` matrix (packed accordingly when quantized) of a
    /// floating-point dtype, so a wrong checkpoint fails at load naming the tensor instead of
    /// mid-forward with a bare shape error.
    pub fn check_shape(&self, prefix: &str, out: i32, inp: i32) -> Result<()> {
        let bad = |what: &str, found: Vec<i32>, want: Vec<i32>| {
            Err(Error::Weights(format!("tensor `{prefix}.{what}` has shape {found:?}, expected {want:?}")))
        };
        match self {
            Weight::Dense(w) => {
                if w.shape() != [out, inp] {
                    return bad("weight", w.shape(), vec![out, inp]);
                }
                if !w.dtype().is_float() {
                    return Err(Error::Weights(format!(
                        "tensor `{prefix}.weight` has dtype {}, expected a floating-point dtype",
                        w.dtype()
                    )));
                }
            }
            Weight::Quantized { wq, scales, group_size, bits, .. } => {
                let packed = vec![out, inp * bits / 32];
                if wq.shape() != packed {
                    return bad("weight", wq.shape(), packed);
                }
                let groups = vec![out, inp / group_size];
                if scales.shape() != groups {
                    return bad("scales", scales.shape(), groups);
                }
            }
        }
        Ok(())
    }

    /// `x @ W^T`.
    pub fn apply(&self, x: &Array) -> Result<Array> {
        match self {
            Weight::Dense(w) => w.apply(x),
            Weight::Quantized { wq, scales, biases, group_size, bits } => {
                quantized_matmul(x, wq, scales, biases.as_ref(), true, *group_size, *bits)
            }
        }
    }

    /// The full-precision matrix (dequantized when needed).
    pub fn dense(&self) -> Result<Array> {
        match self {
            Weight::Dense(w) => Ok(w.array().clone()),
            Weight::Quantized { wq, scales, biases, group_size, bits } => {
                dequantize(wq, scales, biases.as_ref(), *group_size, *bits)
            }
        }
    }

    /// Casts dense weights (and quantization scales/biases) to `dtype`.
    pub fn astype(&self, dtype: Dtype) -> Result<Weight> {
        Ok(match self {
            Weight::Dense(w) => Weight::Dense(w.astype(dtype)?.into()),
            Weight::Quantized { wq, scales, biases, group_size, bits } => Weight::Quantized {
                wq: wq.clone(),
                scales: scales.astype(dtype)?,
                biases: biases.as_ref().map(|b| b.astype(dtype)).transpose()?,
                group_size: *group_size,
                bits: *bits,
            },
        })
    }
}

/// `y = x W^T + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Array>,
}

impl Linear {
    /// Loads `{prefix}.weight` mapping `inp` features to `out` (+ `.scales`/`.biases` when
    /// quantized) and `{prefix}.bias` (`[out]`) if `bias` is true, checking every shape. The
    /// order is that of mlx's `nn.Linear(input_dims, output_dims)`.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        (inp, out): (i32, i32),
        bias: bool,
        quant: Option<&Quantization>,
    ) -> Result<Linear> {
        let weight = Weight::load(w, prefix, (inp, out), quant)?;
        let bias = if bias { Some(w.take_shaped(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.weight.apply(x)?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// Token embedding table `[vocab, dim]`, possibly quantized; `as_linear` serves tied heads.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Weight,
}

impl Embedding {
    /// Loads the `[vocab, dim]` table `{prefix}.weight`, possibly quantized, checking its shape
    /// (mlx's `nn.Embedding(num_embeddings, dims)` order).
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        (vocab, dim): (i32, i32),
        quant: Option<&Quantization>,
    ) -> Result<Embedding> {
        Ok(Embedding { weight: Weight::load(w, prefix, (dim, vocab), quant)? })
    }

    /// Rows for `ids` (any shape) -> `[..ids, dim]`.
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match &self.weight {
            Weight::Dense(w) => w.take(ids, 0),
            Weight::Quantized { wq, scales, biases, group_size, bits } => {
                let rows = |a: &Array| a.take(ids, 0);
                dequantize(
                    &rows(wq)?,
                    &rows(scales)?,
                    biases.as_ref().map(rows).transpose()?.as_ref(),
                    *group_size,
                    *bits,
                )
            }
        }
    }

    /// Logits against the embedding table: `x @ E^T`.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        self.weight.apply(x)
    }
}

/// RMS normalisation with a learned scale.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    /// Loads the `[dim]` scale `{prefix}.weight`.
    pub fn load(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: w.take_shaped(&format!("{prefix}.weight"), &[dim])?, eps })
    }

    /// Gemma's variant, which scales by `1 + weight`; the sum is formed once at load.
    pub fn load_one_plus(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
        let weight = w.take_shaped(&format!("{prefix}.weight"), &[dim])?;
        let weight = weight.add(&weight.scalar_like(1.0)?)?;
        Ok(RmsNorm { weight, eps })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        if decode_fusion::applies(x) {
            return decode_fusion::rms_norm(x, &self.weight, self.eps);
        }
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}

/// Layer normalisation with a learned scale and shift (vision towers).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Array,
    pub bias: Array,
    pub eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<LayerNorm> {
        let mut part = |name: &str| -> Result<Array> { w.take_shaped(&format!("{prefix}.{name}"), &[dim]) };
        Ok(LayerNorm { weight: part("weight")?, bias: part("bias")?, eps })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::layer_norm(x, Some(&self.weight), Some(&self.bias), self.eps)
    }
}

/// `[B, L, H * D]` -> `[B, H, L, D]`. One position (a decode step) is a reshape alone: with
/// `L = 1` the transpose moves nothing, and each primitive costs the host time to evaluate.
pub fn split_heads(x: &Array, heads: i32) -> Result<Array> {
    let s = x.shape();
    if s.len() != 3 {
        return Err(Error::Array(format!("split_heads expects [B, L, H*D], got {s:?}")));
    }
    if s[1] == 1 {
        return x.reshape(&[s[0], heads, 1, -1]);
    }
    x.reshape(&[s[0], s[1], heads, -1])?.transpose(&[0, 2, 1, 3])
}

/// `[B, H, L, D]` -> `[B, L, H * D]` (for `L = 1` a reshape alone, as in [`split_heads`]).
pub fn merge_heads(x: &Array) -> Result<Array> {
    let s = x.shape();
    if s.len() != 4 {
        return Err(Error::Array(format!("merge_heads expects [B, H, L, D], got {s:?}")));
    }
    if s[2] == 1 {
        return x.reshape(&[s[0], 1, -1]);
    }
    x.transpose(&[0, 2, 1, 3])?.reshape(&[s[0], s[2], -1])
}

/// The activation of a gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama family).
    Silu,
    /// GeGLU with the tanh approximation (gemma).
    GeluApprox,
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// `gate_proj` and `up_proj`, in that order (joined into one matmul on the GPU).
    pub gate_up: Projections,
    /// Whole until [`GatedMlp::shard`] (tensor parallelism) makes it sharded-to-all.
    pub down: ShardedToAllLinear,
    pub act: Activation,
}

impl GatedMlp {
    /// Loads `{prefix}.gate_proj`, `.up_proj` (`dim -> hidden`) and `.down_proj`
    /// (`hidden -> dim`), checking their shapes.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        (dim, hidden): (i32, i32),
        bias: bool,
        act: Activation,
        quant: Option<&Quantization>,
    ) -> Result<GatedMlp> {
        let lin = |w: &mut Weights, name: &str, shape| Linear::load(w, &format!("{prefix}.{name}"), shape, bias, quant);
        Ok(GatedMlp {
            gate_up: Projections::new(vec![lin(w, "gate_proj", (dim, hidden))?, lin(w, "up_proj", (dim, hidden))?])?,
            down: lin(w, "down_proj", (hidden, dim))?.into(),
            act,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let [gate, up] = self.gate_up.forward(x)?;
        self.down.forward(&self.act.gate(&gate, &up)?)
    }
}

impl Activation {
    /// `act(gate) * up`, the element-wise middle of a gated MLP, unfused (one kernel per op).
    pub fn gate_unfused(self, gate: &Array, up: &Array) -> Result<Array> {
        let g = match self {
            Activation::Silu => gate.silu()?,
            Activation::GeluApprox => gate.gelu_approx()?,
        };
        g.multiply(up)
    }

    /// `act(gate) * up` through MLX's compile, so the chain runs as one fused kernel per call
    /// (GELU-approx is nine element-wise ops, SiLU-gate three). Falls back to
    /// [`gate_unfused`](Activation::gate_unfused) if the function cannot be compiled.
    pub fn gate(self, gate: &Array, up: &Array) -> Result<Array> {
        static SILU: OnceLock<Option<Compiled>> = OnceLock::new();
        static GELU: OnceLock<Option<Compiled>> = OnceLock::new();
        let cell = match self {
            Activation::Silu => &SILU,
            Activation::GeluApprox => &GELU,
        };
        // Shapeless: element-wise only, so one trace serves prefill and decode shapes alike.
        let compiled = cell.get_or_init(|| {
            Compiled::new(2, 1, true, move |xs: &[Array]| Ok(vec![self.gate_unfused(&xs[0], &xs[1])?])).ok()
        });
        match compiled {
            Some(c) => c.call(&[gate, up])?.pop().ok_or_else(|| Error::Array("compiled gate returned nothing".into())),
            None => self.gate_unfused(gate, up),
        }
    }
}
