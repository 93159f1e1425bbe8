//! One request in the batch: its own sampler, logits processors, stop strings, text stream,
//! cancel flag and (outside a stacked batch) KV cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mlx_engine_plugin_api::{async_eval, eval, runtime, Array, Input};
use tokio::sync::mpsc::UnboundedSender;

use super::scheduler::{Job, RowEvent};
use crate::cache::prompt_cache::PromptCache;
use crate::cache::KvCache;
use crate::constrain::SequenceMatcher;
use crate::error::{Error, Result};
use crate::generate::prefill::{last_logits, token_ids, Chunk, LastPositionOnly, Plan};
use crate::generate::step::{read_sample, HostTimes};
use crate::generate::stream::{Pushed, TextStream};
use crate::generate::{self, GenContext, GenerateRequest, GenerationResult, StopCondition, StopReason};
use crate::sample::{apply_processors, processors_for, LazySample, LogitsProcessor, Sampler};
use crate::speculative::{draft_and_verify, Drafter, RoundParts, Speculation, Verified};
use crate::stop::StopStrings;
use crate::vision::prompt::{self, PreparedImage};
use crate::vision::{FeatureMemo, ImageLimits, VisionModel};

pub struct Row<'t> {
    /// Unique within the scheduler (request ids come from clients and may repeat).
    pub uid: u64,
    pub id: String,
    cancel: Arc<AtomicBool>,
    events: UnboundedSender<RowEvent>,
    pub prompt: Vec<u32>,
    /// The row's KV cache; `None` while it is part of a stacked batch.
    pub cache: Option<KvCache>,
    /// Prompt tokens in the cache (while prefilling; the cached prefix at the start).
    pub pos: usize,
    /// A prompt length at which to store a snapshot in the shared cache (see
    /// `PromptCache::checkpoint_at`).
    checkpoint: Option<usize>,
    /// The sampled token not yet read; `None` while the prompt is prefilling.
    pub pending: Option<LazySample>,
    sampler: Sampler,
    processors: Vec<Box<dyn LogitsProcessor>>,
    /// The request's grammar (`response_format`, a forced tool call), if any.
    constraint: Option<SequenceMatcher>,
    /// The prompt, then every committed token (what the processors see).
    history: Vec<u32>,
    /// With images: the prompt as the prompt cache knows it (image tokens replaced by ids
    /// derived from each image's content), and the input embeddings of its uncached part
    /// (`[1, len - from, D]`) with `from`.
    vision: Option<VisionInput>,
    /// Whether the row may decode speculatively: not when the request turned speculation off,
    /// nor with images in its prompt, which a draft model cannot see (ADR 0004).
    may_speculate: bool,
    /// The request's draft tokens per round (the server's default otherwise).
    num_draft_tokens: Option<usize>,
    stream: TextStream<'t>,
    started: Instant,
}

/// What one speculative round of a row did.
pub struct RoundOutcome {
    pub drafted: usize,
    pub accepted: usize,
    /// The row goes on (its own token is pending); `false`: a committed token ended it.
    pub goes_on: bool,
}

struct VisionInput {
    key: Vec<u32>,
    embeddings: Array,
    from: usize,
}

/// The engine error for a panic caught around a row's work.
pub fn panicked(p: Box<dyn std::any::Any + Send>) -> Error {
    Error::Array(mlx_engine_plugin_api::Error::from_panic(p))
}

