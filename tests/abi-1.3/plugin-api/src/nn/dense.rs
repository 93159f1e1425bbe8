//! A full-precision weight and the view of it that one sequence multiplies by.
//!
//! `x @ W^T` with `x` of shape `[1, L, in]` builds four primitives in MLX: the transpose, and
//! the flatten and unflatten MLX wraps around a matmul of a 3-D input by a 2-D one. A matmul by
//! `W^T` stored as a `[1, in, out]` view is one. MLX's evaluation costs microseconds per
//! primitive on the host, and a decode step of a small model on a GPU is bound by the host:
//! Llama-1B builds 551 primitives per step in bf16, 195 of them this bookkeeping. The view
//! shares the weight's memory, and the product is bit-identical (one BLAS or cuBLAS call with
//! the same operands either way).

use std::cell::OnceCell;
use std::ops::Deref;

use crate::array::Array;
use crate::error::Result;

/// A dense weight `[out, in]` (immutable, so its view can never go stale).
#[derive(Clone, Debug)]
pub struct Dense {
    w: Array,
    /// `W^T` as `[1, in, out]`, made on first use.
    t: OnceCell<Array>,
}

impl Dense {
    pub fn new(w: Array) -> Dense {
        Dense { w, t: OnceCell::new() }
    }

    /// The `[out, in]` matrix.
    pub fn array(&self) -> &Array {
        &self.w
    }

    /// `x @ W^T`.
    pub fn apply(&self, x: &Array) -> Result<Array> {
        let s = x.shape();
        if s.len() != 3 || s[0] != 1 {
            return x.matmul(&self.w.t()?);
        }
        let t = match self.t.get() {
            Some(t) => t,
            // Evaluated with the first product that uses it; a view of the weight from then on.
            None => {
                let t = self.w.t()?.expand_dims(&[0])?;
                self.t.get_or_init(|| t)
            }
        };
        x.matmul(t)
    }
}

impl From<Array> for Dense {
    fn from(w: Array) -> Dense {
        Dense::new(w)
    }
}

impl Deref for Dense {
    type Target = Array;

    fn deref(&self) -> &Array {
        &self.w
    }
}
