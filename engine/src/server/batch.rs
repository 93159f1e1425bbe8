//! The scheduler loop, on the model's worker thread: continuous batching.
//!
//! Each request is a [`Row`] with its own sampler, logits processors, stop strings, text
//! stream and cancel flag, and a KV cache seeded from the longest prefix the shared prompt
//! cache holds. Every turn of the loop:
//! 1. admits waiting requests, up to `max_concurrency` rows;
//! 2. prefills rows that joined together in shared passes where their new turns are short
//!    (`joint_prefill`), then gives every row still prefilling one chunk (at most
//!    `prefill_chunk` tokens, in its own cache), so a long prompt advances between the others'
//!    decode steps instead of freezing them;
//! 3. runs one decode step for all decoding rows together: each reads its pending token and
//!    streams it, finished rows leave (their caches go back into the prompt cache), and the
//!    rest feed their next token through the model in **one batched forward pass** over their
//!    caches stacked into a left-padded batch (`KvCache::stack`), each row then sampling
//!    from its own logits.
//!
//! With a drafter (`--draft-model`, `--draft prompt-lookup`), a row that is the only one decoding
//! runs a draft-and-verify round in step 3 instead of a single step; a batch of several decodes
//! plainly, and the draft model catches up when a row is alone again (see [`speculate`]).
//!
//! The stacked batch is rebuilt only when its membership changes (a row joins after its
//! prefill or leaves); in between, decoding appends to it in place. Caches that cannot stack
//! (`max_kv_size` rings, a quantized KV cache) decode one row at a time instead, with the same
//! semantics.
//!
//! A row's numbers in a batch differ from its numbers alone only by BLAS rounding (other
//! matmul shapes; `engine/tests/batch_positions.rs` bounds it), and padding is masked out, so
//! its greedy output is the same alone or batched except at a near-tie of two tokens.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use mlx_engine_plugin_api::{runtime, Array, Input};

use super::row::{panicked, RoundOutcome, Row};
use super::scheduler::{Job, Limits, Metrics};
use crate::cache::prompt_cache::PromptCache;
use crate::cache::{KvCache, Mark};
use crate::error::{Error, Result};
use crate::generate::prefill::{last_logits, NoProgress, OutputHead, Plan};
use crate::generate::GenContext;
use crate::model_kit::WorkerParts;
use crate::speculative::lookup::PromptLookup;
use crate::speculative::model::DraftModel;
use crate::speculative::Speculation;
use crate::vision::{FeatureMemo, FEATURE_MEMO_CAPACITY};

/// The decoding rows' caches stacked into one batch, with the rows in batch order.
struct Group {
    cache: KvCache,
    members: Vec<u64>,
}

