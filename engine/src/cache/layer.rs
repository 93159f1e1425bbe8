//! One layer's keys and values: a step-grown buffer for full attention, a ring buffer of the
//! last `window` positions for sliding-window attention.

use mlx_engine_plugin_api::{concatenate, Array, LayerCache, Result};

/// Buffers grow by this many positions at a time (mlx-lm's `KVCache.step`).
pub const STEP: i32 = 256;

/// What attention runs over after an update.
pub(crate) struct Update {
    pub keys: Array,
    pub values: Array,
    /// Absolute position of `keys[.., 0, ..]` (meaningful when a mask is needed).
    pub k_start: i32,
    pub window: Option<u32>,
    /// Whether some query must not see some key (several queries, or keys beyond a window).
    pub needs_mask: bool,
}

pub(crate) struct Layer {
    kind: LayerCache,
    /// `[B, H, capacity, D]`; positions `0..len` are valid.
    keys: Option<Array>,
    values: Option<Array>,
    /// Valid positions in the buffers.
    len: i32,
    /// Sliding layers only: where the next single-token write goes once the ring is full
    /// (the oldest entry). Positions are in temporal order while the ring is not full.
    ring_next: i32,
    /// Absolute position of the next token.
    offset: i32,
}

/// `a[.., start..stop, ..]` along axis 2.
fn positions(a: &Array, start: i32, stop: i32) -> Result<Array> {
    a.slice_axis(2, start, stop)
}

/// Writes `update` into `buf` at position `at` along axis 2.
fn write_at(buf: &Array, update: &Array, at: i32) -> Result<Array> {
    let s = update.shape();
    buf.slice_update(update, &[0, 0, at, 0], &[s[0], s[1], at + s[2], s[3]], &[1, 1, 1, 1])
}

/// `buf` (valid up to `len`) with room for at least `need` positions, grown in [`STEP`]s but
/// never beyond `cap` when given.
fn reserve(buf: Option<&Array>, like: &Array, len: i32, need: i32, cap: Option<i32>) -> Result<Array> {
    if let Some(b) = buf {
        if b.dim(2)? >= need {
            return Ok(b.clone());
        }
    }
    let mut size = (need + STEP - 1) / STEP * STEP;
    if let Some(c) = cap {
        size = size.min(c.max(need));
    }
    let s = like.shape();
    match buf {
        Some(b) if len > 0 => {
            let extra = Array::zeros(&[s[0], s[1], size - len, s[3]], like.dtype())?;
            concatenate(&[&positions(b, 0, len)?, &extra], 2)
        }
        _ => Array::zeros(&[s[0], s[1], size, s[3]], like.dtype()),
    }
}

impl Layer {
    pub fn new(kind: LayerCache) -> Layer {
        Layer { kind, keys: None, values: None, len: 0, ring_next: 0, offset: 0 }
    }

    pub fn offset(&self) -> i32 {
        self.offset
    }

    pub fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }

    pub fn nbytes(&self) -> usize {
        self.keys.as_ref().map_or(0, Array::nbytes) + self.values.as_ref().map_or(0, Array::nbytes)
    }

    /// Appends `k`/`v` (`[B, H, L, D]`) and returns what attention runs over.
    pub fn update(&mut self, k: &Array, v: &Array) -> Result<Update> {
        match self.kind {
            LayerCache::Full => self.append(k, v, None),
            LayerCache::SlidingWindow { window } => {
                let w = window as i32;
                let new = k.dim(2)?;
                if new == 1 && self.len == w {
                    self.ring_write(k, v, w)
                } else if new == 1 || self.len + new <= w {
                    self.append(k, v, Some(w))
                } else {
                    self.window_prefill(k, v, w)
                }
            }
        }
    }

    /// Appends at the end of the valid positions (full layers, and sliding layers that still
    /// have room).
    fn append(&mut self, k: &Array, v: &Array, window: Option<i32>) -> Result<Update> {
        let new = k.dim(2)?;
        let need = self.len + new;
        let keys = write_at(&reserve(self.keys.as_ref(), k, self.len, need, window)?, k, self.len)?;
        let values = write_at(&reserve(self.values.as_ref(), v, self.len, need, window)?, v, self.len)?;
        let k_start = self.offset - self.len;
        self.len = need;
        self.offset += new;
        if window.is_some_and(|w| need == w) {
            self.ring_next = 0;
        }
        let update = Update {
            keys: positions(&keys, 0, need)?,
            values: positions(&values, 0, need)?,
            k_start,
            window: window.map(|w| w as u32),
            needs_mask: new > 1,
        };
        self.keys = Some(keys);
        self.values = Some(values);
        Ok(update)
    }

    /// One token into a full ring: it replaces the oldest entry. Every cached key is within
    /// the window of the new query, so attention needs no mask and no ordering.
    fn ring_write(&mut self, k: &Array, v: &Array, w: i32) -> Result<Update> {
        let (Some(kb), Some(vb)) = (&self.keys, &self.values) else {
            return self.append(k, v, Some(w));
        };
        let keys = write_at(kb, k, self.ring_next)?;
        let values = write_at(vb, v, self.ring_next)?;
        self.ring_next = (self.ring_next + 1) % w;
        self.offset += 1;
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        Ok(Update { keys, values, k_start: self.offset - w, window: Some(w as u32), needs_mask: false })
    }

    /// Several tokens into a sliding layer that would overflow its window: attend over the
    /// last `w - 1` cached positions plus the new ones with a window mask, then keep the last
    /// `w` positions in temporal order.
    fn window_prefill(&mut self, k: &Array, v: &Array, w: i32) -> Result<Update> {
        let new = k.dim(2)?;
        let ordered = |buf: &Option<Array>| -> Result<Option<Array>> {
            let Some(b) = buf else { return Ok(None) };
            let b = positions(b, 0, self.len)?;
            let b = if self.len == w && self.ring_next != 0 {
                concatenate(&[&positions(&b, self.ring_next, w)?, &positions(&b, 0, self.ring_next)?], 2)?
            } else {
                b
            };
            let keep = self.len.min(w - 1);
            Ok(Some(positions(&b, self.len - keep, self.len)?))
        };
        let keep = self.len.min(w - 1);
        let (keys, values) = match (ordered(&self.keys)?, ordered(&self.values)?) {
            (Some(pk), Some(pv)) if keep > 0 => (concatenate(&[&pk, k], 2)?, concatenate(&[&pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        let total = keep + new;
        let k_start = self.offset - keep;
        let stored = total.min(w);
        self.keys = Some(positions(&keys, total - stored, total)?);
        self.values = Some(positions(&values, total - stored, total)?);
        self.len = stored;
        self.ring_next = if stored == w { 0 } else { stored };
        self.offset += new;
        Ok(Update { keys, values, k_start, window: Some(w as u32), needs_mask: true })
    }
}
