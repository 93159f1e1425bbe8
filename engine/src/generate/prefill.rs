//! Chunked prefill: the uncached part of the prompt goes through the model a chunk at a time,
//! with a progress reporter that can cancel, and a cache that stays usable when it does.
//!
//! Why chunks: one forward pass over `L` new tokens holds activations for all of them, and the
//! attention of each layer holds a `heads x L x context` score matrix (on the CPU, MLX builds
//! it in full). Evaluating the cache after each chunk and returning MLX's buffer cache bounds
//! what a long prompt needs beyond weights and KV to one chunk's worth. Because the scores also
//! grow with the context already cached, the chunk shrinks as the context grows
//! ([`chunk_size`]); mlx-engine needed the same (its "dynamic prefill step").

use std::sync::atomic::{AtomicBool, Ordering};

use mlx_engine_plugin_api::runtime::{self, Device};
use mlx_engine_plugin_api::{Array, AttentionOptions, Dtype, DynModel, ForwardContext, Input, Positions};

use crate::cache::KvCache;
use crate::error::{Error, Result};

/// Tokens per prefill chunk when the request does not say (mlx-engine's default since it moved
/// from 512: larger chunks use the hardware better, and the score bound below keeps memory in
/// check).
pub const DEFAULT_PREFILL_STEP_SIZE: usize = 2048;

/// The most bytes one chunk's attention scores (one layer, `heads x chunk x keys`, counted as
/// f32) may take before the chunk is shrunk: 256 MiB. A 2048-token prompt on a 9-head model
/// (151 MiB) keeps its full chunk; with 8k tokens cached the same model gets chunks of about
/// 800.
pub const ATTENTION_SCORE_BUDGET: usize = 256 << 20;

/// Chunks never shrink below this many tokens (unless the step itself is smaller): below it
/// the per-chunk overhead (graph building, one evaluation, buffer release) dominates.
pub const MIN_CHUNK: usize = 64;

/// A chunk that took longer than this (seconds) makes the next one check for a cancel between
/// layers; the first chunk of a prefill does where [`Plan::layerwise_first`] says so (on the
/// CPU, since its speed is not known yet).
pub const LAYERWISE_AFTER_SECONDS: f64 = 0.25;

/// Reports prefill progress; every call may return `false` to cancel the request. After a
/// `false` no further call is made. Runs on the model's worker thread.
pub trait PromptProgress: Send {
    /// Before any work. `cached`: prompt tokens reused from the cache; `total`: the whole
    /// prompt, including the last token, which is not prefilled but seeds decoding.
    fn begin(&mut self, _cached: usize, _total: usize) -> bool {
        true
    }

    /// After each chunk. `processed`: uncached tokens prefilled so far; it ends at
    /// `total - cached - 1`.
    fn update(&mut self, _processed: usize) -> bool {
        true
    }

    /// After the last chunk, before decoding starts.
    fn finish(&mut self) -> bool {
        true
    }

    /// The draft model's prefill (speculative decoding), after the main model's: the same
    /// three reports, about the draft's own cache. By default they report nothing and never
    /// cancel.
    fn draft_begin(&mut self, _cached: usize, _total: usize) -> bool {
        true
    }

    fn draft_update(&mut self, _processed: usize) -> bool {
        true
    }

    fn draft_finish(&mut self) -> bool {
        true
    }
}

/// A reporter that reports nothing and never cancels.
pub struct NoProgress;

impl PromptProgress for NoProgress {}

/// `prefill_step_size` as given (`None` = the default), checked.
pub fn step_size(requested: Option<usize>) -> Result<usize> {
    match requested {
        None => Ok(DEFAULT_PREFILL_STEP_SIZE),
        Some(0) => Err(Error::Param { name: "prefill_step_size".into(), reason: "must be at least 1, got 0".into() }),
        Some(n) => Ok(n),
    }
}

