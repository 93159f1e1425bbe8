//! The scheduler loop, on the model's worker thread: continuous batching at step granularity.
//!
//! Each request is a *row* with its own KV cache (seeded from the longest prefix the shared
//! prompt cache holds), sampler, logits processors, stop strings, text stream and cancel flag.
//! Every turn of the loop first admits waiting requests up to `max_concurrency` rows, then
//! gives each row one unit of work in order: one prefill chunk (at most `prefill_chunk`
//! tokens) while it is prefilling, else one decode step. So new requests join between decode
//! steps, a long prompt prefills interleaved with the others' decoding, finished or cancelled
//! rows leave at once, and their caches go back into the shared prompt cache.
//!
//! Rows run their forward passes one after another at batch size 1 (the sampled token of one
//! row is queued with `async_eval` while the next row builds its graph). That keeps a row's
//! computation independent of its neighbours, so its greedy output is token-identical alone
//! or in a batch. Stacking rows into one padded forward pass (the KV cache supports
//! left-padded batches, `KvCache::batched`) is the next step; see docs/server.md.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use mlx_engine_plugin_api::{async_eval, eval, runtime, Array, Input};
use tokio::sync::mpsc::UnboundedSender;

use super::scheduler::{Job, Limits, Metrics, RowEvent};
use crate::cache::prompt_cache::PromptCache;
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::generate::prefill::{chunk_size, last_logits, token_ids};
use crate::generate::step::read_sample;
use crate::generate::stream::{Pushed, TextStream};
use crate::generate::{self, GenContext, GenerationResult, StopCondition, StopReason};
use crate::model_kit::WorkerParts;
use crate::sample::{apply_processors, processors_for, LazySample, LogitsProcessor, Sampler};
use crate::stop::StopStrings;

/// Runs until `jobs` is closed (every scheduler handle dropped) and the last row is done.
pub fn run(parts: WorkerParts<'_>, jobs: Receiver<Job>, limits: Limits, metrics: &Metrics) {
    let WorkerParts { ctx, cache, attention_heads } = parts;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut open = true;
    loop {
        if rows.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            // Nothing to do: sleep until a request comes.
            match jobs.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => return,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // A request abandoned while it waited leaves without running.
        waiting.retain(|j| {
            let gone = j.cancel.load(Ordering::Relaxed) || j.events.is_closed();
            if gone {
                tracing::info!(id = %j.id, "cancelled while queued");
            }
            !gone
        });
        while rows.len() < limits.max_concurrency {
            let Some(job) = waiting.pop_front() else { break };
            if let Some(row) = Row::start(&ctx, cache, job) {
                metrics.prompt_tokens.fetch_add(row.prompt.len() as u64, Ordering::Relaxed);
                metrics.cached_tokens.fetch_add(row.pos as u64, Ordering::Relaxed);
                metrics.cache_lookups.fetch_add(1, Ordering::Relaxed);
                metrics.cache_hits.fetch_add(u64::from(row.pos > 0), Ordering::Relaxed);
                tracing::info!(
                    id = %row.id,
                    prompt_tokens = row.prompt.len(),
                    cached_tokens = row.pos,
                    active_rows = rows.len() + 1,
                    "joined the batch"
                );
                rows.push(row);
            }
        }
        metrics.queued.store(waiting.len(), Ordering::Relaxed);
        metrics.active_rows.store(rows.len(), Ordering::Relaxed);

        let t = Instant::now();
        let mut decoded = 0;
        let mut i = 0;
        while i < rows.len() {
            let row = &mut rows[i];
            let decoding = row.pending.is_some();
            // A panic in a plugin or built-in fails this row, not the batch or the worker.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                row.advance(&ctx, cache, attention_heads, limits.prefill_chunk)
            }))
            .unwrap_or_else(|p| Err(Error::Array(mlx_engine_plugin_api::Error::from_panic(p))));
            decoded += usize::from(decoding);
            match out {
                Ok(true) => i += 1,
                Ok(false) => rows.remove(i).finish(cache),
                Err(e) => rows.remove(i).fail(e),
            }
        }
        metrics.active_rows.store(rows.len(), Ordering::Relaxed);
        metrics.generated_tokens.fetch_add(decoded as u64, Ordering::Relaxed);
        if decoded > 0 {
            metrics.decode_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// One request in the batch.
struct Row<'t> {
    id: String,
    cancel: Arc<AtomicBool>,
    events: UnboundedSender<RowEvent>,
    prompt: Vec<u32>,
    /// This row's own KV cache.
    cache: KvCache,
    /// Prompt tokens in `cache` (while prefilling).
    pos: usize,
    /// A prompt length at which to store a snapshot in the shared cache (see
    /// `PromptCache::checkpoint_at`).
    checkpoint: Option<usize>,
    /// The sampled token not yet read; `None` while the prompt is prefilling.
    pending: Option<LazySample>,
    sampler: Sampler,
    processors: Vec<Box<dyn LogitsProcessor>>,
    /// The prompt, then every committed token (what the processors see).
    history: Vec<u32>,
    stream: TextStream<'t>,
    started: Instant,
}

