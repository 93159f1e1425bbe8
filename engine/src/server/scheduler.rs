//! The HTTP side of the scheduler: admission to the bounded queue, and the handle a request
//! uses to submit its generation and receive its results. The rows themselves run on the
//! model's worker thread (`batch`), which all MLX work for the model must use.
//!
//! Capacity is `max_concurrency` rows decoding at once plus `queue` requests waiting to join;
//! a request beyond that is refused at once (503 with `Retry-After`) rather than left to wait
//! unboundedly, so an overloaded server degrades into fast refusals instead of timeouts.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, GenerationResult};
use crate::model_kit::ModelKit;
use crate::speculative::Speculation;

/// What the scheduler tells a request about its generation.
#[derive(Debug)]
pub enum RowEvent {
    /// The row joined the batch: its prompt length and how much of it came from the cache.
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
    },
    Chunk(GenerationResult),
    /// The end: the last [`RowEvent::Chunk`] carried the stop condition, or this is the error.
    Done(Result<()>),
}

/// One request handed to the scheduler.
pub struct Job {
    /// The request id, for the scheduler's log lines.
    pub id: String,
    pub request: GenerateRequest,
    /// A rendered chat whose image placeholders the scheduler expands and tokenizes (on the
    /// model's thread, where the vision add-on sizes each image); `None`: the request's
    /// prompt tokens are final.
    pub prompt_text: Option<String>,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<RowEvent>,
}

/// Counters the scheduler keeps for `/metrics` and the logs.
#[derive(Default)]
pub struct Metrics {
    /// Requests admitted and not finished (running or waiting).
    pub in_system: AtomicUsize,
    /// Rows in the running batch.
    pub active_rows: AtomicUsize,
    /// Requests waiting to join the batch.
    pub queued: AtomicUsize,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub requests_total: AtomicU64,
    pub rejected_total: AtomicU64,
    /// Microseconds the batch spent on decode steps (for tokens per second).
    pub decode_micros: AtomicU64,
    /// Rows seeded from the shared prompt cache, and those that found a cached prefix.
    pub cache_lookups: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Batched decode steps (one forward pass over the stacked rows), the rows they carried,
    /// and the most rows one of them carried.
    pub batched_steps: AtomicU64,
    pub batched_rows: AtomicU64,
    pub max_batch_rows: AtomicUsize,
    /// Rows of batched steps that failed and were retried one by one.
    pub failed_batch_rows: AtomicU64,
    /// Prefill passes shared by several joining rows, and the rows they carried.
    pub joint_prefill_passes: AtomicU64,
    pub joint_prefill_rows: AtomicU64,
    /// Speculative rounds (a row decoding alone, with the draft model), the tokens drafted in
    /// them, and those accepted.
    pub speculative_rounds: AtomicU64,
    pub draft_tokens: AtomicU64,
    pub accepted_draft_tokens: AtomicU64,
    /// MLX's allocator: bytes in live arrays, and freed bytes it keeps for reuse (sampled by
    /// the scheduler loop, on the model's thread).
    pub mlx_active_bytes: AtomicU64,
    pub mlx_cache_bytes: AtomicU64,
}

/// Scheduler sizes, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_concurrency: usize,
    pub queue: usize,
    /// At most this many prompt tokens per prefill chunk, so that a long prompt yields to the
    /// other rows between chunks.
    pub prefill_chunk: usize,
    /// How a row decoding alone drafts: `Auto` with the draft model when one is loaded,
    /// `PromptLookup`, or `Off`.
    pub speculation: Speculation,
    /// Draft tokens per speculative round for requests that do not say.
    pub num_draft_tokens: usize,
}

/// A place in the system: released (dropped) when the response is complete or abandoned.
pub struct Permit(Arc<Metrics>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_system.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cancels its row when dropped unless the row ended: a response dropped mid-way (the client
/// went away) stops the generation within one step.
pub struct RowGuard {
    cancel: Arc<AtomicBool>,
    pub finished: bool,
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// A submitted request: its events and the guard that cancels it.
pub struct Submitted {
    pub events: UnboundedReceiver<RowEvent>,
    pub guard: RowGuard,
}

/// The handle the routes share.
#[derive(Clone)]
pub struct Scheduler {
    jobs: mpsc::Sender<Job>,
    pub metrics: Arc<Metrics>,
    limits: Limits,
}

impl Scheduler {
    /// Starts the scheduler loop on `kit`'s worker thread. It runs until every clone of the
    /// returned handle is dropped and its last rows are done.
    pub fn start(kit: &ModelKit, limits: Limits) -> Result<Scheduler> {
        if limits.max_concurrency == 0 {
            return Err(Error::Param { name: "max_concurrency".into(), reason: "must be at least 1".into() });
        }
        if limits.prefill_chunk == 0 {
            return Err(Error::Param { name: "prefill_chunk".into(), reason: "must be at least 1".into() });
        }
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        kit.run_on_worker(move |parts| super::batch::run(parts, rx, limits, &m))?;
        Ok(Scheduler { jobs: tx, metrics, limits })
    }

    /// A place for one more request, or `None` when every slot and queue place is taken.
    pub fn admit(&self) -> Option<Permit> {
        let cap = self.limits.max_concurrency + self.limits.queue;
        let m = &self.metrics;
        let mut now = m.in_system.load(Ordering::SeqCst);
        loop {
            if now >= cap {
                m.rejected_total.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match m.in_system.compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(Permit(m.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Hands `request` to the scheduler (after [`Scheduler::admit`]).
    pub fn submit(&self, id: &str, request: GenerateRequest, prompt_text: Option<String>) -> Result<Submitted> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = unbounded_channel();
        let job = Job { id: id.to_string(), request, prompt_text, cancel: cancel.clone(), events: tx };
        self.jobs.send(job).map_err(|_| Error::Server { reason: "the model's scheduler stopped".into() })?;
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        Ok(Submitted { events: rx, guard: RowGuard { cancel, finished: false } })
    }
}
