//! Rows that join together prefill together: when several requests arrive at once (a burst of
//! clients, each with the same cached system prompt and a short new turn), each would otherwise
//! pay forward passes of its own for its few uncached tokens, one row after another, before
//! the batch decodes. Here those rows share two passes per scheduler turn:
//!
//! 1. **the rest of each prompt but its last token**, for rows whose rest fits one chunk: their
//!    caches stacked (left-padded), each row's tokens followed by filler up to the longest, one
//!    forward pass, then each row's cache trimmed of its filler. Filler comes after a row's
//!    tokens, so causal attention keeps it out of theirs; trimming it is exact because only
//!    caches that stay trimmable over the pass take part (no ring evicts on the way);
//! 2. **the last prompt token** of every row that has only that left: one `[B, 1]` pass, as a
//!    decode step is, whose logits give each row its first sample.
//!
//! A pass that fails leaves its rows as they were; they then prefill one by one, so that only
//! a row whose own input fails fails (as `batch::recover` does for decode steps).

use std::sync::atomic::Ordering;

use mlx_engine_plugin_api::{runtime, Array, Dtype, Input};

use super::row::{panicked, Row};
use super::scheduler::Metrics;
use crate::cache::prompt_cache::PromptCache;
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::generate::GenContext;

/// Runs the shared passes for the rows that can take part; rows it leaves (alone in their
/// kind, or after a failed pass) still have their prefill to do.
pub fn prefill_together(
    ctx: &GenContext<'_>,
    shared: &mut PromptCache,
    rows: &mut [Row<'_>],
    chunk: usize,
    metrics: &Metrics,
) {
    // Shortest rests first, while every member stays trimmable over the longest one so far:
    // a longer rest would only push a ring further.
    let mut candidates: Vec<(usize, usize)> = (0..rows.len())
        .filter_map(|i| {
            let r = &rows[i];
            let left = r.prompt.len() - 1 - r.pos;
            let stacks = r.cache.as_ref().is_some_and(KvCache::is_stackable);
            (r.prefills_jointly() && stacks && r.pos > 0 && left > 0 && left <= chunk).then_some((left, i))
        })
        .collect();
    candidates.sort_unstable();
    let mut rest: Vec<usize> = Vec::new();
    for &(width, i) in &candidates {
        let fits = |j: &usize| rows[*j].cache.as_ref().is_some_and(|c| c.is_trimmable_after(width));
        if !rest.iter().chain([&i]).all(fits) {
            break;
        }
        rest.push(i);
    }
    if rest.len() > 1 {
        run(rows, &rest, metrics, "the rest of the prompts", |rows| rest_of_prompts(ctx, shared, rows, &rest));
    }
    let last: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            let r = &rows[i];
            r.prefills_jointly()
                && r.pos > 0
                && r.pos == r.prompt.len() - 1
                && r.cache.as_ref().is_some_and(KvCache::is_stackable)
        })
        .collect();
    if last.len() > 1 {
        run(rows, &last, metrics, "the last prompt tokens", |rows| last_tokens(ctx, rows, &last));
    }
}

/// One shared pass, its panics caught, counted in the metrics.
fn run<'t>(
    rows: &mut [Row<'t>],
    members: &[usize],
    metrics: &Metrics,
    what: &str,
    pass: impl FnOnce(&mut [Row<'t>]) -> Result<()>,
) {
    let out =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(rows))).unwrap_or_else(|p| Err(panicked(p)));
    match out {
        Ok(()) => {
            metrics.joint_prefill_passes.fetch_add(1, Ordering::Relaxed);
            metrics.joint_prefill_rows.fetch_add(members.len() as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(
            rows = members.len(),
            "a shared prefill pass over {what} failed, the rows prefill one by one: {e}"
        ),
    }
}

fn caches<'a>(rows: &'a [Row<'_>], members: &[usize]) -> Result<Vec<&'a KvCache>> {
    members
        .iter()
        .map(|&i| {
            rows[i]
                .cache
                .as_ref()
                .ok_or_else(|| Error::Server { reason: "a prefilling row without a cache (engine bug)".into() })
        })
        .collect()
}

/// Pass 1: `prompt[pos..len - 1]` of every member, padded with filler to the longest.
fn rest_of_prompts(
    ctx: &GenContext<'_>,
    shared: &mut PromptCache,
    rows: &mut [Row<'_>],
    members: &[usize],
) -> Result<()> {
    let ends: Vec<usize> = members.iter().map(|&i| rows[i].prompt.len() - 1).collect();
    let counts: Vec<usize> = members.iter().zip(&ends).map(|(&i, &e)| e - rows[i].pos).collect();
    let width = counts.iter().copied().max().unwrap_or(0);
    let inputs = caches(rows, members)?;
    if inputs.iter().any(|c| !c.is_stackable() || !c.is_trimmable_after(width)) {
        return Err(Error::Server { reason: "a member's cache cannot take and drop the filler".into() });
    }
    let mut batch = KvCache::stack(&inputs)?;
    let mut ids = Vec::with_capacity(members.len() * width);
    for (&i, &e) in members.iter().zip(&ends) {
        let r = &rows[i];
        let tokens = &r.prompt[r.pos..e];
        ids.extend(tokens.iter().map(|&t| t as i32));
        ids.extend(std::iter::repeat_n(tokens[tokens.len() - 1] as i32, width - tokens.len()));
    }
    let input = Array::from_slice(&ids, &[members.len() as i32, width as i32])?;
    let _unused_logits = ctx.model.forward(Input::Tokens(&input), &mut batch)?;
    mlx_engine_plugin_api::eval(&batch.state())?;
    runtime::clear_cache();
    let mut back = Vec::with_capacity(members.len());
    for (c, &n) in batch.unstack()?.into_iter().zip(&counts) {
        let mut c = c.detached()?;
        let filler = width - n;
        if c.trim(filler) != filler {
            return Err(Error::Server { reason: "the filler could not be trimmed from a row (engine bug)".into() });
        }
        back.push(c);
    }
    for ((&i, &e), c) in members.iter().zip(&ends).zip(back) {
        rows[i].prefilled_to(shared, c, e);
    }
    Ok(())
}

/// Pass 2: the last prompt token of every member, and each one's first sample.
fn last_tokens(ctx: &GenContext<'_>, rows: &mut [Row<'_>], members: &[usize]) -> Result<()> {
    let inputs = caches(rows, members)?;
    if inputs.iter().any(|c| !c.is_stackable()) {
        return Err(Error::Server { reason: "a member's cache cannot stack".into() });
    }
    let mut batch = KvCache::stack(&inputs)?;
    let ids: Vec<i32> = members.iter().map(|&i| rows[i].prompt[rows[i].prompt.len() - 1] as i32).collect();
    let logits = ctx.model.forward(Input::Tokens(&Array::from_slice(&ids, &[ids.len() as i32, 1])?), &mut batch)?;
    let logits = logits.astype(Dtype::F32)?;
    let back = batch.unstack()?.into_iter().map(|c| c.detached()).collect::<Result<Vec<_>>>()?;
    // Every row's first sample is built before any row changes, so a failure leaves them all.
    let mut samples = Vec::with_capacity(members.len());
    for (b, &i) in members.iter().enumerate() {
        let b = b as i32;
        samples.push(rows[i].sample(&logits.slice_axis(0, b, b + 1)?.reshape(&[-1])?)?);
    }
    for ((&i, c), s) in members.iter().zip(back).zip(samples) {
        rows[i].cache = Some(c);
        rows[i].pending = Some(s);
    }
    Ok(())
}
