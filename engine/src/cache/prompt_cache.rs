//! Cross-request KV reuse for one model (mlx-engine's `CacheWrapper`): the live cache with the
//! tokens it holds, plus a small LRU of snapshots keyed by the token prefix each one holds.
//!
//! Why snapshots and not just the live cache: some caches cannot be trimmed back (a sliding
//! window layer that has dropped positions, a rotating `max_kv_size` cache after it wrapped),
//! so serving an edited conversation needs a copy taken *before* the divergence. Snapshots are
//! cheap: cloning a [`KvCache`] clones array handles, and MLX arrays are immutable, so a
//! snapshot costs memory only once the live cache writes past it.
//!
//! Each request goes through [`PromptCache::prepare`]:
//! 1. *flush*: the live cache goes into the LRU, keyed by the tokens it actually holds (a
//!    cancelled prefill or the last sampled token leave the token list longer than the cache);
//! 2. *fetch*: the stored cache that covers the longest part of the prompt, never more than
//!    `prompt.len() - 1` tokens (decoding needs one token to run). A stored prefix is used as
//!    it is; any other entry sharing a prefix with the prompt is trimmed back to it when its
//!    cache can be trimmed. So an exact repeat trims one token, or, when that is impossible,
//!    falls back to a shorter snapshot such as the checkpoint. Nothing usable: a fresh cache.
//!
//! The generation then prefills the rest and may store a *checkpoint* (see
//! [`PromptCache::checkpoint_at`]) and records the tokens it samples.

use mlx_engine_plugin_api::LayerCache;

use super::{CacheConfig, KvCache};
use crate::error::Result;

/// How many snapshots are kept by default (mlx-engine's `history_capacity`).
pub const DEFAULT_CAPACITY: usize = 10;

/// The checkpoint is taken this many tokens before the end of the prompt: chat templates end a
/// prompt with the generation prompt (and sometimes hidden reasoning markers), which the next
/// turn does not repeat, so the conversation before it is what the next turn shares.
/// Same value as mlx-lm's server and mlx-engine.
pub const CHECKPOINT_TAIL_TOKENS: usize = 11;

/// Where a snapshot came from; eviction keeps a balance between the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The live cache of a finished request (prompt plus generated tokens).
    Assistant,
    /// A checkpoint taken during prefill, before the generation prompt.
    User,
}

/// What the cache did, counted since load (or the last [`PromptCache::clear`]); for tests
/// and for hosts that report cache efficiency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheEvents {
    /// Requests prepared.
    pub requests: usize,
    /// Requests that reused at least one cached token.
    pub hits: usize,
    /// Prompt tokens served from cache, summed over requests.
    pub cached_tokens: usize,
    /// Reuses that had to trim a stored cache back to the shared prefix.
    pub trims: usize,
    /// Reuses of a stored prefix as it was (no trim).
    pub restores: usize,
    /// Requests that started from an empty cache.
    pub fresh: usize,
    /// Live caches stored into the LRU.
    pub flushes: usize,
    /// Checkpoints stored during prefill.
    pub checkpoints: usize,
    /// Entries dropped to keep the capacity.
    pub evictions: usize,
    /// Entries dropped because a new trimmable entry extends them (it can serve them by trimming).
    pub superseded: usize,
}

/// One stored snapshot, as reported by [`PromptCache::info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub tokens: usize,
    pub kind: EntryKind,
    pub trimmable: bool,
    pub nbytes: usize,
}

/// A summary of the cache's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptCacheInfo {
    /// Positions in the live cache.
    pub live_tokens: usize,
    pub live_nbytes: usize,
    /// Stored snapshots, most recently used first.
    pub entries: Vec<EntryInfo>,
    pub capacity: usize,
    pub events: CacheEvents,
}

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    kind: EntryKind,
    /// Logical time of the last store or use; the smallest is the least recently used.
    used: u64,
}