/// The chunk to prefill next when `context` positions are already cached: the largest `c`
/// with `heads * c * (context + c) * 4 <= ATTENTION_SCORE_BUDGET`, but never above `step`
/// and never below `MIN_CHUNK` (or `step`, when that is smaller). With `heads` unknown the
/// chunk is `step`.
pub fn chunk_size(step: usize, context: usize, heads: Option<usize>) -> usize {
    let Some(heads) = heads.filter(|&h| h > 0) else { return step };
    // c^2 + context * c - per_score <= 0, solved for c.
    let limit = (ATTENTION_SCORE_BUDGET / (heads * 4)) as f64;
    let ctx = context as f64;
    let mut c = ((ctx * ctx + 4.0 * limit).sqrt() - ctx) / 2.0;
    if !c.is_finite() || c < 0.0 {
        c = 0.0;
    }
    let mut c = c as usize;
    // Float rounding: settle on the exact largest chunk within the bound.
    let bytes = |c: usize| heads.saturating_mul(c).saturating_mul(context.saturating_add(c)).saturating_mul(4);
    while c > 0 && bytes(c) > ATTENTION_SCORE_BUDGET {
        c -= 1;
    }
    while c < step && bytes(c + 1) <= ATTENTION_SCORE_BUDGET {
        c += 1;
    }
    c.max(MIN_CHUNK).min(step)
}

/// The most bytes a final chunk's logits may take, counted as f32, for the last prompt token
/// to join that chunk ([`Plan::last_token_joins`]) when the model computes them for every
/// position: 1 GiB, a 2048-token chunk of a 128k-token vocabulary.
pub const JOINED_LOGITS_BUDGET: usize = 1 << 30;

/// What a joined final chunk's logits cost: the model's output head, as far as the prefill
/// plan cares.
#[derive(Clone, Copy, Debug)]
pub struct OutputHead {
    /// The vocabulary, when known.
    pub vocab: Option<usize>,
    /// Whether the model runs its head over the last position alone when that is all the
    /// prefill reads (`ForwardContext::last_position_only`, plugin ABI 1.4): the joined chunk
    /// then costs one position's logits instead of the chunk's.
    pub last_position_only: bool,
}

impl OutputHead {
    /// `model`'s head. `MLX_ENGINE_LAST_POSITION_ONLY=0` takes every model for one that
    /// computes every position, for A/B runs in one binary (`bench/gpu/run.sh compare`; with
    /// `MLX_ENGINE_JOINED_LOGITS_BUDGET=0` too, the last token never joins).
    pub fn of(model: &dyn DynModel, vocab: Option<usize>) -> OutputHead {
        static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let allowed =
            *ALLOWED.get_or_init(|| std::env::var("MLX_ENGINE_LAST_POSITION_ONLY").map_or(true, |v| v != "0"));
        OutputHead { vocab, last_position_only: allowed && model.honours_last_position_only() }
    }
}

/// The query heads that bound a chunk on `device` ([`chunk_size`]): the model's on the CPU,
/// whose attention materialises the scores; none on the GPU, whose fused attention never
/// holds them, so chunks are the step size there, as in mlx-lm.
pub fn chunk_heads(device: Device, heads: Option<usize>) -> Option<usize> {
    heads.filter(|_| device == Device::Cpu)
}

/// How one prefill runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// At most this many tokens per chunk ([`step_size`]).
    pub step: usize,
    /// Query heads of the model, for [`chunk_size`]; `None` keeps every chunk at `step`.
    pub attention_heads: Option<usize>,
    /// A prompt length at which to snapshot the cache (see the chunk loop of [`prefill_from`]).
    pub checkpoint: Option<usize>,
    /// `Some(head)`: the last prompt token goes through the model with the final chunk, which
    /// reads only the last position's logits. A model that honours that computes them alone;
    /// for one that computes every position's, the chunk joins only where they fit
    /// [`JOINED_LOGITS_BUDGET`]. `None`: the last token gets a pass of its own, as in mlx-lm
    /// (0.32). That pass reads every weight again for one token: a decode step (5 ms on
    /// Llama-3.1-8B on an H200, 60 ms on SmolLM2-135M on the 2-core CPU, a quarter of a short
    /// follow-up turn's time to first token there). On a GPU even every position's logits of a
    /// 512-token chunk cost less (about 0.3 ms of matrix work); on the CPU they cost more, so
    /// it joins there only for a model that computes the last position alone.
    pub last_token_joins: Option<OutputHead>,
    /// Whether the first chunk checks for a cancel between layers, its speed being unknown
    /// (later chunks do when the one before took longer than [`LAYERWISE_AFTER_SECONDS`]).
    /// Each check evaluates, so the device idles while the next layer's graph is built and
    /// queued; on a GPU, where a whole chunk takes well under the bound, that idling is a
    /// cost without a use.
    pub layerwise_first: bool,
}