/// Runs until `jobs` is closed (every scheduler handle dropped) and the last row is done.
pub fn run(parts: WorkerParts<'_>, jobs: Receiver<Job>, limits: Limits, metrics: &Metrics) {
    let WorkerParts { ctx, cache, device, attention_heads, mut draft } = parts;
    let plan = Plan::for_device(
        device,
        limits.prefill_chunk,
        attention_heads,
        None,
        OutputHead::of(ctx.model, ctx.vocab_size),
    );
    let mut synced: Option<u64> = None;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut group: Option<Group> = None;
    let mut next_uid = 0u64;
    // Image features by content, so a conversation that sends its image again skips the tower.
    let mut memo = FeatureMemo::new(FEATURE_MEMO_CAPACITY);
    let mut open = true;
    let mut trimmed = Instant::now();
    loop {
        if rows.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            // Nothing to do: give back the memory freed while busy, then sleep until a
            // request comes.
            runtime::clear_cache();
            super::memory::trim();
            trimmed = Instant::now();
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
            next_uid += 1;
            if let Some(row) = Row::start(&ctx, cache, &mut memo, job, next_uid) {
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

        // Rows that joined together prefill together; then one chunk for every row still
        // prefilling.
        super::joint_prefill::prefill_together(&ctx, cache, &mut rows, limits.prefill_chunk, metrics);
        let mut i = 0;
        while i < rows.len() {
            if rows[i].pending.is_some() {
                i += 1;
                continue;
            }
            let row = &mut rows[i];
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row.prefill_step(&ctx, cache, &plan)))
                .unwrap_or_else(|p| Err(panicked(p)));
            match out {
                Ok(true) => i += 1,
                Ok(false) => rows.remove(i).finish(cache),
                Err(e) => rows.remove(i).fail(e),
            }
        }

        // One decode step for every decoding row.
        let rows_before = rows.len();
        let t = Instant::now();
        let mut solo = match limits.speculation {
            Speculation::Off => None,
            Speculation::PromptLookup { min_ngram, max_ngram } => {
                Some(Solo::Lookup(PromptLookup::new(min_ngram, max_ngram)))
            }
            Speculation::Auto | Speculation::DraftModel => draft.as_deref_mut().map(|draft| Solo::Model {
                draft,
                synced: &mut synced,
                prefill_chunk: limits.prefill_chunk,
            }),
        };
        let decoded = decode_step(&ctx, cache, &mut rows, &mut group, solo.as_mut(), limits, metrics);
        metrics.active_rows.store(rows.len(), Ordering::Relaxed);
        metrics.generated_tokens.fetch_add(decoded as u64, Ordering::Relaxed);
        if decoded > 0 {
            metrics.decode_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if rows.len() < rows_before && trimmed.elapsed() >= super::memory::TRIM_INTERVAL {
            super::memory::trim();
            trimmed = Instant::now();
        }
        metrics.mlx_active_bytes.store(runtime::active_memory() as u64, Ordering::Relaxed);
        metrics.mlx_cache_bytes.store(runtime::cache_memory() as u64, Ordering::Relaxed);
    }
}

/// What became of a decoding row's pending token.
enum Taken {
    Next(u32),
    Done,
    Failed(Error),
}

/// The drafter of a row that decodes alone (see [`speculate`]).
enum Solo<'d> {
    Model {
        draft: &'d mut DraftModel,
        /// The row whose sequence the draft's cache follows (its prompt cache has recorded how
        /// far).
        synced: &'d mut Option<u64>,
        prefill_chunk: usize,
    },
    Lookup(PromptLookup),
}

