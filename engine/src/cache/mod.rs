//! The engine-owned KV cache behind the forward context.
//!
//! Architectures never touch keys and values after handing them to
//! [`ForwardContext::attention`]: the cache stores them, builds the mask for the layer's kind
//! and runs attention. What each layer keeps follows the architecture's declared
//! [`LayerCache`] and the user's [`CacheConfig`]:
//!
//! - full-attention layers keep every position, in buffers grown in steps of [`STEP`] (so
//!   decoding writes in place instead of copying the whole cache every token);
//! - with `max_kv_size = m`, full-attention layers keep the first [`KEEP`] positions and the
//!   last `m - KEEP` in a ring (mlx-lm's `RotatingKVCache(max_size=m, keep=4)`);
//! - sliding-window layers keep their own last `window` positions in a ring, whatever
//!   `max_kv_size` is;
//! - with `kv_bits`, any of these stores keys and values quantized from `quantized_kv_start`
//!   on, and attention runs through quantized matmuls.
//!
//! `docs/kv-cache.md` explains the choices (trimming, the combinations, the differences
//! from mlx-lm and mlx-engine).

mod attention;
mod config;
mod layer;
pub mod prompt_cache;
mod stack;
mod tensor;

use mlx_engine_plugin_api::{Array, AttentionOptions, Error, ForwardContext, LayerCache, Positions, Result};

pub use attention::{attention_mask, AttentionExtras};
pub use config::{CacheConfig, KEEP, KV_BITS, KV_GROUP_SIZES};
pub use layer::STEP;
use layer::{Layer, LayerMark, Policy, Update};

/// The KV cache of one sequence: one layer cache per attention layer of the model.
///
/// `Clone` is a cheap snapshot: MLX arrays are immutable, reference-counted handles, and an
/// update never modifies an array another handle still holds (MLX only reuses a buffer in
/// place when nothing else refers to it), so a clone keeps seeing exactly the state it was
/// taken in while the original goes on.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Layer>,
    config: CacheConfig,
    /// Rows of a left-padded batch, when some row is padded.
    batch: Option<Batch>,
}

/// See [`KvCache::mark`].
pub struct Mark(Vec<LayerMark>);

/// The rows of a batch whose shorter prompts are padded on the left (as mlx-lm's batch
/// generation does): every row's tokens end in the same column, and row `b`'s first
/// `padding[b]` columns are padding that no real token attends to.
#[derive(Clone)]
struct Batch {
    padding: Vec<i32>,
    /// `padding` as `[B, 1, 1, 1]` int32, to mask keys.
    pads: Array,
}

impl KvCache {
    /// A cache with the default configuration: full layers unbounded, no quantization.
    pub fn new(layout: Vec<LayerCache>) -> KvCache {
        KvCache::build(layout, CacheConfig::default())
    }

    /// A cache following `config`, after [`CacheConfig::validate`]. Every combination of
    /// settings and layer kinds is supported (quantized rings included), so validation is
    /// the only way this fails.
    pub fn with_config(layout: Vec<LayerCache>, config: &CacheConfig) -> crate::Result<KvCache> {
        config.validate()?;
        Ok(KvCache::build(layout, config.clone()))
    }

    fn build(layout: Vec<LayerCache>, config: CacheConfig) -> KvCache {
        let quant = config.quant();
        let policy = |kind: LayerCache| match (kind, config.max_kv_size) {
            (LayerCache::Full, None) => Policy::Full,
            // Validation keeps `m` in KEEP + 1..=i32::MAX.
            (LayerCache::Full, Some(m)) => Policy::Ring { size: m as i32, keep: KEEP as i32 },
            // The model's own window, not bounded further by `max_kv_size`: shrinking it would
            // change what the layer computes even on short inputs. A zero window would keep
            // nothing, not even the current token; it is treated as 1.
            (LayerCache::SlidingWindow { window }, _) => {
                Policy::Ring { size: window.clamp(1, i32::MAX as u32) as i32, keep: 0 }
            }
        };
        let layers = layout.into_iter().map(|kind| Layer::new(policy(kind), quant)).collect();
        KvCache { layers, config, batch: None }
    }