impl Plan {
    /// The plan for `device`. On the CPU chunks shrink to the attention score budget (MLX's
    /// CPU attention materialises the scores), the first runs layer by layer, and the last
    /// token joins the final chunk where `head` computes the last position alone. On the GPU,
    /// whose fused attention never holds the scores, chunks are the step size, as in mlx-lm,
    /// the first runs whole, and the last token joins the final chunk (within
    /// [`JOINED_LOGITS_BUDGET`] for a head over every position).
    pub fn for_device(
        device: Device,
        step: usize,
        attention_heads: Option<usize>,
        checkpoint: Option<usize>,
        head: OutputHead,
    ) -> Plan {
        let gpu = device == Device::Gpu;
        Plan {
            step,
            attention_heads: chunk_heads(device, attention_heads),
            checkpoint,
            last_token_joins: Some(head).filter(|h| gpu || h.last_position_only),
            layerwise_first: !gpu,
        }
    }

    /// The chunk at `pos` of a prompt whose last token is at `end`, for generate and the
    /// server alike. `exact_trim(fed)`: whether the cache could drop positions exactly after
    /// `fed` more (no ring evicts on the way) and the input is text.
    ///
    /// A checkpoint inside the chunk: where it can be trimmed back to exactly, the chunk runs
    /// whole and the snapshot is the cache trimmed back to the checkpoint, since causal
    /// attention leaves earlier positions' keys and values unchanged. Cutting the chunk there
    /// instead would cost a second pass over the weights for the ~10 tokens after it (a decode
    /// step's worth on a GPU). Not with input embeddings: an image's tokens attend to each
    /// other both ways, so positions before the checkpoint may have seen later ones.
    pub fn chunk(
        &self,
        pos: usize,
        end: usize,
        checkpoint: Option<usize>,
        exact_trim: impl FnOnce(usize) -> bool,
    ) -> Chunk {
        let n = chunk_size(self.step.max(1), pos, self.attention_heads).min(end - pos);
        let join = pos + n == end && self.joins(n);
        let fed = n + usize::from(join);
        match checkpoint.filter(|&at| pos < at && at < pos + fed) {
            Some(at) if exact_trim(fed) => Chunk { n, join, trim_to: Some(at) },
            Some(at) => Chunk { n: at - pos, join: false, trim_to: None },
            None => Chunk { n, join, trim_to: None },
        }
    }

    /// Whether the last token joins a final chunk of `n` tokens.
    pub fn joins(&self, n: usize) -> bool {
        self.last_token_joins.is_some_and(|head| {
            head.last_position_only
                || head.vocab.is_some_and(|v| (n + 1).saturating_mul(v).saturating_mul(4) <= joined_logits_budget())
        })
    }
}

/// [`JOINED_LOGITS_BUDGET`], or `MLX_ENGINE_JOINED_LOGITS_BUDGET` (bytes) for A/B runs of the
/// budget in one binary (`bench/gpu/run.sh compare`): where joining pays, for a model that
/// computes every position's logits, depends on the output head's kernel (a quantized head's
/// matrix-matrix product is far slower than cuBLAS's).
fn joined_logits_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("MLX_ENGINE_JOINED_LOGITS_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(JOINED_LOGITS_BUDGET)
    })
}

/// One chunk of a prefill ([`Plan::chunk`]): `n` prompt tokens, then the last token too when
/// `join`; `trim_to` is a checkpoint inside it, whose snapshot is the cache trimmed back.
pub struct Chunk {
    pub n: usize,
    pub join: bool,
    pub trim_to: Option<usize>,
}

/// What a prefill left behind.
pub struct Prefilled {
    /// The last prompt token's logits `[vocab]` (f32), or `None` when the prefill was
    /// cancelled; the cache then holds the prompt up to the last finished chunk (the whole
    /// prompt, when the last token had joined it).
    pub logits: Option<Array>,
    /// A snapshot of the cache at `Plan::checkpoint`, when the prefill got there.
    pub checkpoint: Option<KvCache>,
    /// Uncached tokens prefilled before the last token (which a joined chunk also fed).
    pub processed: usize,
}