impl<'t> Row<'t> {
    /// Checks the request and seeds the row's cache from the shared one; a bad request is
    /// answered with its error and gives no row.
    fn start(ctx: &GenContext<'t>, shared: &mut PromptCache, job: Job) -> Option<Row<'t>> {
        let Job { id, request, cancel, events } = job;
        let built = (|| -> Result<Row<'t>> {
            if !request.images.is_empty() {
                return Err(Error::Param { name: "images".into(), reason: "the server takes no images yet".into() });
            }
            let (prompt, budget, params) = generate::prepare(ctx, &request)?;
            let stops = StopStrings::new(request.stop_strings.clone())?;
            let processors = processors_for(&params)?;
            let sampler = Sampler::new(&params)?;
            let (cache, cached) = shared.lookup(&prompt, !request.ignore_prompt_cache)?;
            let checkpoint = shared.checkpoint_at(prompt.len(), cached);
            let stream = TextStream::new(ctx.tokenizer, stops, params.top_logprobs, request.ignore_eos, budget, false);
            Ok(Row {
                id: id.clone(),
                cancel: cancel.clone(),
                events: events.clone(),
                history: prompt.clone(),
                prompt,
                cache,
                pos: cached,
                checkpoint,
                pending: None,
                sampler,
                processors,
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

    /// One unit of work; `Ok(false)` when the row is done (finished, cancelled, or its client
    /// is gone).
    fn advance(
        &mut self,
        ctx: &GenContext<'_>,
        shared: &mut PromptCache,
        heads: Option<usize>,
        chunk: usize,
    ) -> Result<bool> {
        if self.cancel.load(Ordering::Relaxed) || self.events.is_closed() {
            let last = match self.pending {
                Some(_) => self.stream.cancel()?,
                None => cancelled(),
            };
            let _ = self.events.send(RowEvent::Chunk(last));
            return Ok(false);
        }
        match self.pending.take() {
            None => self.prefill_step(ctx, shared, heads, chunk),
            Some(sample) => self.decode_step(ctx, sample),
        }
    }

    /// One chunk of the prompt (all but its last token) into the cache, cut to end at the
    /// checkpoint; then the last token, whose logits give the first sample.
    fn prefill_step(
        &mut self,
        ctx: &GenContext<'_>,
        shared: &mut PromptCache,
        heads: Option<usize>,
        chunk: usize,
    ) -> Result<bool> {
        let end = self.prompt.len() - 1;
        if self.pos < end {
            let mut n = chunk_size(chunk, self.pos, heads).min(end - self.pos);
            if let Some(at) = self.checkpoint.filter(|&at| self.pos < at && at < self.pos + n) {
                n = at - self.pos;
            }
            let ids = token_ids(&self.prompt[self.pos..self.pos + n])?;
            let _unused_logits = ctx.model.forward(Input::Tokens(&ids), &mut self.cache)?;
            // Only the cache is needed; then MLX's buffer cache goes back, as prefill does.
            eval(&self.cache.state())?;
            runtime::clear_cache();
            self.pos += n;
            if self.checkpoint == Some(self.pos) {
                shared.store_snapshot(&self.prompt[..self.pos], self.cache.clone());
            }
            return Ok(true);
        }
        let logits = ctx.model.forward(Input::Tokens(&token_ids(&self.prompt[end..])?), &mut self.cache)?;
        let logits = last_logits(&logits)?;
        logits.eval()?;
        self.pending = Some(self.sample(&logits)?);
        Ok(true)
    }

    /// Reads the pending token, streams it, and queues the next one unless the stream ended.
    fn decode_step(&mut self, ctx: &GenContext<'_>, sample: LazySample) -> Result<bool> {
        let token = read_sample(sample, self.stream.generated() + 1, false)?;
        let id = token.id;
        self.history.push(id);
        match self.stream.push(token)? {
            Pushed::Held => {}
            Pushed::Chunk(r) => {
                if self.events.send(RowEvent::Chunk(r)).is_err() {
                    return Ok(false);
                }
            }
            Pushed::Done(r) => {
                let _ = self.events.send(RowEvent::Chunk(r));
                return Ok(false);
            }
        }
        let logits = ctx.model.forward(Input::Tokens(&token_ids(&[id])?), &mut self.cache)?;
        self.pending = Some(self.sample(&last_logits(&logits)?)?);
        Ok(true)
    }

    /// Processors over the row's history, then its sampler; queued for evaluation so the next
    /// row builds its graph while this one computes.
    fn sample(&mut self, logits: &Array) -> Result<LazySample> {
        let processed = apply_processors(&mut self.processors, &self.history, logits)?;
        let s = self.sampler.sample_lazy(&processed)?;
        async_eval(&[&s.token, &s.logprob, &s.logprobs])?;
        Ok(s)
    }

    /// The row is done: its cache (prompt and generated tokens) goes into the shared prompt
    /// cache for later requests that share the prefix.
    fn finish(self, shared: &mut PromptCache) {
        tracing::info!(
            id = %self.id,
            generated_tokens = self.stream.generated(),
            seconds = format!("{:.3}", self.started.elapsed().as_secs_f64()),
            "left the batch"
        );
        let _ = self.events.send(RowEvent::Done(Ok(())));
        shared.store(self.history, self.cache);
    }

    /// The row failed: its cache may be half-updated, so it is dropped, not shared.
    fn fail(self, e: Error) {
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
