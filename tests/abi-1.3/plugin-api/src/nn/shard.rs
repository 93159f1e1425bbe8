//! Tensor parallelism for the shared layers, in mlx-lm's style (`mlx.nn.layers.distributed`,
//! and the `shard` method of mlx-lm's llama): a model is loaded whole on every rank, then its
//! [`ModelArch::shard`](crate::ModelArch::shard) slices each block's weights in place.
//!
//! - **All-to-sharded** ([`Linear::keep_outputs`]): the rank keeps its contiguous slice of the
//!   output features (rows of `W`, and of the bias). Input whole, output sharded; no
//!   communication. q/k/v projections and the MLP's gate/up.
//! - **Sharded-to-all** ([`ShardedToAllLinear`]): the rank keeps its slice of the input
//!   features (columns of `W`); the partial products are summed over the group, then the
//!   bias is added once. Input sharded, output whole. The attention output projection and the
//!   MLP's down projection.
//!
//! Quantized weights shard too: rows slice the packed words, scales and biases alike; columns
//! slice them at the same feature boundary, which must fall on a quantization group.
//! Attention heads split by whole KV groups ([`HeadShard`], as evenly as [`balanced_range`]
//! can); the engine-owned KV cache then holds only the rank's KV heads, since it is shaped by
//! what `attention` receives. The embedding, norms and
//! the LM head stay whole, so every rank computes the same logits and, with the same seed,
//! samples the same tokens.

use crate::array::Array;
use crate::distributed::{all_sum, Group};
use crate::error::{Error, Result};
use crate::nn::{exactly, GatedMlp, Linear, Projections, Weight};

/// The `[start, stop)` part of `n` features that `group`'s rank keeps, cut in whole `unit`s
/// (a head's dimensions, a quantization group) as evenly as possible: the first `n / unit %
/// size` ranks keep one unit more. mlx-lm splits evenly only; uneven parts let a model whose
/// head count the rank count does not divide (SmolLM2-135M: 9 heads, 3 KV heads) still shard.
/// A rank left with nothing is an error naming `what`.
pub fn balanced_range(group: &Group, what: &str, n: i32, unit: i32) -> Result<(i32, i32)> {
    balanced(group.rank(), group.size(), what, n, unit)
}

pub(crate) fn balanced(rank: i32, size: i32, what: &str, n: i32, unit: i32) -> Result<(i32, i32)> {
    if unit < 1 || n % unit != 0 {
        return Err(Error::Config(format!("{what} = {n} is not a whole number of units of {unit}")));
    }
    let units = n / unit;
    if units < size {
        return Err(Error::Config(format!(
            "{what} = {n} ({units} units of {unit}) cannot be shared by {size} ranks: some would get nothing"
        )));
    }
    let (base, extra) = (units / size, units % size);
    let first = rank * base + rank.min(extra);
    let count = base + i32::from(rank < extra);
    Ok((first * unit, (first + count) * unit))
}

impl Weight {
    /// Input features (columns of `[out, in]`) of this weight.
    pub fn input_features(&self) -> Result<i32> {
        match self {
            Weight::Dense(w) => w.dim(1),
            Weight::Quantized { wq, bits, .. } => Ok(wq.dim(1)? * 32 / bits),
        }
    }

    /// Output features (rows) `[start, stop)`.
    pub fn rows(&self, start: i32, stop: i32) -> Result<Weight> {
        self.map(|a| a.slice_axis(0, start, stop))
    }

    /// Input features `[start, stop)`; for quantized weights both ends must fall on a
    /// quantization group boundary, since a group shares one scale.
    pub fn columns(&self, start: i32, stop: i32) -> Result<Weight> {
        match self {
            Weight::Dense(w) => Ok(Weight::Dense(w.slice_axis(1, start, stop)?.into())),
            Weight::Quantized { wq, scales, biases, group_size, bits } => {
                let g = *group_size;
                if start % g != 0 || stop % g != 0 {
                    return Err(Error::Config(format!(
                        "cannot split input features at {start}..{stop}: quantization groups are {g} wide"
                    )));
                }
                let (words, groups) = (|f: i32| f * bits / 32, |f: i32| f / g);
                Ok(Weight::Quantized {
                    wq: wq.slice_axis(1, words(start), words(stop))?,
                    scales: scales.slice_axis(1, groups(start), groups(stop))?,
                    biases: biases.as_ref().map(|b| b.slice_axis(1, groups(start), groups(stop))).transpose()?,
                    group_size: g,
                    bits: *bits,
                })
            }
        }
    }

    /// The same weight with `f` applied to each of its arrays (rows of all of them line up).
    fn map(&self, f: impl Fn(&Array) -> Result<Array>) -> Result<Weight> {
        Ok(match self {
            Weight::Dense(w) => Weight::Dense(f(w)?.into()),
            Weight::Quantized { wq, scales, biases, group_size, bits } => Weight::Quantized {
                wq: f(wq)?,
                scales: f(scales)?,
                biases: biases.as_ref().map(&f).transpose()?,
                group_size: *group_size,
                bits: *bits,
            },
        })
    }