    /// The cache of a batch of `left_padding.len()` rows whose prompts are left-padded by
    /// `left_padding[b]` columns. Positions (RoPE) reach the model per row through
    /// [`ForwardContext::positions`], and attention masks out each row's padding, so an
    /// architecture runs a batch without knowing. `max_kv_size` is refused with padding: its
    /// sinks are a row's first positions, which padding would fill.
    pub fn batched(layout: Vec<LayerCache>, config: &CacheConfig, left_padding: &[usize]) -> crate::Result<KvCache> {
        let bad = |reason: String| crate::Error::Param { name: "left_padding".into(), reason };
        if left_padding.is_empty() {
            return Err(bad("a batch needs at least one row".into()));
        }
        let padding = left_padding
            .iter()
            .map(|&p| i32::try_from(p).map_err(|_| bad(format!("{p} columns of padding is too many"))))
            .collect::<crate::Result<Vec<i32>>>()?;
        let mut cache = KvCache::with_config(layout, config)?;
        if padding.iter().any(|&p| p > 0) {
            if config.max_kv_size.is_some() {
                return Err(bad("left-padded batches cannot use max_kv_size (its sinks would be padding)".into()));
            }
            let pads = Array::from_slice(&padding, &[padding.len() as i32, 1, 1, 1])?;
            cache.batch = Some(Batch { padding, pads });
        }
        Ok(cache)
    }

    /// Each row's left padding (empty for a cache that is not a padded batch).
    pub fn left_padding(&self) -> &[i32] {
        self.batch.as_ref().map_or(&[], |b| &b.padding)
    }

    /// This cache as the context of a forward pass whose masks also follow `extras`.
    pub fn with_extras<'a>(&'a mut self, extras: &'a AttentionExtras) -> WithExtras<'a> {
        WithExtras { cache: self, extras }
    }

