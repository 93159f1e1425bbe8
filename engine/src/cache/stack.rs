//! Stacking single-sequence caches into one left-padded batch and splitting it back: what
//! continuous batching needs when rows join or leave a running batch.
//!
//! Stacking copies every row's keys and values once (left-padded with zeros to the longest
//! row, the padding masked by attention as in [`KvCache::batched`]); decoding then appends to
//! the batch in place. Only caches whose layers keep every position densely stack: a ring
//! (sliding window, `max_kv_size`) holds its positions in rotated order, and a quantized layer
//! would need its padding quantized too; those rows decode one at a time instead.

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
            return Err(bug("stacking caches that are not single, full, dense sequences of one model"));
        }
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let padding: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
        let mut batch = KvCache::batched(vec![LayerCache::Full; n_layers], &first.config, &padding)?;
        for l in 0..n_layers {
            let mut keys = Vec::with_capacity(rows.len());
            let mut values = Vec::with_capacity(rows.len());
            for (r, &pad) in rows.iter().zip(&padding) {
                let (k, v) = r.layers[l].dense_full()?.ok_or_else(|| bug("a layer without keys"))?;
                keys.push(left_pad(&k, pad)?);
                values.push(left_pad(&v, pad)?);
            }
            let keys = concatenate(&keys.iter().collect::<Vec<_>>(), 0)?;
            let values = concatenate(&values.iter().collect::<Vec<_>>(), 0)?;
            batch.layers[l] = Layer::from_dense_full(keys, values)?;
        }
        Ok(batch)
    }

    /// The rows of a stacked batch as single-sequence caches, each without its padding. They
    /// are views of the batch's buffers (cheap, for rows stacked again at once); a row that is
    /// kept needs [`KvCache::detached`].
    pub fn unstack(&self) -> crate::Result<Vec<KvCache>> {
        let rows = match self.layers.first().map(Layer::dense_full).transpose()?.flatten() {
            Some((k, _)) => k.dim(0)? as usize,
            None => return Err(bug("unstacking an empty batch")),
        };
        let padding: Vec<i32> = match &self.batch {
            Some(b) => b.padding.clone(),
            None => vec![0; rows],
        };
        let dense: Vec<(Array, Array)> = self
            .layers
            .iter()
            .map(|l| l.dense_full()?.ok_or_else(|| Error::Boundary("KV cache: a layer without keys".into())))
            .collect::<mlx_engine_plugin_api::Result<_>>()?;
        let mut out = Vec::with_capacity(rows);
        for (b, &pad) in padding.iter().enumerate() {
            let b = b as i32;
            let mut layers = Vec::with_capacity(dense.len());
            for (k, v) in &dense {
                let t = k.dim(2)?;
                let row = |a: &Array| a.slice_axis(0, b, b + 1)?.slice_axis(2, pad, t);
                layers.push(Layer::from_dense_full(row(k)?, row(v)?)?);
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
            let (k, v) = l.dense_full()?.ok_or_else(|| bug("a layer without keys"))?;
            let copy = |a: &Array| -> mlx_engine_plugin_api::Result<Array> {
                let s = a.shape();
                let start = vec![0; s.len()];
                let strides = vec![1; s.len()];
                Array::zeros(&s, a.dtype())?.slice_update(a, &start, &s, &strides)
            };
            layers.push(Layer::from_dense_full(copy(&k)?, copy(&v)?)?);
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
