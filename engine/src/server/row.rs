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
use crate::generate::prefill::{chunk_size, last_logits, token_ids};
use crate::generate::step::read_sample;
use crate::generate::stream::{Pushed, TextStream};
use crate::generate::{self, GenContext, GenerationResult, StopCondition, StopReason};
use crate::sample::{apply_processors, processors_for, LazySample, LogitsProcessor, Sampler};
use crate::stop::StopStrings;

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
    stream: TextStream<'t>,
    started: Instant,
}

/// The engine error for a panic caught around a row's work.
pub fn panicked(p: Box<dyn std::any::Any + Send>) -> Error {
    Error::Array(mlx_engine_plugin_api::Error::from_panic(p))
}

impl<'t> Row<'t> {
    /// Checks the request and seeds the row's cache from the shared one; a bad request is
    /// answered with its error and gives no row.
    pub fn start(ctx: &GenContext<'t>, shared: &mut PromptCache, job: Job, uid: u64) -> Option<Row<'t>> {
        let Job { id, request, cancel, events } = job;
        let built = (|| -> Result<Row<'t>> {
            if !request.images.is_empty() {
                return Err(Error::Param { name: "images".into(), reason: "the server takes no images yet".into() });
            }
            let (prompt, budget, params) = generate::prepare(ctx, &request)?;
            let stops = StopStrings::new(request.stop_strings.clone())?;
            let processors = processors_for(&params)?;
            let sampler = Sampler::new(&params)?;
            let constraint = generate::compile_constraint(ctx, &request)?;
            let (cache, cached) = shared.lookup(&prompt, !request.ignore_prompt_cache)?;
            let checkpoint = shared.checkpoint_at(prompt.len(), cached);
            let stream = TextStream::new(ctx.tokenizer, stops, params.top_logprobs, request.ignore_eos, budget, false);
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

    /// One prefill unit: a chunk of the prompt (all but its last token, cut to end at the
    /// checkpoint), or the last token, whose logits give the first sample. `Ok(false)` when
    /// the row was abandoned.
    pub fn prefill_step(
        &mut self,
        ctx: &GenContext<'_>,
        shared: &mut PromptCache,
        heads: Option<usize>,
        chunk: usize,
    ) -> Result<bool> {
        if self.abandoned() {
            let _ = self.events.send(RowEvent::Chunk(cancelled()));
            return Ok(false);
        }
        let end = self.prompt.len() - 1;
        if self.pos < end {
            let mut n = chunk_size(chunk, self.pos, heads).min(end - self.pos);
            if let Some(at) = self.checkpoint.filter(|&at| self.pos < at && at < self.pos + n) {
                n = at - self.pos;
            }
            let ids = token_ids(&self.prompt[self.pos..self.pos + n])?;
            let cache = self.cache_mut()?;
            let _unused_logits = ctx.model.forward(Input::Tokens(&ids), cache)?;
            // Only the cache is needed; then MLX's buffer cache goes back, as prefill does.
            eval(&cache.state())?;
            runtime::clear_cache();
            self.pos += n;
            if self.checkpoint == Some(self.pos) {
                let snapshot = self.cache_mut()?.clone();
                shared.store_snapshot(&self.prompt[..self.pos], snapshot);
            }
            return Ok(true);
        }
        let ids = token_ids(&self.prompt[end..])?;
        let logits = last_logits(&ctx.model.forward(Input::Tokens(&ids), self.cache_mut()?)?)?;
        logits.eval()?;
        self.pending = Some(self.sample(&logits)?);
        Ok(true)
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
        if let Some(cache) = self.cache {
            shared.store(self.history, cache);
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