/// The live cache of one model and its snapshots. Lives on the model's worker thread.
pub struct PromptCache {
    layout: Vec<LayerCache>,
    config: CacheConfig,
    live: KvCache,
    /// The tokens the live cache was asked to hold: the prompt, then each sampled token. May
    /// run ahead of the cache (a cancelled prefill, the last sampled token); [`Self::flush`]
    /// cuts it to the cache's length.
    live_tokens: Vec<u32>,
    entries: Vec<Entry>,
    capacity: usize,
    clock: u64,
    events: CacheEvents,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PromptCache {
    /// An empty cache for a model with this layout; fails when `config` is invalid. A
    /// `capacity` of 0 keeps no snapshots, which turns reuse off: the live cache is only ever
    /// reused through the snapshot it becomes at the next request.
    pub fn new(layout: Vec<LayerCache>, config: CacheConfig, capacity: usize) -> Result<PromptCache> {
        let live = KvCache::with_config(layout.clone(), &config)?;
        Ok(PromptCache {
            layout,
            config,
            live,
            live_tokens: Vec::new(),
            entries: Vec::new(),
            capacity,
            clock: 0,
            events: CacheEvents::default(),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn fresh(&self) -> Result<KvCache> {
        KvCache::with_config(self.layout.clone(), &self.config)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Makes the live cache ready for `prompt` and returns how many of its tokens are already
    /// in it (at most `prompt.len() - 1`). With `reuse` false the cache starts empty (the old
    /// live cache is still kept as a snapshot). Afterwards the live cache is
    /// [`Self::live_mut`] and holds `prompt[..cached]`.
    pub fn prepare(&mut self, prompt: &[u32], reuse: bool) -> Result<usize> {
        self.events.requests += 1;
        self.flush();
        let limit = prompt.len().saturating_sub(1);
        let found = if reuse && limit > 0 { self.fetch(prompt, limit) } else { None };
        let cached = match found {
            Some((cache, n)) => {
                tracing::debug!("prompt cache: {n} of {} prompt tokens cached", prompt.len());
                self.live = cache;
                self.events.hits += 1;
                self.events.cached_tokens += n;
                n
            }
            None => {
                tracing::debug!("prompt cache: no usable prefix for {} prompt tokens (reuse {reuse})", prompt.len());
                self.live = self.fresh()?;
                self.events.fresh += 1;
                0
            }
        };
        self.live_tokens = prompt.to_vec();
        Ok(cached)
    }

    /// For hosts that run several sequences at once (the server's scheduler), each in a cache
    /// of its own: a copy of the stored cache covering the longest part of `prompt` (at most
    /// `prompt.len() - 1` tokens), or a fresh cache, with how many tokens it holds. The live
    /// cache is not touched; counted in [`CacheEvents`] as [`Self::prepare`] counts.
    pub fn lookup(&mut self, prompt: &[u32], reuse: bool) -> Result<(KvCache, usize)> {
        self.events.requests += 1;
        let limit = prompt.len().saturating_sub(1);
        let found = if reuse && limit > 0 { self.fetch(prompt, limit) } else { None };
        match found {
            Some((cache, n)) => {
                self.events.hits += 1;
                self.events.cached_tokens += n;
                Ok((cache, n))
            }
            None => {
                self.events.fresh += 1;
                Ok((self.fresh()?, 0))
            }
        }
    }

    /// Stores a sequence's cache from [`Self::lookup`] once it is done, keyed by `tokens` (the
    /// prompt then the sampled tokens; cut to what the cache holds, as [`Self::flush`] does).
    pub fn store(&mut self, mut tokens: Vec<u32>, cache: KvCache) {
        let held = cache.len();
        if held == 0 || tokens.len() < held {
            return;
        }
        tokens.truncate(held);
        self.events.flushes += 1;
        self.insert(tokens, cache, EntryKind::Assistant);
    }

    /// Stores a checkpoint of a sequence from [`Self::lookup`]: `snapshot` holds `tokens`.
    pub fn store_snapshot(&mut self, tokens: &[u32], snapshot: KvCache) {
        if snapshot.len() != tokens.len() || tokens.is_empty() {
            return;
        }
        self.events.checkpoints += 1;
        self.insert(tokens.to_vec(), snapshot, EntryKind::User);
    }

    /// The best stored cache for `prompt`, trimmed when needed, holding at most `limit`
    /// tokens: the entry that covers the most; on a tie one that needs no trim, then the most
    /// recently used. Entries whose trim does not go as asked are skipped.
    fn fetch(&mut self, prompt: &[u32], limit: usize) -> Option<(KvCache, usize)> {
        // (usable tokens, needs a trim, last use, index)
        let mut candidates: Vec<(usize, bool, u64, usize)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let len = e.tokens.len();
            if len <= limit && prompt.starts_with(&e.tokens) {
                candidates.push((len, false, e.used, i));
            } else if e.cache.is_trimmable() {
                let usable = common_prefix(&e.tokens, prompt).min(limit);
                if usable > 0 {
                    candidates.push((usable, true, e.used, i));
                }
            }
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        for (usable, needs_trim, _, i) in candidates {
            let mut cache = self.entries[i].cache.clone();
            if needs_trim {
                let want = cache.len() - usable;
                if cache.trim(want) != want || cache.len() != usable {
                    continue;
                }
                tracing::debug!("prompt cache: entry {i} trimmed by {want} to {usable} tokens");
                self.events.trims += 1;
            } else {
                tracing::debug!("prompt cache: entry {i} restored ({usable} tokens)");
                self.events.restores += 1;
            }
            let now = self.tick();
            self.entries[i].used = now;
            return Some((cache, usable));
        }
        None
    }

    /// Stores the live cache as a snapshot keyed by the tokens it holds, and leaves the live
    /// cache empty. A token list shorter than the cache means the two lost track of each
    /// other; the cache is dropped rather than stored under a wrong key.
    fn flush(&mut self) {
        let held = self.live.len();
        let live = std::mem::replace(&mut self.live, KvCache::new(Vec::new()));
        let mut tokens = std::mem::take(&mut self.live_tokens);
        if held == 0 || tokens.len() < held {
            return;
        }
        tokens.truncate(held);
        self.events.flushes += 1;
        self.insert(tokens, live, EntryKind::Assistant);
    }

    /// Adds an entry (replacing one with the same tokens), drops the prefixes a trimmable
    /// entry makes redundant, then evicts down to the capacity.
    fn insert(&mut self, tokens: Vec<u32>, cache: KvCache, kind: EntryKind) {
        if self.capacity == 0 {
            return;
        }
        self.entries.retain(|e| e.tokens != tokens);
        if cache.is_trimmable() {
            let before = self.entries.len();
            self.entries.retain(|e| !(e.tokens.len() < tokens.len() && tokens.starts_with(&e.tokens)));
            self.events.superseded += before - self.entries.len();
        }
        let used = self.tick();
        self.entries.push(Entry { tokens, cache, kind, used });
        while self.entries.len() > self.capacity {
            self.evict();
        }
    }

    /// Drops the least recently used entry of whichever kind has more entries (assistant on a
    /// tie). Balancing keeps a long run of one kind (many turns, or many branch checkpoints)
    /// from pushing out every entry of the other, which serves a different kind of reuse.
    fn evict(&mut self) {
        let assistants = self.entries.iter().filter(|e| e.kind == EntryKind::Assistant).count();
        let kind = if assistants * 2 >= self.entries.len() { EntryKind::Assistant } else { EntryKind::User };
        let victim =
            self.entries.iter().enumerate().filter(|(_, e)| e.kind == kind).min_by_key(|(_, e)| e.used).map(|(i, _)| i);
        if let Some(i) = victim {
            self.entries.remove(i);
            self.events.evictions += 1;
        }
    }

    /// Cuts the live cache back to its first `n` tokens (a reuse that would end inside an image
    /// span restarts at the span); when its layers cannot be trimmed it starts empty instead.
    /// Returns what it holds afterwards.
    pub fn limit_live(&mut self, n: usize) -> Result<usize> {
        let held = self.live.len();
        if n >= held {
            return Ok(held);
        }
        if self.live.trim(held - n) == held - n {
            self.events.cached_tokens -= held - n;
            return Ok(n);
        }
        self.events.cached_tokens -= held;
        self.live = self.fresh()?;
        Ok(0)
    }

    /// The live cache, as prepared for the current request.
    pub fn live(&self) -> &KvCache {
        &self.live
    }

    /// The live cache, as prepared for the current request.
    pub fn live_mut(&mut self) -> &mut KvCache {
        &mut self.live
    }

    /// Tokens the live cache is keyed by: the prompt of the last [`Self::prepare`] and every
    /// [`Self::record`]ed token since (one or more ahead of its positions while decoding).
    pub fn recorded(&self) -> usize {
        self.live_tokens.len()
    }

    /// Notes a sampled token (it enters the cache when it is fed back).
    pub fn record(&mut self, token: u32) {
        self.live_tokens.push(token);
    }

    /// Where the current prefill should stop for a checkpoint, if anywhere: `prompt_len - 11`
    /// when that lies beyond what came from cache. None with KV quantization, whose snapshots
    /// would be taken mid-conversion (mlx-engine skips them too), and with no snapshots kept.
    pub fn checkpoint_at(&self, prompt_len: usize, cached: usize) -> Option<usize> {
        if self.config.kv_bits.is_some() || self.capacity == 0 {
            return None;
        }
        prompt_len.checked_sub(CHECKPOINT_TAIL_TOKENS).filter(|&at| at > cached)
    }

    /// Stores a snapshot of the live cache, which must hold exactly `len` tokens of the
    /// current prompt.
    pub fn store_checkpoint(&mut self, len: usize, snapshot: KvCache) {
        tracing::debug!("prompt cache: checkpoint stored at {len} tokens");
        if snapshot.len() != len || self.live_tokens.len() < len {
            return;
        }
        self.events.checkpoints += 1;
        let tokens = self.live_tokens[..len].to_vec();
        self.insert(tokens, snapshot, EntryKind::User);
    }

    /// Forgets the live cache (after an error or a panic mid-forward its layers may disagree).
    /// Snapshots are unaffected.
    pub fn discard_live(&mut self) {
        self.live = KvCache::new(Vec::new());
        self.live_tokens.clear();
    }

    /// Drops the live cache, every snapshot and the counters.
    pub fn clear(&mut self) {
        self.discard_live();
        self.entries.clear();
        self.events = CacheEvents::default();
    }

    pub fn events(&self) -> &CacheEvents {
        &self.events
    }

    pub fn info(&self) -> PromptCacheInfo {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.used));
        PromptCacheInfo {
            live_tokens: self.live.len(),
            live_nbytes: self.live.nbytes(),
            entries: entries
                .into_iter()
                .map(|e| EntryInfo {
                    tokens: e.tokens.len(),
                    kind: e.kind,
                    trimmable: e.cache.is_trimmable(),
                    nbytes: e.cache.nbytes(),
                })
                .collect(),
            capacity: self.capacity,
            events: self.events.clone(),
        }
    }
}
