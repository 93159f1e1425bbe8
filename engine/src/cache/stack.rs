//! Stacking single-sequence caches into one left-padded batch and splitting it back: what
//! continuous batching needs when rows join or leave a running batch.
//!
//! Stacking copies every row's keys and values once (left-padded with zeros to the longest
//! row, the padding masked by attention as in [`KvCache::batched`]); decoding then appends to
//! the batch in place. Rows are aligned at their newest position, so a batch column is the
//! same distance back for every row. A sliding-window layer (a ring without sinks) stacks as
//! one ring over the batch's columns, each row's entries un-rotated into time order; the
//! window is then the same span of columns for every row, and a row whose ring was not full
//! has its missing columns in its padding. `max_kv_size` rings (whose sinks are each row's own
//! first positions) and quantized layers (whose padding would need quantizing too) do not
//! stack; those rows decode one at a time instead.

use mlx_engine_plugin_api::{concatenate, Array, Error, LayerCache};

use super::layer::Layer;
use super::KvCache;

fn bug(what: &str) -> crate::Error {
    crate::Error::Array(Error::Boundary(format!("KV cache: {what}")))
}

impl KvCache {
    /// Whether this is a single, unpadded sequence whose layers can join a batch.
    pub fn is_stackable(&self) -> bool {
        self.batch.is_none()
            && self.config.max_kv_size.is_none()
            && self.config.kv_bits.is_none()
            && !self.layers.is_empty()
            && self.layers.iter().all(Layer::is_stackable)
    }

    /// One batch of the single-sequence caches `rows` (each [`KvCache::is_stackable`], none
    /// empty), row `b` left-padded by `longest - rows[b].len()` columns.
    pub fn stack(rows: &[&KvCache]) -> crate::Result<KvCache> {
        let first = rows.first().ok_or_else(|| bug("stacking no rows"))?;
        let n_layers = first.layers.len();
        if rows.iter().any(|r| !r.is_stackable() || r.layers.len() != n_layers || r.is_empty()) {
            return Err(bug("stacking caches that are not single, dense sequences of one model"));
        }
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let padding: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
        let mut batch = KvCache::batched(vec![LayerCache::Full; n_layers], &first.config, &padding)?;
        for l in 0..n_layers {
            let parts: Vec<(Array, Array)> = rows
                .iter()
                .map(|r| r.layers[l].stack_parts()?.map(|(k, v, _)| (k, v)).ok_or_else(|| bug("a layer without keys")))
                .collect::<crate::Result<_>>()?;
            // Entries a row's layer holds: all its positions, or a full window's worth.
            let n = parts.iter().map(|(k, _)| k.dim(2)).collect::<mlx_engine_plugin_api::Result<Vec<_>>>()?;
            let widest = n.iter().copied().max().unwrap_or(0);
            let pad = |a: &Array, held: i32| left_pad(a, (widest - held) as usize);
            let keys: Vec<Array> = parts.iter().zip(&n).map(|((k, _), &h)| pad(k, h)).collect::<crate::Result<_>>()?;
            let values: Vec<Array> =
                parts.iter().zip(&n).map(|((_, v), &h)| pad(v, h)).collect::<crate::Result<_>>()?;
            let keys = concatenate(&keys.iter().collect::<Vec<_>>(), 0)?;
            let values = concatenate(&values.iter().collect::<Vec<_>>(), 0)?;
            batch.layers[l] = Layer::from_parts(&first.layers[l], keys, values, longest as i32)?;
        }
        Ok(batch)
    }

    /// The rows of a stacked batch as single-sequence caches, each without its padding. They
    /// are views of the batch's buffers (cheap, for rows stacked again at once); a row that is
    /// kept needs [`KvCache::detached`].
    pub fn unstack(&self) -> crate::Result<Vec<KvCache>> {
        let parts: Vec<(Array, Array, i32)> = self
            .layers
            .iter()
            .map(|l| l.stack_parts()?.ok_or_else(|| bug("unstacking a batch with an empty layer")))
            .collect::<crate::Result<_>>()?;
        let rows = parts.first().ok_or_else(|| bug("unstacking an empty batch"))?.0.dim(0)? as usize;
        let padding: Vec<i32> = match &self.batch {
            Some(b) => b.padding.clone(),
            None => vec![0; rows],
        };
        let mut out = Vec::with_capacity(rows);
        for (b, &pad) in padding.iter().enumerate() {
            let b = b as i32;
            let mut layers = Vec::with_capacity(parts.len());
            for (layer, (k, v, first)) in self.layers.iter().zip(&parts) {
                let (n, offset) = (k.dim(2)?, layer.offset());
                // The row's entries: from its first real column, or all the layer kept.
                let start = (pad - first).max(0);
                let row = |a: &Array| a.slice_axis(0, b, b + 1)?.slice_axis(2, start, n);
                layers.push(Layer::from_parts(layer, row(k)?, row(v)?, offset - pad)?);
            }
            out.push(KvCache { layers, config: self.config.clone(), batch: None });
        }
        Ok(out)
    }
}

impl KvCache {
    /// A stackable cache in buffers of its own: a row from [`KvCache::unstack`] would
    /// otherwise keep the whole batch's buffers alive (in the prompt cache, for as long as its
    /// entry lives).
    pub fn detached(&self) -> crate::Result<KvCache> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (k, v, _) = l.stack_parts()?.ok_or_else(|| bug("a layer without keys"))?;
            let copy = |a: &Array| -> mlx_engine_plugin_api::Result<Array> {
                let s = a.shape();
                let start = vec![0; s.len()];
                let strides = vec![1; s.len()];
                Array::zeros(&s, a.dtype())?.slice_update(a, &start, &s, &strides)
            };
            layers.push(Layer::from_parts(l, copy(&k)?, copy(&v)?, l.offset())?);
        }
        Ok(KvCache { layers, config: self.config.clone(), batch: self.batch.clone() })
    }
}

/// `a` (`[1, H, T, D]`) with `pad` zero columns before its first position.
fn left_pad(a: &Array, pad: usize) -> crate::Result<Array> {
    if pad == 0 {
        return Ok(a.clone());
    }
    let mut shape = a.shape();
    shape[2] = pad as i32;
    let zeros = Array::zeros(&shape, a.dtype())?;
    Ok(concatenate(&[&zeros, a], 2)?)
}