    /// Copies of the slices, so the whole matrix's memory is released once the model drops its
    /// full-size arrays (a slice is a view that would keep it alive).
    fn materialize(self) -> Result<Weight> {
        let w = self.map(|a| a.contiguous())?;
        let arrays: Vec<&Array> = match &w {
            Weight::Dense(a) => vec![a.array()],
            Weight::Quantized { wq, scales, biases, .. } => {
                [Some(wq), Some(scales), biases.as_ref()].into_iter().flatten().collect()
            }
        };
        crate::array::eval(&arrays)?;
        Ok(w)
    }
}

impl Linear {
    /// All-to-sharded in place: keeps output features `[start, stop)` (rows of the weight and
    /// of the bias).
    pub fn keep_outputs(&mut self, start: i32, stop: i32) -> Result<()> {
        self.weight = self.weight.rows(start, stop)?.materialize()?;
        if let Some(bias) = &self.bias {
            let sliced = bias.slice_axis(-1, start, stop)?.contiguous()?;
            sliced.eval()?;
            self.bias = Some(sliced);
        }
        Ok(())
    }
}

/// A linear layer that is whole until [`shard`](ShardedToAllLinear::shard)ed, then
/// sharded-to-all (mlx's `ShardedToAllLinear`): `all_sum(x_r W_r^T) + b`.
#[derive(Clone, Debug)]
pub struct ShardedToAllLinear {
    pub linear: Linear,
    group: Option<Group>,
}

impl From<Linear> for ShardedToAllLinear {
    fn from(linear: Linear) -> Self {
        ShardedToAllLinear { linear, group: None }
    }
}

impl ShardedToAllLinear {
    /// Keeps input features `[start, stop)`; `forward` then sums the partial products over
    /// `group` (`what` names the layer in errors).
    pub fn shard(&mut self, group: &Group, start: i32, stop: i32, what: &str) -> Result<()> {
        if self.group.is_some() {
            return Err(Error::Config(format!("{what} is already sharded")));
        }
        self.linear.weight = self.linear.weight.columns(start, stop)?.materialize()?;
        self.group = Some(group.clone());
        Ok(())
    }

    /// Whether [`shard`](ShardedToAllLinear::shard) ran.
    pub fn is_sharded(&self) -> bool {
        self.group.is_some()
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let Some(group) = &self.group else { return self.linear.forward(x) };
        let y = all_sum(&self.linear.weight.apply(x)?, group)?;
        match &self.linear.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}

/// How one rank's share of an attention layer's heads is cut: whole groups of query heads
/// with their KV head (grouped-query attention stays intact on every rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShard {
    /// The rank's query and KV head counts.
    pub n_heads: i32,
    pub n_kv_heads: i32,
    /// Its output features of the query and of the key/value projections.
    pub q: (i32, i32),
    pub kv: (i32, i32),
}

impl HeadShard {
    /// The rank's heads of a layer of `n_heads` query and `n_kv_heads` KV heads of
    /// `head_dim` features each. With at least as many KV heads as ranks, each rank gets whole
    /// KV groups. With fewer (Gemma 3 270M has one), the ranks are divided among the KV heads
    /// (`size` must then be a multiple of `n_kv_heads`): every rank of a KV head computes that
    /// head (the KV projection is replicated, as other tensor-parallel engines do) and keeps its
    /// part of the head's query heads.
    pub fn new(group: &Group, n_heads: i32, n_kv_heads: i32, head_dim: i32) -> Result<HeadShard> {
        HeadShard::for_rank(group.rank(), group.size(), n_heads, n_kv_heads, head_dim)
    }

    /// [`HeadShard::new`] for rank `rank` of `size`.
    pub fn for_rank(rank: i32, size: i32, n_heads: i32, n_kv_heads: i32, head_dim: i32) -> Result<HeadShard> {
        if n_kv_heads < 1 || n_heads % n_kv_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads = {n_heads} is not a multiple of num_key_value_heads = {n_kv_heads}"
            )));
        }
        let per_kv = n_heads / n_kv_heads;
        if n_kv_heads >= size {
            let (a, b) = balanced(rank, size, "num_key_value_heads", n_kv_heads, 1)?;
            return Ok(HeadShard {
                n_heads: (b - a) * per_kv,
                n_kv_heads: b - a,
                q: (a * per_kv * head_dim, b * per_kv * head_dim),
                kv: (a * head_dim, b * head_dim),
            });
        }
        if size % n_kv_heads != 0 {
            return Err(Error::Config(format!(
                "num_key_value_heads = {n_kv_heads} is below the {size} ranks and does not divide them"
            )));
        }
        let share = size / n_kv_heads;
        let kv = rank / share;
        let (a, b) = balanced(rank % share, share, "query heads per KV head", per_kv, 1)?;
        let first = kv * per_kv;
        Ok(HeadShard {
            n_heads: b - a,
            n_kv_heads: 1,
            q: ((first + a) * head_dim, (first + b) * head_dim),
            kv: (kv * head_dim, (kv + 1) * head_dim),
        })
    }

    /// Shards the four projections of an attention layer: q/k/v all-to-sharded, o
    /// sharded-to-all over the rank's query features (`prefix` names the layer in errors).
    pub fn apply(
        &self,
        group: &Group,
        (q, k, v): (&mut Linear, &mut Linear, &mut Linear),
        o: &mut ShardedToAllLinear,
        prefix: &str,
    ) -> Result<()> {
        q.keep_outputs(self.q.0, self.q.1)?;
        k.keep_outputs(self.kv.0, self.kv.1)?;
        v.keep_outputs(self.kv.0, self.kv.1)?;
        o.shard(group, self.q.0, self.q.1, &format!("{prefix}.o_proj"))
    }

    /// [`HeadShard::apply`] to q/k/v held as [`Projections`] (split apart, sharded, joined
    /// again where joining pays).
    pub fn apply_joined(
        &self,
        group: &Group,
        qkv: &mut Projections,
        o: &mut ShardedToAllLinear,
        prefix: &str,
    ) -> Result<()> {
        let parts = std::mem::replace(qkv, Projections::Apart(Vec::new())).into_parts()?;
        let [mut q, mut k, mut v] = exactly(parts)?;
        self.apply(group, (&mut q, &mut k, &mut v), o, prefix)?;
        *qkv = Projections::new(vec![q, k, v])?;
        Ok(())
    }
}

