//! RMS norms and rotary embeddings of decode-sized inputs through MLX's `compile` on the CPU.
//!
//! MLX's CPU backend has no kernels for its `fast` ops: `rms_norm` runs as its reference
//! composition (8 primitives) and `rope` as 25 (positions, frequencies, sines and cosines, the
//! two halves, the rotation, the concatenation), and MLX's CPU scheduler spends microseconds on
//! every primitive it evaluates. Traced through `compile`, each element-wise chain becomes one
//! fused kernel: a SmolLM2 decode step went from 4067 primitives to 2559. The fused kernels
//! compute the same operations in the same order (the results are bit-identical to the unfused
//! ones; `engine/tests/decode_fusion.rs`).
//!
//! Only small inputs take this path: a trace is cached per input shape, and a prefill chunk is
//! bound by its matmuls, not by its primitives. The GPU has real kernels for these ops, so it
//! never does. `MLX_DISABLE_COMPILE=1` turns it off with every other compiled function.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::array::Array;
use crate::compile::Compiled;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast::{self, RopeFreqs};
use crate::runtime::Device;

/// Inputs of at most this many elements are fused: a decode step's hidden states and heads for
/// batches of up to 16 rows of 4096 features, not a prefill chunk.
const MAX_ELEMENTS: usize = 1 << 16;

/// What a compiled function bakes in (its constants), so equal layers share one trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    RmsNorm { eps: u32 },
    Rope { dims: i32, traditional: bool, base: u32, scale: u32, freqs: bool },
}

/// Whether `x` goes through a compiled function here (see the module's text).
pub fn applies(x: &Array) -> bool {
    x.size() <= MAX_ELEMENTS && Device::default_device() == Device::Cpu
}

fn compiled(key: Key, n_inputs: usize) -> Result<Arc<Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Compiled>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let c = Arc::new(Compiled::new(n_inputs, 1, false, move |xs: &[Array]| {
        Ok(vec![match key {
            Key::RmsNorm { eps } => fast::rms_norm(&xs[0], Some(&xs[1]), f32::from_bits(eps))?,
            Key::Rope { dims, traditional, base, scale, freqs } => {
                let freqs = if freqs { RopeFreqs::Freqs(&xs[2]) } else { RopeFreqs::Base(f32::from_bits(base)) };
                fast::rope_offsets(&xs[0], dims, traditional, freqs, f32::from_bits(scale), &xs[1])?
            }
        }])
    })?);
    cache.insert(key, c.clone());
    Ok(c)
}

fn single(mut out: Vec<Array>) -> Result<Array> {
    out.pop().ok_or_else(|| Error::Array("a compiled norm or rotation returned nothing".into()))
}

/// `fast::rms_norm(x, Some(weight), eps)`, compiled.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    single(compiled(Key::RmsNorm { eps: eps.to_bits() }, 2)?.call(&[x, weight])?)
}

/// `fast::rope_offsets` (one int32 offset, or one per row), compiled: the offset is an input,
/// so every step replays the same trace.
pub fn rope(
    x: &Array,
    dims: i32,
    traditional: bool,
    freqs: RopeFreqs<'_>,
    scale: f32,
    offsets: &Array,
) -> Result<Array> {
    let (base, f) = freqs.split();
    let key = Key::Rope { dims, traditional, base: base.to_bits(), scale: scale.to_bits(), freqs: f.is_some() };
    let offsets = if offsets.dtype() == Dtype::I32 { offsets.clone() } else { offsets.astype(Dtype::I32)? };
    match f {
        Some(f) => single(compiled(key, 3)?.call(&[x, &offsets, f])?),
        None => single(compiled(key, 2)?.call(&[x, &offsets])?),
    }
}