    /// [`ForwardContext::attention`] with the request's extras (its signature plus one).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
        extras: Option<&AttentionExtras>,
    ) -> Result<Array> {
        if let Some(b) = &self.batch {
            if q.dim(0)? != b.padding.len() as i32 {
                return Err(Error::Boundary(format!(
                    "attention over a batch of {} rows got queries of shape {:?}",
                    b.padding.len(),
                    q.shape()
                )));
            }
        }
        let queries = k.dim(2)?;
        let l = self.layer_mut(layer)?;
        let Update { keys, values, mask, key_positions } = l.update(k, v)?;
        let q_start = l.offset() - queries;
        let spans = extras.map_or(&[][..], |e| &e.bidirectional[..]);
        let pads = self.batch.as_ref().map(|b| &b.pads);
        let mask = attention::extend_mask(mask, &key_positions, q_start, queries, pads, spans)?;
        attention::attend(q, &keys, &values, scale, &mask, options.logit_softcap)
    }

    /// The configuration the cache was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Positions processed so far (the absolute offset of the next token), also once rings
    /// have dropped old positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.offset() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every layer can drop its last positions exactly (see [`KvCache::trim`]).
    pub fn is_trimmable(&self) -> bool {
        self.layers.iter().all(Layer::is_trimmable)
    }

    /// Whether [`KvCache::trim`] will still work after `more` positions are added: a
    /// speculative step that would make a ring evict snapshots the cache first instead.
    pub fn is_trimmable_after(&self, more: usize) -> bool {
        let more = i32::try_from(more).unwrap_or(i32::MAX);
        self.layers.iter().all(|l| l.is_trimmable_after(more))
    }

    /// Drops the last `n` positions (at most [`KvCache::len`]) of every layer, as if they had
    /// never been processed, and returns how many were dropped. Returns 0 and changes nothing
    /// when some layer cannot: a ring (sliding layer, or any layer under `max_kv_size`) that
    /// has already evicted positions. Quantized layers trim like dense ones.
    pub fn trim(&mut self, n: usize) -> usize {
        if !self.is_trimmable() {
            return 0;
        }
        let n = n.min(self.len()) as i32;
        for layer in &mut self.layers {
            layer.trim(n);
        }
        n as usize
    }

    /// A cheap record of the cache now, for [`KvCache::rewind`] after a forward pass that
    /// stopped part-way (some layers updated, others not). Full layers need only their length;
    /// rings (which an update may evict from) and layers an update may convert to quantized
    /// are kept whole, and those are small or about to be replaced anyway.
    pub fn mark(&self) -> Mark {
        Mark(self.layers.iter().map(Layer::mark).collect())
    }

    /// Puts every layer back to where [`KvCache::mark`] found it.
    pub fn rewind(&mut self, mark: Mark) {
        for (layer, m) in self.layers.iter_mut().zip(mark.0) {
            layer.rewind(m);
        }
    }

    /// Whether any layer stores its keys and values quantized now.
    pub fn is_quantized(&self) -> bool {
        self.layers.iter().any(Layer::is_quantized)
    }

    /// Bytes held by keys and values: allocated capacity (not just the used part), including
    /// quantization scales and biases.
    pub fn nbytes(&self) -> usize {
        self.layers.iter().map(Layer::nbytes).sum()
    }

    /// The arrays holding the cached keys and values, to evaluate the cache without the
    /// logits (prefill computes only what later tokens need).
    pub fn state(&self) -> Vec<&Array> {
        self.layers.iter().flat_map(Layer::state).collect()
    }

    /// Layer `layer`'s valid keys and values in time order, dequantized (`[B, H, T, D]`
    /// each), or `None` before its first update. For tests and debugging.
    pub fn layer_contents(&self, layer: usize) -> Result<Option<(Array, Array)>> {
        let n = self.layers.len();
        self.layers.get(layer).ok_or_else(|| out_of_range(layer, n))?.dense_state()
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut Layer> {
        let n = self.layers.len();
        self.layers.get_mut(layer).ok_or_else(|| out_of_range(layer, n))
    }
}

fn out_of_range(layer: usize, n: usize) -> Error {
    Error::Boundary(format!("the model attended through layer {layer}, but its cache layout declares {n} layers"))
}

impl ForwardContext for KvCache {
    fn offset(&self, layer: usize) -> Result<i32> {
        let n = self.layers.len();
        let offset = self.layers.get(layer).ok_or_else(|| out_of_range(layer, n))?.offset();
        if self.batch.is_some() {
            // A model that reads one offset would place a padded row's tokens wrongly.
            return Err(Error::Boundary(
                "this batch's rows start at different positions, and the model reads a single offset; \
                 it must read `positions` (plugin-api 1.1's `nn::Rope::apply_at`) to run batched"
                    .into(),
            ));
        }
        Ok(offset)
    }

    fn positions(&self, layer: usize) -> Result<Positions> {
        let n = self.layers.len();
        let offset = self.layers.get(layer).ok_or_else(|| out_of_range(layer, n))?.offset();
        match &self.batch {
            None => Ok(Positions::Offset(offset)),
            Some(b) => {
                let rows: Vec<i32> = b.padding.iter().map(|p| offset - p).collect();
                Ok(Positions::PerRow(Array::from_slice(&rows, &[rows.len() as i32])?))
            }
        }
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> Result<Array> {
        self.attend(layer, q, k, v, scale, options, None)
    }
}

/// A [`KvCache`] as the forward context of a request with [`AttentionExtras`].
pub struct WithExtras<'a> {
    cache: &'a mut KvCache,
    extras: &'a AttentionExtras,
}

impl ForwardContext for WithExtras<'_> {
    fn offset(&self, layer: usize) -> Result<i32> {
        self.cache.offset(layer)
    }

    fn positions(&self, layer: usize) -> Result<Positions> {
        self.cache.positions(layer)
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> Result<Array> {
        self.cache.attend(layer, q, k, v, scale, options, Some(self.extras))
    }
}
