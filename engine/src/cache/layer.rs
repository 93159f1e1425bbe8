//! One layer's keys and values under one of two policies:
//!
//! - **full**: every position, in a buffer grown in [`STEP`]s so decoding writes in place;
//! - **ring**: at most `size` positions: the first `keep` of the sequence (attention sinks)
//!   and the most recent `size - keep`. Sliding-window layers are rings with `keep = 0` and
//!   `size = window`; full-attention layers under `max_kv_size = m` are rings with `keep = 4`
//!   and `size = m` (mlx-lm's `RotatingKVCache`).
//!
//! Either policy stores dense or quantized [`Tensor`]s; the bookkeeping is the same, because
//! quantization is per position.

use mlx_engine_plugin_api::{Array, Error, Result};

use super::attention::{ring_mask, KeyPositions, Mask, RingKeys};
use super::config::QuantSpec;
use super::tensor::Tensor;

/// Buffers grow by this many positions at a time (mlx-lm's `KVCache.step`).
pub const STEP: i32 = 256;

/// How a layer bounds what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Every position.
    Full,
    /// The first `keep` positions and the last `size - keep` (`0 <= keep < size`).
    Ring { size: i32, keep: i32 },
}

/// What attention runs over after an update.
pub(crate) struct Update {
    pub keys: Tensor,
    pub values: Tensor,
    pub mask: Mask,
    /// The absolute position of each of `keys`' entries, for masks the layer does not build
    /// itself (padding of batched rows, bidirectional spans).
    pub key_positions: KeyPositions,
}

/// What [`Layer::rewind`] restores: a full layer's length (trimming back to it is exact), or a
/// copy of the whole layer.
pub(crate) enum LayerMark {
    Len(i32),
    Whole(Box<Layer>),
}

#[derive(Clone)]
pub(crate) struct Layer {
    policy: Policy,
    quant: Option<QuantSpec>,
    /// `[B, H, capacity, ..]`; entries `0..len` are valid.
    keys: Option<Tensor>,
    values: Option<Tensor>,
    /// Valid entries. Equals `offset` until a ring first drops a position; `size` after.
    len: i32,
    /// Rings only, while full (`len == size`): the entry the next single token replaces, the
    /// oldest non-sink one. Entries `keep..size` run from `next` round to `next - 1` in time
    /// order; while not full, entries are in time order.
    next: i32,
    /// Absolute position of the next token.
    offset: i32,
}

impl Layer {
    pub fn new(policy: Policy, quant: Option<QuantSpec>) -> Layer {
        Layer { policy, quant, keys: None, values: None, len: 0, next: 0, offset: 0 }
    }

    pub fn offset(&self) -> i32 {
        self.offset
    }