impl<'t> Row<'t> {
    /// Checks the request and seeds the row's cache from the shared one; a bad request is
    /// answered with its error and gives no row.
    pub fn start(
        ctx: &GenContext<'t>,
        shared: &mut PromptCache,
        memo: &mut FeatureMemo,
        job: Job,
        uid: u64,
    ) -> Option<Row<'t>> {
        let Job { id, mut request, prompt_text, cancel, events } = job;
        let built = (|| -> Result<Row<'t>> {
            let images = images_of(ctx, &mut request, prompt_text)?;
            let (prompt, budget, params) = generate::prepare(ctx, &request)?;
            let stops = StopStrings::new(request.stop_strings.clone())?;
            let processors = processors_for(&params)?;
            let sampler = Sampler::new(&params)?;
            let constraint = generate::compile_constraint(ctx, &request)?;
            let reuse = !request.ignore_prompt_cache;
            let (cache, cached, checkpoint, vision) = match images {
                None => {
                    let (cache, cached) = shared.lookup(&prompt, reuse)?;
                    (cache, cached, shared.checkpoint_at(prompt.len(), cached), None)
                }
                Some((v, prepared)) => {
                    let spans = prompt::find_spans(&prompt, &prepared, ctx.tokenizer)?;
                    let key = prompt::cache_key(ctx.model, v, &prompt, &spans, &prepared)?;
                    // A cached prefix may not end inside an image's span.
                    let (mut cache, mut cached) = shared.lookup(&key, reuse)?;
                    let outside = prompt::outside_spans(cached, &spans);
                    if outside < cached {
                        if cache.is_trimmable() {
                            cache.trim(cached - outside);
                            cached = outside;
                        } else {
                            (cache, cached) = shared.lookup(&key, false)?;
                        }
                    }
                    let checkpoint = shared
                        .checkpoint_at(prompt.len(), cached)
                        .map(|at| prompt::outside_spans(at, &spans))
                        .filter(|&at| at > cached);
                    let embeddings = prompt::embeddings(ctx.model, v, memo, &prompt, cached, &spans, &prepared)?;
                    (cache, cached, checkpoint, Some(VisionInput { key, embeddings, from: cached }))
                }
            };
            let stream = TextStream::new(ctx.tokenizer, stops, params.top_logprobs, request.ignore_eos, budget, false);
            let may_speculate =
                matches!(request.speculation, Speculation::Auto | Speculation::DraftModel) && vision.is_none();
            Ok(Row {
                uid,
                id: id.clone(),
                cancel: cancel.clone(),
                events: events.clone(),
                history: prompt.clone(),
                prompt,
                cache: Some(cache),
                pos: cached,
                checkpoint,
                vision,
                may_speculate,
                num_draft_tokens: request.num_draft_tokens,
                pending: None,
                sampler,
                processors,
                constraint,
                stream,
                started: Instant::now(),
            })
        })();
        match built {
            Ok(row) => {
                let _ = events.send(RowEvent::Started { prompt_tokens: row.prompt.len(), cached_tokens: row.pos });
                Some(row)
            }
            Err(e) => {
                tracing::info!(id = %id, "refused: {e}");
                let _ = events.send(RowEvent::Done(Err(e)));
                None
            }
        }
    }

    /// Whether the client cancelled or went away.
    fn abandoned(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }

    fn cache_mut(&mut self) -> Result<&mut KvCache> {
        self.cache.as_mut().ok_or_else(|| Error::Server { reason: "a row's cache is in the batch (engine bug)".into() })
    }

    /// One prefill unit: a chunk of the prompt (all but its last token; the checkpoint is taken
    /// inside it), or the last token, whose logits give the first sample; the last token joins
    /// the final chunk where `plan` says so (the GPU). `Ok(false)` when the row was abandoned.
    pub fn prefill_step(&mut self, ctx: &GenContext<'_>, shared: &mut PromptCache, plan: &Plan) -> Result<bool> {
        if self.abandoned() {
            let _ = self.events.send(RowEvent::Chunk(cancelled()));
            return Ok(false);
        }
        let end = self.prompt.len() - 1;
        if self.pos < end {
            let text = self.vision.is_none();
            let Chunk { n, join, trim_to } = plan.chunk(self.pos, end, self.checkpoint, |fed| {
                text && self.cache.as_ref().is_some_and(|c| c.is_trimmable_after(fed))
            });
            let fed = n + usize::from(join);
            let snapshot_at = trim_to.or(self.checkpoint.filter(|&at| at == self.pos + fed));
            let input = self.input(self.pos..self.pos + fed)?;
            let cache = self.cache_mut()?;
            let output = match join {
                true => ctx.model.forward(input.as_input(), &mut LastPositionOnly(cache))?,
                false => ctx.model.forward(input.as_input(), cache)?,
            };
            // Only the cache is needed, and with the last token its logits; then MLX's buffer
            // cache goes back, as prefill does.
            let logits = if join { Some(last_logits(&output)?) } else { None };
            let mut needed = cache.state();
            needed.extend(logits.as_ref());
            eval(&needed)?;
            drop(output);
            runtime::clear_cache();
            let held = self.pos + fed;
            self.pos += n;
            if let Some(at) = snapshot_at {
                let mut snapshot = self.cache_mut()?.clone();
                if snapshot.trim(held - at) == held - at {
                    let tokens = self.vision.as_ref().map_or(&self.prompt, |v| &v.key);
                    shared.store_snapshot(&tokens[..at], snapshot);
                }
            }
            if let Some(logits) = logits {
                self.pending = Some(self.sample(&logits)?);
            }
            return Ok(true);
        }
        let input = self.input(end..self.prompt.len())?;
        let logits = last_logits(&ctx.model.forward(input.as_input(), self.cache_mut()?)?)?;
        logits.eval()?;
        self.pending = Some(self.sample(&logits)?);
        Ok(true)
    }

    /// The model's input for prompt positions `range`: token ids, or with images the merged
    /// embeddings.
    fn input(&self, range: std::ops::Range<usize>) -> Result<PromptInput> {
        Ok(match &self.vision {
            Some(v) => {
                let (a, b) = ((range.start - v.from) as i32, (range.end - v.from) as i32);
                PromptInput::Embeddings(v.embeddings.slice_axis(1, a, b)?)
            }
            None => PromptInput::Tokens(token_ids(&self.prompt[range])?),
        })
    }

    /// Reads the pending token and streams it: the token to feed next, or `None` when the row
    /// is done (stopped, abandoned, or its client gone).
    pub fn take_token(&mut self) -> Result<Option<u32>> {
        let Some(sample) = self.pending.take() else { return Ok(None) };
        if self.abandoned() {
            let last = self.stream.cancel()?;
            let _ = self.events.send(RowEvent::Chunk(last));
            return Ok(None);
        }
        let mut token = read_sample(sample, self.stream.generated() + 1, false)?;
        let id = token.id;
        if let Some(m) = self.constraint.as_mut() {
            m.consume(id)?;
            token.grammar_done = m.is_done();
        }
        self.history.push(id);
        match self.stream.push(token)? {
            Pushed::Held => Ok(Some(id)),
            Pushed::Chunk(r) => Ok(self.events.send(RowEvent::Chunk(r)).is_ok().then_some(id)),
            Pushed::Done(r) => {
                let _ = self.events.send(RowEvent::Chunk(r));
                Ok(None)
            }
        }
    }

    /// Feeds `token` through the model with the row's own cache and samples the next one.
    pub fn step_alone(&mut self, ctx: &GenContext<'_>, token: u32) -> Result<()> {
        let logits = ctx.model.forward(Input::Tokens(&token_ids(&[token])?), self.cache_mut()?)?;
        self.pending = Some(self.sample(&last_logits(&logits)?)?);
        Ok(())
    }

    /// Whether the row's prompt can prefill in a pass shared with other rows: token ids (images
    /// merge into embeddings of their own), and a client still waiting for it.
    pub fn prefills_jointly(&self) -> bool {
        self.vision.is_none() && !self.abandoned() && self.pending.is_none() && self.cache.is_some()
    }

    /// Takes the row's cache after a shared pass fed it `prompt[pos..to]`, storing the
    /// checkpoint's snapshot when it lies in that stretch (the cache is trimmed back to it,
    /// which the shared pass checked is exact).
    pub fn prefilled_to(&mut self, shared: &mut PromptCache, cache: KvCache, to: usize) {
        if let Some(at) = self.checkpoint.filter(|&at| self.pos < at && at <= to) {
            let mut snapshot = cache.clone();
            if snapshot.trim(to - at) == to - at {
                shared.store_snapshot(&self.prompt[..at], snapshot);
            }
        }
        self.cache = Some(cache);
        self.pos = to;
    }

    /// Whether the row may decode speculatively with a draft model.
    pub fn speculates(&self) -> bool {
        self.may_speculate
    }

    /// The prompt and the committed tokens.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// One draft-and-verify round instead of [`Row::step_alone`], for a row decoding alone: its
    /// history ends with the token [`Row::take_token`] just read, which the model has not seen.
    /// The drafts the model agrees with are committed and streamed now; its own next token
    /// becomes the pending one, read by the next `take_token` as a plain step's would be.
    /// `num_draft_tokens` is the server's default for requests that do not say.
    pub fn speculate(
        &mut self,
        ctx: &GenContext<'_>,
        drafter: &mut dyn Drafter,
        num_draft_tokens: usize,
    ) -> Result<RoundOutcome> {
        let k = self.num_draft_tokens.unwrap_or(num_draft_tokens);
        let most = k.min(self.stream.remaining().saturating_sub(1));
        let cache = self
            .cache
            .as_mut()
            .ok_or_else(|| Error::Server { reason: "a row's cache is in the batch (engine bug)".into() })?;
        let mut times = HostTimes::default();
        let parts = RoundParts {
            model: ctx.model,
            cache,
            history: &self.history,
            processors: &mut self.processors,
            sampler: &mut self.sampler,
            constraint: self.constraint.as_mut(),
            times: &mut times,
        };
        let Verified { mut samples, drafted, accepted } = draft_and_verify(parts, drafter, most, ctx.vocab_size)?;
        let own = samples
            .pop()
            .ok_or_else(|| Error::Server { reason: "a speculative round sampled nothing (engine bug)".into() })?;
        let mut tokens = Vec::with_capacity(accepted);
        for (i, s) in samples.into_iter().enumerate() {
            tokens.push(read_sample(s, self.stream.generated() + i + 1, true)?);
        }
        // The drafter keeps everything but the model's own token, which the next round feeds.
        let mut after = self.history.clone();
        after.extend(tokens.iter().map(|t| t.id));
        after.push(own.token.item::<u32>()?);
        drafter.accept(&after, drafted, accepted)?;
        let last = tokens.len();
        for (i, mut token) in tokens.into_iter().enumerate() {
            // The grammar has consumed the accepted drafts; only the last can have finished it.
            token.grammar_done = i + 1 == last && self.constraint.as_ref().is_some_and(SequenceMatcher::is_done);
            self.history.push(token.id);
            let goes_on = match self.stream.push(token)? {
                Pushed::Held => true,
                Pushed::Chunk(r) => self.events.send(RowEvent::Chunk(r)).is_ok(),
                Pushed::Done(r) => {
                    let _ = self.events.send(RowEvent::Chunk(r));
                    false
                }
            };
            if !goes_on {
                return Ok(RoundOutcome { drafted, accepted, goes_on });
            }
        }
        self.pending = Some(own);
        Ok(RoundOutcome { drafted, accepted, goes_on: true })
    }

    /// Processors over the row's history, then its sampler, on one position's logits
    /// (`[vocab]`); queued for evaluation so the host goes on while it computes.
    pub fn sample(&mut self, logits: &Array) -> Result<LazySample> {
        let mut processed = apply_processors(&mut self.processors, &self.history, logits)?;
        if let Some(m) = self.constraint.as_mut() {
            // The forward is queued first, so the device runs it while the host builds the mask.
            async_eval(&[&processed])?;
            processed = m.apply(&processed)?;
        }
        let s = self.sampler.sample_lazy(&processed)?;
        async_eval(&[&s.token, &s.logprob, &s.logprobs])?;
        Ok(s)
    }

    /// The row is done: its cache (prompt and generated tokens) goes into the shared prompt
    /// cache for later requests that share the prefix.
    pub fn finish(self, shared: &mut PromptCache) {
        tracing::info!(
            id = %self.id,
            generated_tokens = self.stream.generated(),
            seconds = format!("{:.3}", self.started.elapsed().as_secs_f64()),
            "left the batch"
        );
        let _ = self.events.send(RowEvent::Done(Ok(())));
        if let Some(mut cache) = self.cache {
            // A speculative round that ended the row fed drafts past its last streamed token.
            let fed = self.history.len().saturating_sub(1);
            if cache.len() > fed {
                cache.trim(cache.len() - fed);
            }
            // The cache knows an image prompt by its key; the generated tokens follow it.
            let tokens = match self.vision {
                Some(v) => v.key.into_iter().chain(self.history[self.prompt.len()..].iter().copied()).collect(),
                None => self.history,
            };
            shared.store(tokens, cache);
        }
    }

    /// The row failed: its cache may be half-updated, so it is dropped, not shared.
    pub fn fail(self, e: Error) {
        tracing::warn!(id = %self.id, "failed: {e}");
        let _ = self.events.send(RowEvent::Done(Err(e)));
    }
}

