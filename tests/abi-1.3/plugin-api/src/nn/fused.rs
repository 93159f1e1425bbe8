//! Linear layers that read the same input (q/k/v, gate/up), joined into one matmul on the GPU.
//!
//! On the GPU a decode step is bound by kernel launches as much as by memory: a Llama-1B step
//! runs about 300 small kernels. One GEMV over the stacked rows reads the same bytes as three,
//! in one launch, and the small k/v projections stop being latency-bound. Measured on an H200
//! with mlx-lm patched the same way (`bench/gpu/fusion_probe.py`), joining q|k|v and gate|up
//! made decode 16-19% faster on the 1B and 8B shapes; in the engine, with llama's single RoPE
//! over q|k, 1B bf16 decode gained 7-8% (docs/benchmarks.md). On the CPU the GEMVs are bound by
//! memory bandwidth alone and gain nothing, and the joined GEMM may round differently from
//! mlx-lm's separate ones, so the CPU keeps them apart (and token parity with mlx-lm).

use crate::array::{eval, Array};
use crate::error::{Error, Result};
use crate::ops::concatenate;
use crate::runtime::Device;

use super::{Linear, Weight};

/// `MLX_ENGINE_JOIN_PROJECTIONS`: `gpu` (the default) joins on the GPU only, `always` on every
/// device (how the CPU suites reach the joined path), `never` keeps every projection apart (an
/// A/B run on the GPU).
pub const JOIN_ENV: &str = "MLX_ENGINE_JOIN_PROJECTIONS";

fn join_here() -> Result<bool> {
    match std::env::var(JOIN_ENV).ok().as_deref() {
        None | Some("") | Some("gpu") => Ok(Device::default_device() == Device::Gpu),
        Some("always") => Ok(true),
        Some("never") => Ok(false),
        Some(v) => Err(Error::Config(format!("{JOIN_ENV}={v:?}: expected `gpu`, `always` or `never`"))),
    }
}

/// Projections of one input: kept apart, or joined into one [`Linear`] whose output rows are
/// the parts' rows one after another, part `i` ending at row `ends[i]`.
#[derive(Clone, Debug)]
pub enum Projections {
    Apart(Vec<Linear>),
    Joined { linear: Linear, ends: Vec<i32> },
}

impl Projections {
    /// Joins `parts` when the default device is the GPU (or [`JOIN_ENV`] says otherwise) and
    /// they can be joined (see [`Projections::join`]); keeps them apart otherwise.
    pub fn new(parts: Vec<Linear>) -> Result<Projections> {
        if join_here()? {
            Projections::join(parts)
        } else {
            Ok(Projections::Apart(parts))
        }
    }

    /// Joins `parts` into one layer on any device, when they share an input size and a weight
    /// layout (all dense of one dtype, or all quantized alike) and all or none have a bias;
    /// keeps them apart otherwise. The joined weights are evaluated here, so the parts'
    /// memory is released as soon as the caller drops them.
    pub fn join(parts: Vec<Linear>) -> Result<Projections> {
        // The conformance kit's shape discovery hands out zeros: nothing to gain by joining them.
        if parts.len() < 2 || crate::declare::recording() || !joinable(&parts)? {
            return Ok(Projections::Apart(parts));
        }
        let mut end = 0;
        let ends = parts
            .iter()
            .map(|p| {
                end += p.weight.output_features()?;
                Ok(end)
            })
            .collect::<Result<Vec<_>>>()?;
        let cat = |f: &dyn Fn(&Linear) -> Option<&Array>| -> Result<Option<Array>> {
            let arrays: Option<Vec<&Array>> = parts.iter().map(f).collect();
            arrays.map(|a| concatenate(&a, 0)).transpose()
        };
        let weight = match &parts[0].weight {
            Weight::Dense(_) => Weight::Dense(need(cat(&|p| dense(&p.weight))?)?.into()),
            Weight::Quantized { group_size, bits, .. } => Weight::Quantized {
                wq: need(cat(&|p| quantized(&p.weight).map(|q| q.0))?)?,
                scales: need(cat(&|p| quantized(&p.weight).map(|q| q.1))?)?,
                biases: cat(&|p| quantized(&p.weight).and_then(|q| q.2))?,
                group_size: *group_size,
                bits: *bits,
            },
        };
        let bias = cat(&|p| p.bias.as_ref())?;
        let linear = Linear { weight, bias };
        eval(&linear.arrays())?;
        Ok(Projections::Joined { linear, ends })
    }