impl GatedMlp {
    /// Tensor-parallel MLP: gate and up all-to-sharded, down sharded-to-all, over the rank's
    /// part of the hidden features (cut on quantization groups when down is quantized;
    /// `prefix` names the layer in errors).
    pub fn shard(&mut self, group: &Group, prefix: &str) -> Result<()> {
        let hidden = self.down.linear.weight.input_features()?;
        let unit = match &self.down.linear.weight {
            Weight::Dense(_) => 1,
            Weight::Quantized { group_size, .. } => *group_size,
        };
        let (a, b) = balanced_range(group, &format!("{prefix} intermediate_size"), hidden, unit)?;
        let parts = std::mem::replace(&mut self.gate_up, Projections::Apart(Vec::new())).into_parts()?;
        let [mut gate, mut up] = exactly(parts)?;
        gate.keep_outputs(a, b)?;
        up.keep_outputs(a, b)?;
        self.gate_up = Projections::new(vec![gate, up])?;
        self.down.shard(group, a, b, &format!("{prefix}.down_proj"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_features_in_order_and_differ_by_at_most_one_unit() {
        for (n, unit, size) in [(9, 1, 2), (1536, 64, 2), (12, 4, 3), (7, 1, 7), (8, 2, 3)] {
            let parts: Vec<(i32, i32)> = (0..size).map(|r| balanced(r, size, "x", n, unit).unwrap()).collect();
            assert_eq!(parts[0].0, 0);
            assert_eq!(parts[size as usize - 1].1, n);
            for w in parts.windows(2) {
                assert_eq!(w[0].1, w[1].0, "{parts:?}");
            }
            let lens: Vec<i32> = parts.iter().map(|p| p.1 - p.0).collect();
            assert!(lens.iter().all(|l| l % unit == 0 && *l > 0), "{lens:?}");
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= unit, "{lens:?}");
        }
        assert!(balanced(0, 4, "num_key_value_heads", 3, 1)
            .unwrap_err()
            .to_string()
            .contains("some would get nothing"));
        assert!(balanced(0, 2, "x", 100, 64).is_err());
    }

    #[test]
    fn heads_split_by_whole_kv_groups_or_share_a_replicated_kv_head() {
        // SmolLM2-135M: 9 heads, 3 KV heads, 2 ranks -> 2 KV groups (6 heads) and 1 (3 heads).
        let r0 = HeadShard::for_rank(0, 2, 9, 3, 64).unwrap();
        let r1 = HeadShard::for_rank(1, 2, 9, 3, 64).unwrap();
        assert_eq!((r0.n_heads, r0.n_kv_heads, r0.q, r0.kv), (6, 2, (0, 384), (0, 128)));
        assert_eq!((r1.n_heads, r1.n_kv_heads, r1.q, r1.kv), (3, 1, (384, 576), (128, 192)));
        // Gemma 3 270M: 4 heads, 1 KV head: both ranks compute KV head 0, two query heads each.
        let g0 = HeadShard::for_rank(0, 2, 4, 1, 256).unwrap();
        let g1 = HeadShard::for_rank(1, 2, 4, 1, 256).unwrap();
        assert_eq!((g0.n_heads, g0.n_kv_heads, g0.q, g0.kv), (2, 1, (0, 512), (0, 256)));
        assert_eq!((g1.n_heads, g1.n_kv_heads, g1.q, g1.kv), (2, 1, (512, 1024), (0, 256)));
        assert!(HeadShard::for_rank(0, 3, 4, 2, 8).is_err(), "3 ranks cannot share 2 KV heads");
        assert!(HeadShard::for_rank(0, 2, 6, 4, 8).is_err(), "6 heads are not a multiple of 4 KV heads");
    }
}