/// The last result of a row cancelled before its first token.
fn cancelled() -> GenerationResult {
    GenerationResult {
        stop_condition: Some(StopCondition {
            reason: StopReason::UserCancelled,
            stop_string: String::new(),
            stop_tokens: Vec::new(),
        }),
        ..Default::default()
    }
}

enum PromptInput {
    Tokens(Array),
    Embeddings(Array),
}

impl PromptInput {
    fn as_input(&self) -> Input<'_> {
        match self {
            PromptInput::Tokens(a) => Input::Tokens(a),
            PromptInput::Embeddings(a) => Input::Embeddings(a),
        }
    }
}

/// The request's images, preprocessed, with the vision add-on; a rendered chat (`text`) is
/// expanded and tokenized into the request's prompt here. `None` without images.
fn images_of<'v>(
    ctx: &GenContext<'v>,
    request: &mut GenerateRequest,
    text: Option<String>,
) -> Result<Option<(&'v VisionModel, Vec<PreparedImage>)>> {
    if request.images.is_empty() {
        if let Some(text) = text {
            request.prompt_tokens = ctx.tokenizer.encode(&text, false)?;
        }
        return Ok(None);
    }
    let param = |reason: String| Error::Param { name: "images".into(), reason };
    let v = match ctx.vision {
        Some(Ok(v)) => v,
        Some(Err(why)) => return Err(param(format!("this model cannot take images: {why}"))),
        None => return Err(param("this is a text-only model (its config.json has no vision_config)".into())),
    };
    let limits = ImageLimits { max_image_size: request.max_image_size, ..Default::default() };
    let prepared = prompt::prepare_images(v, &request.images, &limits)?;
    if let Some(text) = text {
        request.prompt_tokens = ctx.tokenizer.encode(&prompt::expand_placeholders(&text, &prepared, false)?, false)?;
    }
    Ok(Some((v, prepared)))
}