    /// Each part's output, in the parts' order (`N` is the number of parts).
    pub fn forward<const N: usize>(&self, x: &Array) -> Result<[Array; N]> {
        let outputs = match self {
            Projections::Apart(parts) => parts.iter().map(|p| p.forward(x)).collect::<Result<Vec<_>>>()?,
            Projections::Joined { linear, ends } => {
                linear.forward(x)?.split_at(&ends[..ends.len().saturating_sub(1)], -1)?
            }
        };
        exactly(outputs)
    }

    /// The joined layer's whole output `[.., sum of the parts' outputs]`, or `None` when the
    /// parts are apart; for callers that reshape it before splitting (one RoPE over q|k).
    pub fn forward_joined(&self, x: &Array) -> Result<Option<Array>> {
        match self {
            Projections::Apart(_) => Ok(None),
            Projections::Joined { linear, .. } => linear.forward(x).map(Some),
        }
    }

    /// The parts again (the joined rows split back; views until the caller copies them, as
    /// sharding does).
    pub fn into_parts(self) -> Result<Vec<Linear>> {
        match self {
            Projections::Apart(parts) => Ok(parts),
            Projections::Joined { linear, ends } => {
                let starts = std::iter::once(0).chain(ends.iter().copied());
                starts
                    .zip(ends.iter().copied())
                    .map(|(a, b)| {
                        Ok(Linear {
                            weight: linear.weight.rows(a, b)?,
                            bias: linear.bias.as_ref().map(|x| x.slice_axis(-1, a, b)).transpose()?,
                        })
                    })
                    .collect()
            }
        }
    }
}

impl Linear {
    fn arrays(&self) -> Vec<&Array> {
        let w: Vec<&Array> = match &self.weight {
            Weight::Dense(a) => vec![a.array()],
            Weight::Quantized { wq, scales, biases, .. } => {
                [Some(wq), Some(scales), biases.as_ref()].into_iter().flatten().collect()
            }
        };
        w.into_iter().chain(self.bias.as_ref()).collect()
    }
}

impl Weight {
    /// Output features (rows of `[out, in]`).
    pub fn output_features(&self) -> Result<i32> {
        match self {
            Weight::Dense(w) => w.dim(0),
            Weight::Quantized { wq, .. } => wq.dim(0),
        }
    }
}

/// `v` as an array of `N`, or an error saying how many there were.
pub fn exactly<T, const N: usize>(v: Vec<T>) -> Result<[T; N]> {
    let n = v.len();
    v.try_into().map_err(|_| Error::Array(format!("expected {N} parts, got {n}")))
}

fn dense(w: &Weight) -> Option<&Array> {
    match w {
        Weight::Dense(a) => Some(a.array()),
        Weight::Quantized { .. } => None,
    }
}

type QuantParts<'a> = (&'a Array, &'a Array, Option<&'a Array>);

fn quantized(w: &Weight) -> Option<QuantParts<'_>> {
    match w {
        Weight::Quantized { wq, scales, biases, .. } => Some((wq, scales, biases.as_ref())),
        Weight::Dense(_) => None,
    }
}

fn need(a: Option<Array>) -> Result<Array> {
    a.ok_or_else(|| Error::Array("joined projections lost a part".into()))
}

/// Whether the parts stack row-wise into one weight of a single layout.
fn joinable(parts: &[Linear]) -> Result<bool> {
    let first = &parts[0];
    let inputs = first.weight.input_features()?;
    for p in parts {
        if p.weight.input_features()? != inputs || p.bias.is_some() != first.bias.is_some() {
            return Ok(false);
        }
        if let (Some(a), Some(b)) = (&p.bias, &first.bias) {
            if a.dtype() != b.dtype() {
                return Ok(false);
            }
        }
        let same = match (&p.weight, &first.weight) {
            (Weight::Dense(a), Weight::Dense(b)) => a.dtype() == b.dtype(),
            (
                Weight::Quantized { scales: s1, biases: b1, group_size: g1, bits: n1, .. },
                Weight::Quantized { scales: s2, biases: b2, group_size: g2, bits: n2, .. },
            ) => g1 == g2 && n1 == n2 && s1.dtype() == s2.dtype() && b1.is_some() == b2.is_some(),
            _ => false,
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}