/// The logits of the last position of `[1, L, vocab]`, as `[vocab]` f32.
pub(crate) fn last_logits(logits: &Array) -> Result<Array> {
    let l = logits.dim(1)?;
    Ok(logits.slice_axis(1, l - 1, l)?.reshape(&[-1])?.astype(Dtype::F32)?)
}

pub(crate) fn token_ids(tokens: &[u32]) -> Result<Array> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    Ok(Array::from_slice(&ids, &[1, ids.len() as i32])?)
}

/// [`prefill_from`] over token ids.
pub fn prefill(
    model: &dyn DynModel,
    cache: &mut KvCache,
    prompt: &[u32],
    cached: usize,
    plan: &Plan,
    progress: &mut dyn PromptProgress,
    cancel: &AtomicBool,
) -> Result<Prefilled> {
    prefill_from(model, cache, prompt, None, cached, plan, progress, cancel)
}

/// Feeds `prompt[cached..len - 1]` through `model` into `cache` (which must hold
/// `prompt[..cached]`) in chunks, then the last token (alone, or with the final chunk where
/// the plan joins it), and returns its logits. With
/// `embeddings` (`[1, len - cached, D]`, a vision prompt's merged input embeddings of the
/// uncached part) the model gets those instead of the ids. Between chunks
/// only the cache is evaluated (the logits of prompt positions are never needed, and for
/// large vocabularies they are much of the work), temporaries are released, and the reporter
/// and `cancel` are consulted. An empty `prompt` is the caller's error to prevent.
#[allow(clippy::too_many_arguments)]
pub fn prefill_from(
    model: &dyn DynModel,
    cache: &mut KvCache,
    prompt: &[u32],
    embeddings: Option<&Array>,
    cached: usize,
    plan: &Plan,
    progress: &mut dyn PromptProgress,
    cancel: &AtomicBool,
) -> Result<Prefilled> {
    let feed = |ctx: &mut dyn ForwardContext, range: std::ops::Range<usize>| -> Result<Array> {
        match embeddings {
            Some(e) => {
                let (a, b) = ((range.start - cached) as i32, (range.end - cached) as i32);
                Ok(model.forward(Input::Embeddings(&e.slice_axis(1, a, b)?), ctx)?)
            }
            None => Ok(model.forward(Input::Tokens(&token_ids(&prompt[range])?), ctx)?),
        }
    };
    let mut out = Prefilled { logits: None, checkpoint: None, processed: 0 };
    let end = prompt.len().saturating_sub(1);
    if prompt.is_empty() || cached > end {
        return Err(Error::Param {
            name: "prompt".into(),
            reason: format!("{cached} cached tokens leave no token to decode from in a prompt of {}", prompt.len()),
        });
    }
    if !progress.begin(cached, prompt.len()) {
        return Ok(out);
    }
    let mut pos = cached;
    let mut last_chunk_seconds = if plan.layerwise_first { f64::INFINITY } else { 0.0 };
    while pos < end {
        if cancel.load(Ordering::Relaxed) {
            return Ok(out);
        }
        let Chunk { n, join, trim_to } =
            plan.chunk(pos, end, plan.checkpoint, |fed| cache.is_trimmable_after(fed) && embeddings.is_none());
        let fed = n + usize::from(join);
        let t = std::time::Instant::now();
        // A joined chunk's last position is the only one read.
        let feed = |ctx: &mut dyn ForwardContext, range| match join {
            true => feed(&mut LastPositionOnly(ctx), range),
            false => feed(ctx, range),
        };
        let output = if n > MIN_CHUNK && last_chunk_seconds > LAYERWISE_AFTER_SECONDS {
            match forward_cancellable(cache, cancel, |ctx| feed(ctx, pos..pos + fed))? {
                Some(output) => output,
                None => {
                    runtime::clear_cache();
                    return Ok(out);
                }
            }
        } else {
            feed(cache, pos..pos + fed)?
        };
        // Only the cache is needed, and with the last token its logits.
        let logits = if join { Some(last_logits(&output)?) } else { None };
        let mut needed = cache.state();
        needed.extend(logits.as_ref());
        mlx_engine_plugin_api::eval(&needed)?;
        drop(output);
        runtime::clear_cache();
        last_chunk_seconds = t.elapsed().as_secs_f64();
        let held = pos + fed;
        pos += n;
        out.processed += n;
        if plan.checkpoint == Some(held) {
            out.checkpoint = Some(cache.clone());
        } else if let Some(at) = trim_to {
            let mut snapshot = cache.clone();
            if snapshot.trim(held - at) == held - at {
                out.checkpoint = Some(snapshot);
            }
        }
        if !progress.update(out.processed) {
            return Ok(out);
        }
        if join {
            // The cache holds the whole prompt; a cancel now leaves it so.
            if cancel.load(Ordering::Relaxed) || !progress.finish() {
                return Ok(out);
            }
            out.logits = logits;
            return Ok(out);
        }
    }
    if cancel.load(Ordering::Relaxed) || !progress.finish() {
        return Ok(out);
    }
    let logits = last_logits(&feed(cache, end..prompt.len())?)?;
    logits.eval()?;
    out.logits = Some(logits);
    Ok(out)
}