/// Reads and streams every decoding row's token, lets finished rows leave, and queues the
/// next token of the others. Returns how many tokens were committed.
fn decode_step(
    ctx: &GenContext<'_>,
    shared: &mut PromptCache,
    rows: &mut Vec<Row<'_>>,
    group: &mut Option<Group>,
    solo: Option<&mut Solo<'_>>,
    limits: Limits,
    metrics: &Metrics,
) -> usize {
    let mut taken: Vec<(u64, Taken)> = Vec::new();
    for row in rows.iter_mut().filter(|r| r.pending.is_some()) {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row.take_token()))
            .unwrap_or_else(|p| Err(panicked(p)));
        let t = match out {
            Ok(Some(id)) => Taken::Next(id),
            Ok(None) => Taken::Done,
            Err(e) => Taken::Failed(e),
        };
        taken.push((row.uid, t));
    }
    let decoded = taken.len();
    let going: Vec<(u64, u32)> =
        taken.iter().filter_map(|(uid, t)| if let Taken::Next(id) = t { Some((*uid, *id)) } else { None }).collect();
    let members: Vec<u64> = going.iter().map(|(uid, _)| *uid).collect();
    // A row decoding alone drafts with the draft model (in a cache of its own), when one is
    // loaded and the request allows it; a batch of several decodes plainly.
    let speculates = solo.is_some()
        && matches!(going.as_slice(), [(uid, _)] if rows.iter().any(|r| r.uid == *uid && r.speculates()));

    // The batch changes: its rows take their caches back (those leaving need them to be
    // stored; those staying are stacked again below).
    if group.as_ref().is_some_and(|g| g.members != members || speculates) {
        let g = group.take().expect("checked above");
        match g.cache.unstack() {
            Ok(caches) => {
                for (uid, c) in g.members.iter().zip(caches) {
                    let stays = members.contains(uid);
                    if let Some(r) = rows.iter_mut().find(|r| r.uid == *uid) {
                        // A row that stays is stacked again right away (a copy then); one that
                        // leaves keeps its cache for the prompt cache, in buffers of its own.
                        match if stays { Ok(c) } else { c.detached() } {
                            Ok(c) => r.cache = Some(c),
                            Err(e) => tracing::warn!(id = %r.id, "its cache is not kept: {e}"),
                        }
                    }
                }
            }
            Err(e) => fail_rows(rows, &g.members, &e),
        }
    }
    for (uid, t) in taken {
        let Some(i) = rows.iter().position(|r| r.uid == uid) else { continue };
        match t {
            Taken::Next(_) => {}
            Taken::Done => rows.remove(i).finish(shared),
            Taken::Failed(e) => rows.remove(i).fail(e),
        }
    }
    let going: Vec<(u64, u32)> = going.into_iter().filter(|(uid, _)| rows.iter().any(|r| r.uid == *uid)).collect();
    if going.is_empty() {
        return decoded;
    }
    if let (true, Some(solo), Some(i)) = (speculates, solo, rows.iter().position(|r| r.uid == going[0].0)) {
        let k = limits.num_draft_tokens;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| speculate(ctx, &mut rows[i], solo, k)))
            .unwrap_or_else(|p| Err(panicked(p)));
        return match out {
            Ok(o) => {
                metrics.speculative_rounds.fetch_add(1, Ordering::Relaxed);
                metrics.draft_tokens.fetch_add(o.drafted as u64, Ordering::Relaxed);
                metrics.accepted_draft_tokens.fetch_add(o.accepted as u64, Ordering::Relaxed);
                if !o.goes_on {
                    rows.remove(i).finish(shared);
                }
                decoded + o.accepted
            }
            Err(e) => {
                if let Solo::Model { draft, synced, .. } = solo {
                    // The draft's cache may be half-updated: it starts over with the next row.
                    **synced = None;
                    draft.cache.discard_live();
                }
                rows.remove(i).fail(e);
                decoded
            }
        };
    }
    let stackable = group.is_some()
        || going.iter().all(|(uid, _)| {
            rows.iter().find(|r| r.uid == *uid).and_then(|r| r.cache.as_ref()).is_some_and(KvCache::is_stackable)
        });
    if !stackable {
        // One row at a time, each with its own cache.
        for (uid, id) in going {
            let Some(i) = rows.iter().position(|r| r.uid == uid) else { continue };
            let row = &mut rows[i];
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row.step_alone(ctx, id)))
                .unwrap_or_else(|p| Err(panicked(p)));
            if let Err(e) = out {
                rows.remove(i).fail(e);
            }
        }
        return decoded;
    }
    let members: Vec<u64> = going.iter().map(|(uid, _)| *uid).collect();
    // Where the batch's cache stood before this step, to undo a step that failed part-way.
    let mut mark = None;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
        if group.is_none() {
            let caches: Vec<&KvCache> = members
                .iter()
                .filter_map(|uid| rows.iter().find(|r| r.uid == *uid).and_then(|r| r.cache.as_ref()))
                .collect();
            if caches.len() != members.len() {
                return Err(Error::Server { reason: "a decoding row without a cache (engine bug)".into() });
            }
            let cache = KvCache::stack(&caches)?;
            tracing::debug!(rows = members.len(), padding = ?cache.left_padding(), "stacked the batch");
            for r in rows.iter_mut().filter(|r| members.contains(&r.uid)) {
                r.cache = None;
            }
            *group = Some(Group { cache, members: members.clone() });
        }
        let g = group.as_mut().expect("stacked above");
        mark = Some(g.cache.mark());
        let ids: Vec<i32> = going.iter().map(|(_, id)| *id as i32).collect();
        let tokens = Array::from_slice(&ids, &[ids.len() as i32, 1])?;
        let logits = ctx.model.forward(Input::Tokens(&tokens), &mut g.cache)?;
        metrics.batched_steps.fetch_add(1, Ordering::Relaxed);
        metrics.batched_rows.fetch_add(ids.len() as u64, Ordering::Relaxed);
        metrics.max_batch_rows.fetch_max(ids.len(), Ordering::Relaxed);
        for (b, uid) in members.iter().enumerate() {
            let row = rows.iter_mut().find(|r| r.uid == *uid).expect("a member row");
            let b = b as i32;
            row.pending = Some(row.sample(&last_logits(&logits.slice_axis(0, b, b + 1)?)?)?);
        }
        Ok(())
    }))
    .unwrap_or_else(|p| Err(panicked(p)));
    if let Err(e) = out {
        tracing::warn!(rows = members.len(), "the batched decode step failed, retrying its rows one by one: {e}");
        metrics.failed_batch_rows.fetch_add(members.len() as u64, Ordering::Relaxed);
        recover(ctx, rows, group, mark, &going, &e);
    }
    decoded
}

