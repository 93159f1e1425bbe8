//! Random numbers: explicit keys for reproducible sampling, or MLX's global generator.

use crate::array::{call1, check, ops, Array};
use crate::dtype::Dtype;
use crate::error::Result;
use crate::ops::opt_raw;

/// Seeds MLX's global generator (used when no key is passed).
pub fn seed(seed: u64) -> Result<()> {
    // SAFETY: plain value argument.
    check(unsafe { (ops().random_seed)(seed) })
}

/// A PRNG key from a seed.
pub fn key(seed: u64) -> Result<Array> {
    // SAFETY: plain value in, owned handle out.
    call1(|out| unsafe { (ops().random_key)(seed, out) })
}

/// `num` new keys derived from `key`, as an array of shape `[num, 2]`.
pub fn split(key: &Array, num: i32) -> Result<Array> {
    // SAFETY: live handle in, owned handle out.
    call1(|out| unsafe { (ops().random_split)(key.as_raw(), num, out) })
}

/// Samples an index along `axis` from unnormalised log-probabilities.
pub fn categorical(logits: &Array, axis: i32, key: Option<&Array>) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().random_categorical)(logits.as_raw(), axis, opt_raw(key), out) })
}

pub fn uniform(shape: &[i32], low: f64, high: f64, dtype: Dtype, key: Option<&Array>) -> Result<Array> {
    // SAFETY: live slice and handle (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().random_uniform)(shape.as_ptr(), shape.len(), low, high, dtype as u32, opt_raw(key), out)
    })
}

pub fn normal(shape: &[i32], loc: f64, scale: f64, dtype: Dtype, key: Option<&Array>) -> Result<Array> {
    // SAFETY: live slice and handle (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().random_normal)(shape.as_ptr(), shape.len(), loc, scale, dtype as u32, opt_raw(key), out)
    })
}