/// Any forward context, reading only the pass's last position
/// ([`ForwardContext::last_position_only`]): a prefill's final chunk that the last prompt
/// token joined.
pub struct LastPositionOnly<'a>(pub &'a mut dyn ForwardContext);

impl ForwardContext for LastPositionOnly<'_> {
    fn offset(&self, layer: usize) -> mlx_engine_plugin_api::Result<i32> {
        self.0.offset(layer)
    }

    fn positions(&self, layer: usize) -> mlx_engine_plugin_api::Result<Positions> {
        self.0.positions(layer)
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> mlx_engine_plugin_api::Result<Array> {
        self.0.attention(layer, q, k, v, scale, options)
    }

    fn last_position_only(&self) -> bool {
        true
    }
}

/// Runs `forward` over `cache` so that `cancel` is read between layers (see [`Layerwise`]).
/// Returns its output, or `None` when it was cancelled part-way; the cache is then exactly as
/// before the call (layers that took the new tokens are rewound).
pub fn forward_cancellable(
    cache: &mut KvCache,
    cancel: &AtomicBool,
    forward: impl FnOnce(&mut dyn ForwardContext) -> Result<Array>,
) -> Result<Option<Array>> {
    let mark = cache.mark();
    let mut ctx = Layerwise { cache: &mut *cache, cancel, stopped: false };
    let out = forward(&mut ctx);
    let stopped = ctx.stopped;
    match out {
        Ok(a) => Ok(Some(a)),
        Err(_) if stopped => {
            cache.rewind(mark);
            Ok(None)
        }
        Err(e) => {
            // Not ours: the caller discards the cache, but leave it consistent anyway.
            cache.rewind(mark);
            Err(e)
        }
    }
}

/// The cache as the forward context of a slow chunk: before each layer it reads the cancel
/// flag and, after the first, evaluates that layer's inputs (which runs every layer before it),
/// so a cancel lands within one layer's time instead of one chunk's. Evaluating there changes
/// no result: the same kernels run on the same inputs, only in more than one evaluation.
struct Layerwise<'a> {
    cache: &'a mut KvCache,
    cancel: &'a AtomicBool,
    stopped: bool,
}

impl ForwardContext for Layerwise<'_> {
    fn offset(&self, layer: usize) -> mlx_engine_plugin_api::Result<i32> {
        self.cache.offset(layer)
    }

    fn positions(&self, layer: usize) -> mlx_engine_plugin_api::Result<Positions> {
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
    ) -> mlx_engine_plugin_api::Result<Array> {
        // The flag first, then the evaluation: under a pipeline split (ADR 0011) a rank that
        // evaluated a layer's inputs would wait for the previous rank's hidden state, which
        // that rank, seeing the same flag, never sends. So every rank stops at its first layer
        // of the pass, before anything of the pass crossed to another rank.
        if self.cancel.load(Ordering::Relaxed) {
            self.stopped = true;
            return Err(mlx_engine_plugin_api::Error::Boundary("the prefill was cancelled".into()));
        }
        if layer > 0 {
            mlx_engine_plugin_api::eval(&[q, k, v])?;
        }
        self.cache.attention(layer, q, k, v, scale, options)
    }
}