/// One speculative round for `row`, decoding alone. A draft model's cache first catches up with
/// the row's sequence: it goes on from where the row's last round left it, or else prefills
/// the sequence from its own prompt cache (the row is new to it, or another row used the draft
/// since).
fn speculate(ctx: &GenContext<'_>, row: &mut Row<'_>, solo: &mut Solo<'_>, k: usize) -> Result<RoundOutcome> {
    let (draft, synced, prefill_chunk) = match solo {
        Solo::Lookup(lookup) => return row.speculate(ctx, lookup, k),
        Solo::Model { draft, synced, prefill_chunk } => (draft, synced, *prefill_chunk),
    };
    if **synced != Some(row.uid) {
        **synced = None;
        let h = row.history().len();
        let never = AtomicBool::new(false);
        draft.prefill(&row.history()[..h - 1], true, prefill_chunk, &mut NoProgress, &never)?;
    }
    let recorded = draft.cache.recorded();
    let out = row.speculate(ctx, &mut draft.drafter(recorded), k)?;
    **synced = out.goes_on.then_some(row.uid);
    Ok(out)
}

/// After a batched step failed (a plugin error or panic, perhaps caused by one row's input):
/// the batch's cache goes back to where it stood before the step, its rows take their own
/// caches back, and each runs the step alone, so that only a row whose own step fails fails.
fn recover(
    ctx: &GenContext<'_>,
    rows: &mut Vec<Row<'_>>,
    group: &mut Option<Group>,
    mark: Option<Mark>,
    going: &[(u64, u32)],
    e: &Error,
) {
    if let Some(mut g) = group.take() {
        let back = match mark {
            Some(mark) => {
                g.cache.rewind(mark);
                g.cache.unstack()
            }
            None => Err(Error::Server { reason: "the batch failed before its step began".into() }),
        };
        match back {
            Ok(caches) => {
                for (uid, c) in g.members.iter().zip(caches) {
                    if let Some(r) = rows.iter_mut().find(|r| r.uid == *uid) {
                        r.cache = c.detached().ok();
                    }
                }
            }
            Err(e2) => {
                fail_rows(rows, &g.members, &Error::Server { reason: format!("{e} (and the batch is lost: {e2})") });
                return;
            }
        }
    }
    for (uid, id) in going {
        let Some(i) = rows.iter().position(|r| r.uid == *uid) else { continue };
        let row = &mut rows[i];
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| row.step_alone(ctx, *id)))
            .unwrap_or_else(|p| Err(panicked(p)));
        if let Err(e) = out {
            rows.remove(i).fail(e);
        }
    }
}

/// Fails the rows `uids` with (a copy of) `e`.
fn fail_rows(rows: &mut Vec<Row<'_>>, uids: &[u64], e: &Error) {
    for uid in uids {
        if let Some(i) = rows.iter().position(|r| r.uid == *uid) {
            rows.remove(i).fail(Error::Server { reason: format!("the batched decode step failed: {e}") });
        }
    }
}
