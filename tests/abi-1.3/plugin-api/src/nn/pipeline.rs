//! Pipeline parallelism, in the style of mlx-lm's `pipeline` (ABI 1.3): each rank keeps a
//! contiguous slice of a model's layers, rank 0 the first; the hidden states go from rank `r`
//! to rank `r + 1` (`send` / `recv`), and the last rank's output goes back to every rank
//! (`all_gather`), so every rank applies the final norm and head and holds the same logits, as
//! under tensor parallelism. A model that no device holds whole even when sharded is split
//! this way; the ranks run one after the other, so it gains memory, not speed.
//!
//! A plugin's [`ModelArch::pipeline`](crate::ModelArch::pipeline) makes a [`PipelineStage`],
//! keeps its layers ([`PipelineStage::keep`]) and runs them inside [`PipelineStage::run`].

use std::ops::Range;
use std::sync::Mutex;

use crate::array::Array;
use crate::distributed::{all_gather, all_sum, recv, send, Group};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::nn::balanced_range;

/// The dtypes at this rank's ends, learnt once per dtype of the embedded input.
#[derive(Clone, Copy)]
struct Ends {
    input: Dtype,
    /// What the previous rank sends (its layers' output).
    incoming: Dtype,
    /// The last rank's output, which every rank gathers.
    last: Dtype,
}

/// One rank's part of a pipeline over `group`.
pub struct PipelineStage {
    group: Group,
    layers: Range<usize>,
    ends: Mutex<Vec<Ends>>,
}

impl PipelineStage {
    /// Rank `r`'s contiguous slice of `n_layers`, as even as possible (the first `n_layers %
    /// size` ranks keep one layer more). Fewer layers than ranks is an error.
    pub fn new(group: &Group, n_layers: usize) -> Result<PipelineStage> {
        let n = i32::try_from(n_layers).map_err(|_| Error::Config(format!("{n_layers} layers")))?;
        let (start, stop) = balanced_range(group, "num_hidden_layers", n, 1)?;
        Ok(PipelineStage { group: group.clone(), layers: start as usize..stop as usize, ends: Mutex::new(Vec::new()) })
    }

    /// The rank's layers, numbered as in the whole model (checkpoint names).
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// Keeps the rank's items of `all`, one per layer of the whole model (dropping the others
    /// frees their weights).
    pub fn keep<T>(&self, all: &mut Vec<T>) {
        all.truncate(self.layers.end);
        all.drain(..self.layers.start);
    }

    fn rank(&self) -> i32 {
        self.group.rank()
    }

    fn is_last(&self) -> bool {
        self.rank() == self.group.size() - 1
    }

    /// [`run`](PipelineStage::run) under a split (`Some`), else just `layers(h)`.
    pub fn run_in(
        stage: Option<&PipelineStage>,
        h: Array,
        layers: impl FnOnce(Array) -> Result<Array>,
    ) -> Result<Array> {
        match stage {
            Some(s) => s.run(h, layers),
            None => layers(h),
        }
    }

    /// Runs the rank's `layers` in the pipeline. `h` is the embedded input, which every rank
    /// computes (lazily: only rank 0 evaluates it; the others take its shape); the result is
    /// the last rank's output, on every rank.
    pub fn run(&self, h: Array, layers: impl FnOnce(Array) -> Result<Array>) -> Result<Array> {
        let (rank, size) = (self.rank(), self.group.size());
        if size == 1 {
            return layers(h);
        }
        let known = self.ends.lock().ok().and_then(|e| e.iter().find(|e| e.input == h.dtype()).copied());
        // The dtypes a rank's neighbours exchange cannot be known before their graphs are
        // built, so the first pass with each input dtype tells them (tiny messages, evaluated at
        // once; no rank waits on one before its hidden state has gone on).
        let incoming = match known {
            Some(e) => e.incoming,
            None if rank == 0 => h.dtype(),
            None => self.receive_code(rank - 1)?,
        };
        let input = h.dtype();
        let h = if rank == 0 { h } else { recv(&h.shape(), incoming, rank - 1, &self.group)? };
        if known.is_none() && rank > 0 {
            // The connection is a byte stream: the hidden state must be read off it before the
            // collective below reads what follows.
            h.eval()?;
        }
        let out = layers(h)?;
        let sent = if self.is_last() {
            None
        } else {
            if known.is_none() {
                self.send_code(out.dtype(), rank + 1)?;
            }
            // Sent now, not when the logits are evaluated: a host evaluates only the caches
            // after a prefill chunk that is not the last, and the next rank's layers (its
            // cache) wait for this. The result stands in for this rank's part of the gather
            // (only the last rank's part is kept).
            let sent = send(&out, rank + 1, &self.group)?;
            sent.eval()?;
            Some(sent)
        };
        let last = match known {
            Some(e) => e.last,
            None => {
                // Every rank learns the last rank's output dtype, once (the hidden state went on
                // first, so the ranks after this one can finish their layers).
                // Code + 1, so that the others' zeros are no dtype.
                let mine = if self.is_last() { out.dtype() as i32 + 1 } else { 0 };
                let summed = all_sum(&Array::from_slice(&[mine], &[1])?, &self.group)?.to_vec::<i32>()?;
                let last = Dtype::from_code((summed.first().copied().unwrap_or(0) - 1) as u32)?;
                if let Ok(mut e) = self.ends.lock() {
                    e.push(Ends { input, incoming, last });
                }
                last
            }
        };
        let out = match sent {
            Some(s) => s.astype(last)?,
            None => out,
        };
        let b = out.dim(0)?;
        all_gather(&out, &self.group)?.slice_axis(0, (size - 1) * b, size * b)
    }

    fn send_code(&self, dtype: Dtype, dst: i32) -> Result<()> {
        send(&Array::from_slice(&[dtype as i32], &[1])?, dst, &self.group)?.eval()
    }

    fn receive_code(&self, src: i32) -> Result<Dtype> {
        let got = recv(&[1], Dtype::I32, src, &self.group)?.to_vec::<i32>()?;
        Dtype::from_code(got.first().copied().unwrap_or(-1) as u32)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn layers_split_in_contiguous_slices_the_first_ranks_one_longer() {
        // `balanced_range` over units of one layer, as `PipelineStage::new` cuts them.
        let parts: Vec<_> = (0..3).map(|r| crate::nn::shard::balanced(r, 3, "layers", 8, 1)).collect();
        assert_eq!(parts, vec![Ok((0, 3)), Ok((3, 6)), Ok((6, 8))]);
        let err = crate::nn::shard::balanced(0, 3, "num_hidden_layers", 2, 1).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers = 2") && err.contains("3 ranks"), "{err}");
    }
}