    pub fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).flat_map(Tensor::parts).collect()
    }

    pub fn nbytes(&self) -> usize {
        self.keys.as_ref().map_or(0, Tensor::nbytes) + self.values.as_ref().map_or(0, Tensor::nbytes)
    }

    pub fn is_quantized(&self) -> bool {
        self.keys.as_ref().is_some_and(Tensor::is_quantized)
    }

    /// The valid entries in time order, dequantized (tests and debugging).
    pub fn dense_state(&self) -> Result<Option<(Array, Array)>> {
        match (&self.keys, &self.values) {
            (Some(k), Some(v)) => Ok(Some((self.ordered(k)?.dense()?, self.ordered(v)?.dense()?))),
            _ => Ok(None),
        }
    }

    /// Whether the layer can be stacked with others into a batch ([`Layer::stack_parts`]): it
    /// is dense and keeps every position, or is a plain sliding window (a ring without sinks).
    /// Rows of a batch advance together, so one ring over the batch's columns rotates for all
    /// of them alike; sinks would be each row's own first positions, which padding shifts.
    pub fn is_stackable(&self) -> bool {
        self.quant.is_none() && matches!(self.policy, Policy::Full | Policy::Ring { keep: 0, .. })
    }

    /// A stackable layer's entries in time order (`[B, H, n, D]` keys and values) with the
    /// absolute position of the first; `None` before its first update.
    pub fn stack_parts(&self) -> Result<Option<(Array, Array, i32)>> {
        if !self.is_stackable() {
            return Err(Error::Boundary(
                "KV cache: only dense full or sliding-window layers stack into a batch (engine bug)".into(),
            ));
        }
        match (&self.keys, &self.values) {
            (Some(k), Some(v)) => {
                Ok(Some((self.ordered(k)?.dense()?, self.ordered(v)?.dense()?, self.offset - self.len)))
            }
            _ => Ok(None),
        }
    }

    /// A layer under `like`'s policy holding `keys` and `values` (`[B, H, n, D]`, in time
    /// order) as the last `n` of `offset` positions: the inverse of [`Layer::stack_parts`].
    pub fn from_parts(like: &Layer, keys: Array, values: Array, offset: i32) -> Result<Layer> {
        let n = keys.dim(2)?;
        let fits = match like.policy {
            Policy::Full => n == offset,
            Policy::Ring { size, keep } => keep == 0 && n <= size.min(offset),
        };
        if !fits || like.quant.is_some() {
            return Err(Error::Boundary(format!(
                "KV cache: {n} entries ending at position {offset} do not fit a {:?} layer (engine bug)",
                like.policy
            )));
        }
        let mut layer = Layer::new(like.policy, None);
        layer.keys = Some(Tensor::Dense(keys));
        layer.values = Some(Tensor::Dense(values));
        layer.len = n;
        // A full ring in time order: the oldest entry, 0, is the next to go.
        layer.next = 0;
        layer.offset = offset;
        Ok(layer)
    }

    /// Whether the last positions can be dropped so that the layer is exactly as if they had
    /// never been added: always for full layers; for rings only while nothing has been
    /// evicted yet (`offset <= size`), because an evicted position cannot be brought back.
    pub fn is_trimmable(&self) -> bool {
        match self.policy {
            Policy::Full => true,
            Policy::Ring { size, .. } => self.offset <= size,
        }
    }

    /// Whether the layer is still trimmable once `more` positions have been added (a ring that
    /// would evict on the way is not).
    pub fn is_trimmable_after(&self, more: i32) -> bool {
        match self.policy {
            Policy::Full => true,
            Policy::Ring { size, .. } => self.offset.saturating_add(more) <= size,
        }
    }

    /// Drops the last `n` positions (clamped to what is held); the buffers keep their capacity
    /// and the dropped entries are overwritten by the next update. Returns how many were
    /// dropped: 0 when the layer is not trimmable.
    pub fn trim(&mut self, n: i32) -> i32 {
        if !self.is_trimmable() {
            return 0;
        }
        // Untrimmed rings hold every position, so `len == offset` for both policies here.
        let n = n.clamp(0, self.len);
        self.len -= n;
        self.offset -= n;
        n
    }

    pub fn mark(&self) -> LayerMark {
        let may_quantize = self.quant.is_some() && !self.is_quantized();
        match self.policy {
            Policy::Full if !may_quantize => LayerMark::Len(self.offset),
            _ => LayerMark::Whole(Box::new(self.clone())),
        }
    }

    pub fn rewind(&mut self, mark: LayerMark) {
        match mark {
            LayerMark::Len(offset) => {
                self.trim(self.offset - offset);
            }
            LayerMark::Whole(layer) => *self = *layer,
        }
    }

    /// Appends `k`/`v` (`[B, H, L, D]`) and returns what attention runs over.
    pub fn update(&mut self, k: &Array, v: &Array) -> Result<Update> {
        let new = k.dim(2)?;
        let (nk, nv) = match self.prepare_quantization(k, v)? {
            Some(spec) => (Tensor::quantize(k, spec)?, Tensor::quantize(v, spec)?),
            None => (Tensor::Dense(k.clone()), Tensor::Dense(v.clone())),
        };
        match self.policy {
            Policy::Full => self.append(nk, nv, None),
            Policy::Ring { size, keep } => {
                if new == 1 && self.len == size {
                    self.ring_write(nk, nv, size, keep)
                } else if self.len + new <= size {
                    let update = self.append(nk, nv, Some(size))?;
                    if self.len == size {
                        self.next = keep;
                    }
                    Ok(update)
                } else {
                    self.overflow(nk, nv, size, keep)
                }
            }
        }
    }

    /// Decides whether this update is stored quantized, converting what the layer holds the
    /// first time its offset reaches `quantized_kv_start` — between updates, as mlx-lm's
    /// `maybe_quantize_kv_cache` does after each model call, so the first update of an empty
    /// layer always attends densely (this keeps greedy parity with mlx-lm). Once quantized, a
    /// layer stays quantized (also if trimmed below the start again): dequantizing would not
    /// give the original values back.
    fn prepare_quantization(&mut self, k: &Array, v: &Array) -> Result<Option<QuantSpec>> {
        let Some(spec) = self.quant else { return Ok(None) };
        for d in [k.dim(-1)?, v.dim(-1)?] {
            if d % spec.group_size != 0 {
                return Err(Error::Boundary(format!(
                    "invalid parameter `kv_group_size`: {} does not divide the model's head dimension {d}",
                    spec.group_size
                )));
            }
        }
        if !self.is_quantized() && (self.offset == 0 || self.offset < spec.start) {
            return Ok(None);
        }
        if !self.is_quantized() {
            // The valid entries only, in their current (possibly rotated) order: quantization
            // is per position, so the ring bookkeeping stays as it is.
            let convert = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
                t.as_ref().map(|t| t.slice(0, self.len)?.to_quantized(spec)).transpose()
            };
            if self.len > 0 {
                self.keys = convert(&self.keys)?;
                self.values = convert(&self.values)?;
            } else {
                (self.keys, self.values) = (None, None);
            }
        }
        Ok(Some(spec))
    }

    /// Appends at the end of the valid entries (full layers, and rings with room left).
    fn append(&mut self, k: Tensor, v: Tensor, cap: Option<i32>) -> Result<Update> {
        let new = k.positions()?;
        let need = self.len + new;
        let keys = reserve(self.keys.as_ref(), &k, self.len, need, cap)?.write_at(&k, self.len)?;
        let values = reserve(self.values.as_ref(), &v, self.len, need, cap)?.write_at(&v, self.len)?;
        self.len = need;
        self.offset += new;
        // Every key is visible to the last query; earlier queries of a chunk need the causal
        // mask. Rings that still have room hold every position, so no window applies yet.
        let mask = if new > 1 { Mask::Causal } else { Mask::None };
        let update = Update {
            keys: valid(&keys, need)?,
            values: valid(&values, need)?,
            mask,
            key_positions: KeyPositions::Consecutive { keys: need },
        };
        self.keys = Some(keys);
        self.values = Some(values);
        Ok(update)
    }

    /// One token into a full ring: it replaces the oldest non-sink entry. Everything left in
    /// the ring is visible to the new query (sinks, and the last `size - keep` positions
    /// including itself), so attention needs no mask and no ordering.
    fn ring_write(&mut self, k: Tensor, v: Tensor, size: i32, keep: i32) -> Result<Update> {
        let (Some(kb), Some(vb)) = (&self.keys, &self.values) else {
            return Err(Error::Boundary("KV cache: full ring without buffers (engine bug)".into()));
        };
        let keys = kb.write_at(&k, self.next)?;
        let values = vb.write_at(&v, self.next)?;
        let key_positions = KeyPositions::Ring { keep, size, written: self.next, newest: self.offset };
        self.next += 1;
        if self.next == size {
            self.next = keep;
        }
        self.offset += 1;
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        Ok(Update { keys, values, mask: Mask::None, key_positions })
    }

    /// Several tokens that do not fit a ring. Attention runs over the sinks, the last
    /// `span - 1` recent positions (all the first new query can see) and the new ones, with a
    /// mask giving every query the sinks plus its own last `span` positions; then the ring
    /// keeps the sinks and the last `span` positions, in time order.
    ///
    /// mlx-lm instead masks the concatenation as a plain window of `size` over buffer indices,
    /// so later queries of a chunk lose the sinks one by one and a long first chunk sees no
    /// sinks at all; here every query sees what single-token decoding would have shown it,
    /// so results do not depend on how the prompt was chunked.
    fn overflow(&mut self, k: Tensor, v: Tensor, size: i32, keep: i32) -> Result<Update> {
        let new = k.positions()?;
        let span = size - keep;
        let sinks = self.len.min(keep);
        let recent = (self.len - sinks).min(span - 1);
        let gather = |buf: &Option<Tensor>, fresh: &Tensor| -> Result<Tensor> {
            let mut parts = Vec::new();
            if let Some(b) = buf {
                let b = self.ordered(b)?;
                if sinks > 0 {
                    parts.push(b.slice(0, sinks)?);
                }
                if recent > 0 {
                    parts.push(b.slice(self.len - recent, self.len)?);
                }
            }
            parts.push(fresh.clone());
            Tensor::concat(&parts.iter().collect::<Vec<_>>())
        };
        let keys = gather(&self.keys, &k)?;
        let values = gather(&self.values, &v)?;
        let total = sinks + recent + new;
        let layout = RingKeys { sinks, recent_start: self.offset - recent, keys: total };
        let mask = Mask::Explicit(ring_mask(self.offset, new, &layout, keep, span)?);
        let key_positions = KeyPositions::Gathered(layout);
        // More than `size` positions exist now, so the first `keep` entries are positions
        // 0..keep and the last `span` entries come after them. The ring gets buffers of its
        // own (a bare slice would keep the whole chunk's buffer alive behind a view, which
        // `nbytes` would not show).
        let keep_ring = |t: &Tensor| -> Result<Tensor> {
            let tail = t.slice(total - span, total)?;
            if keep > 0 {
                Tensor::concat(&[&t.slice(0, keep)?, &tail])
            } else {
                tail.zeros_like(span)?.write_at(&tail, 0)
            }
        };
        self.keys = Some(keep_ring(&keys)?);
        self.values = Some(keep_ring(&values)?);
        self.len = size;
        self.next = keep;
        self.offset += new;
        Ok(Update { keys, values, mask, key_positions })
    }

    /// The valid entries of `buf` in time order.
    fn ordered(&self, buf: &Tensor) -> Result<Tensor> {
        let b = valid(buf, self.len)?;
        match self.policy {
            Policy::Ring { size, keep } if self.len == size && self.next != keep => {
                let mut parts = Vec::new();
                if keep > 0 {
                    parts.push(b.slice(0, keep)?);
                }
                parts.push(b.slice(self.next, size)?);
                parts.push(b.slice(keep, self.next)?);
                Tensor::concat(&parts.iter().collect::<Vec<_>>())
            }
            _ => Ok(b),
        }
    }
}

/// The first `len` entries (the buffer itself when that is all of it).
fn valid(buf: &Tensor, len: i32) -> Result<Tensor> {
    if buf.positions()? == len {
        Ok(buf.clone())
    } else {
        buf.slice(0, len)
    }
}

/// `buf` (valid up to `len`) with room for at least `need` entries, grown in [`STEP`]s but
/// never beyond `cap` when given. `like` gives the representation and trailing shapes.
fn reserve(buf: Option<&Tensor>, like: &Tensor, len: i32, need: i32, cap: Option<i32>) -> Result<Tensor> {
    if let Some(b) = buf {
        if b.positions()? >= need {
            return Ok(b.clone());
        }
    }
    let mut size = (need + STEP - 1) / STEP * STEP;
    if let Some(c) = cap {
        size = size.min(c.max(need));
    }
    match buf {
        Some(b) if len > 0 => Tensor::concat(&[&b.slice(0, len)?, &like.zeros_like(size - len)?]),
        _ => like.zeros_like(size),
    }
}
