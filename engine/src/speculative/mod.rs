//! Speculative decoding: a [`Drafter`] guesses the next few tokens, the main model checks them
//! all in one forward pass, and every guess it agrees with is a token that cost no pass of its
//! own.
//!
//! The round follows mlx-lm's `speculative_generate_step`: draft `k` tokens with the request's
//! own processors and sampler; run the main model once over the not-yet-seen tokens plus the
//! drafts; sample each of the `k + 1` positions; keep the longest prefix where the main
//! model's token equals the draft's (`from_draft`), then the main model's own next token;
//! rewind both caches to what was kept. Every emitted token is the main model's own sample at
//! its position, so the output distribution is plain decoding's, for any temperature. Beyond
//! mlx-lm, each position is drawn with the key plain decoding would use there
//! ([`Sampler::plan_keys`]): a seed gives the same text with or without a drafter, and a
//! draft model that is close to the main model shares its sampling noise and is accepted more.
//!
//! A cache that cannot be trimmed (a ring that would evict during the step: a sliding window,
//! or `max_kv_size`) is snapshotted before the step and restored after a rejection; the
//! tokens it then lacks are fed in front of the next step's input, so a rejection never
//! costs a pass of its own.
//!
//! Drafters: a second, smaller model ([`model::DraftModel`]) and prompt lookup
//! ([`lookup::PromptLookup`]), which copies what followed the latest earlier occurrence of
//! the last few tokens. Drafters that need the main model's hidden states (MTP heads, EAGLE)
//! can implement the same trait later.

pub mod compat;
pub mod lookup;
pub mod model;

use std::collections::VecDeque;

use std::time::Instant;

use mlx_engine_plugin_api::{concatenate, eval, Array, Dtype, DynModel, Input};
use serde::Serialize;

use crate::cache::KvCache;
use crate::constrain::SequenceMatcher;
use crate::error::{Error, Result};
use crate::generate::prefill::token_ids;
use crate::generate::step::{mask, Decoder, HostTimes, StepToken, TokenStepper};
use crate::sample::{apply_processors, KeyPlan, LazySample, LogitsProcessor, Sampler};

/// Draft tokens per round when the request does not say (mlx-engine's default; mlx-lm's is 2).
pub const DEFAULT_NUM_DRAFT_TOKENS: usize = 3;

/// The most draft tokens per round a request may ask for: the verify pass grows with it and a
/// longer guess is almost never accepted whole.
pub const MAX_NUM_DRAFT_TOKENS: usize = 64;

/// The n-gram sizes prompt lookup tries by default, longest first (llama.cpp's lookup decoding
/// matches 1 to 4 tokens; 3 keeps short, common patterns from proposing noise).
pub const DEFAULT_NGRAM_MIN: usize = 1;
pub const DEFAULT_NGRAM_MAX: usize = 3;

/// The longest n-gram prompt lookup may match.
pub const MAX_NGRAM: usize = 32;

/// Whether and how one request decodes speculatively.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Speculation {
    /// The model kit's draft model when one is loaded, plain decoding otherwise.
    #[default]
    Auto,
    /// Plain decoding.
    Off,
    /// The model kit's draft model; an error when none is loaded.
    DraftModel,
    /// Prompt lookup with n-grams of `min_ngram..=max_ngram` tokens (longest tried first).
    PromptLookup { min_ngram: usize, max_ngram: usize },
}

impl Speculation {
    /// Prompt lookup with the default n-gram sizes.
    pub fn prompt_lookup() -> Speculation {
        Speculation::PromptLookup { min_ngram: DEFAULT_NGRAM_MIN, max_ngram: DEFAULT_NGRAM_MAX }
    }

    /// Checks the settings on their own (before any model work).
    pub fn validate(&self, num_draft_tokens: Option<usize>) -> Result<()> {
        if let Some(k) = num_draft_tokens {
            if !(1..=MAX_NUM_DRAFT_TOKENS).contains(&k) {
                return Err(param("num_draft_tokens", format!("must be in [1, {MAX_NUM_DRAFT_TOKENS}], got {k}")));
            }
        }
        if let Speculation::PromptLookup { min_ngram, max_ngram } = *self {
            if !(1..=MAX_NGRAM).contains(&min_ngram) || !(1..=MAX_NGRAM).contains(&max_ngram) {
                return Err(param(
                    "ngram",
                    format!("n-gram sizes must be in [1, {MAX_NGRAM}], got {min_ngram} to {max_ngram}"),
                ));
            }
            if min_ngram > max_ngram {
                return Err(param(
                    "ngram",
                    format!("the smallest n-gram ({min_ngram}) exceeds the largest ({max_ngram})"),
                ));
            }
        }
        Ok(())
    }
}

fn param(name: &str, reason: impl Into<String>) -> Error {
    Error::Param { name: name.into(), reason: reason.into() }
}

/// What speculative decoding did in one generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpeculativeStats {
    /// `draft model` or `prompt lookup`.
    pub drafter: String,
    pub num_draft_tokens: usize,
    /// Verify passes of the main model.
    pub rounds: usize,
    /// Tokens the drafter proposed.
    pub drafted: usize,
    /// Proposals the main model agreed with (emitted with `from_draft`).
    pub accepted: usize,
    /// `accepted / drafted` (0 when nothing was drafted).
    pub acceptance_rate: f64,
    /// Prompt tokens the draft model took from its own prompt cache (draft models only).
    pub draft_cached_tokens: usize,
}

/// Draws draft tokens exactly as the main model's sampler draws that position: the request's
/// processors over the draft's history, the grammar's mask, then the sampler with the
/// position's key.
pub struct DraftSampling<'s> {
    processors: &'s mut [Box<dyn LogitsProcessor>],
    sampler: &'s Sampler,
    keys: &'s KeyPlan,
    /// The request's grammar, at the committed sequence; drafting advances it over the drafts
    /// and the round takes them back (`consumed`).
    constraint: Option<&'s mut SequenceMatcher>,
    /// The committed sequence's length, and the drafts the grammar has seen beyond it.
    committed: usize,
    consumed: usize,
}

impl DraftSampling<'_> {
    /// Draft position `i` (0 = the token after the history's end) from one position's logits.
    pub fn sample(&mut self, i: usize, history: &[u32], logits: &Array) -> Result<LazySample> {
        let mut processed = apply_processors(self.processors, history, logits)?;
        if let Some(m) = self.constraint.as_deref_mut() {
            // Drafts the grammar refuses would be rejected anyway: draw only allowed ones.
            for &t in history.get(self.committed + self.consumed..).unwrap_or_default() {
                m.consume(t)?;
                self.consumed += 1;
            }
            processed = m.apply(&processed)?;
        }
        self.sampler.draw(&processed, self.keys.key(i))
    }

    /// Whether the processors or the grammar read the history, so each drafted token must be
    /// known on the host before the next is drawn.
    pub fn needs_history(&self) -> bool {
        !self.processors.is_empty() || self.constraint.is_some()
    }
}

/// Proposes tokens for the main model to verify.
pub trait Drafter {
    /// Named in the stats.
    fn name(&self) -> &'static str;

    /// Up to `n` (at least 1) tokens to follow `history` (prompt and committed tokens; its last
    /// token has not been through the main model yet). Fewer, or none, is fine: the round then
    /// verifies what there is.
    fn draft(&mut self, history: &[u32], n: usize, sampling: &mut DraftSampling<'_>) -> Result<Vec<u32>>;

    /// After a round: `history` is the committed sequence, which ends with the first
    /// `accepted` of the `drafted` proposals and the main model's own next token.
    fn accept(&mut self, history: &[u32], drafted: usize, accepted: usize) -> Result<()>;
}

/// The token stepper of speculative decoding (see the module docs).
pub struct SpeculativeStepper<'a> {
    dec: Decoder<'a>,
    drafter: &'a mut dyn Drafter,
    num_draft: usize,
    vocab_size: Option<usize>,
    /// The first token, sampled from the prefill's logits.
    first: Option<LazySample>,
    /// Tokens of the last round not handed out yet.
    queue: VecDeque<StepToken>,
    stats: SpeculativeStats,
}

impl<'a> SpeculativeStepper<'a> {
    /// Starts from the last prompt token's logits (`[vocab]`, from the prefill). `vocab_size`
    /// bounds the drafter's ids.
    pub fn new(
        mut dec: Decoder<'a>,
        first_logits: &Array,
        drafter: &'a mut dyn Drafter,
        num_draft: usize,
        vocab_size: Option<usize>,
    ) -> Result<SpeculativeStepper<'a>> {
        let first = dec.sample(first_logits)?;
        let stats =
            SpeculativeStats { drafter: drafter.name().into(), num_draft_tokens: num_draft, ..Default::default() };
        Ok(SpeculativeStepper {
            dec,
            drafter,
            num_draft,
            vocab_size,
            first: Some(first),
            queue: VecDeque::new(),
            stats,
        })
    }

    pub fn stats(&self) -> SpeculativeStats {
        let mut s = self.stats.clone();
        s.acceptance_rate = if s.drafted > 0 { s.accepted as f64 / s.drafted as f64 } else { 0.0 };
        s
    }

    /// One draft-and-verify round; queues the tokens it commits (at most `remaining`).
    fn round(&mut self, remaining: usize) -> Result<()> {
        let most = self.num_draft.min(remaining.saturating_sub(1));
        let d = &mut self.dec;
        let parts = RoundParts {
            model: d.model,
            cache: d.cache.live_mut(),
            history: &d.history,
            processors: &mut d.processors,
            sampler: &mut d.sampler,
            constraint: d.constraint.as_mut(),
            times: &mut d.times,
        };
        let Verified { samples, drafted, accepted } = draft_and_verify(parts, self.drafter, most, self.vocab_size)?;
        let mut out = Vec::with_capacity(accepted + 1);
        for (i, s) in samples.into_iter().enumerate() {
            out.push(self.dec.read(s, i, i < accepted)?);
        }
        let own = out.len() - 1;
        for (i, t) in out.iter_mut().enumerate() {
            if i < own {
                self.dec.commit_seen(t.id);
            } else {
                self.dec.commit(t.id)?;
            }
            // Only the last draft or the model's own token can finish the grammar (the
            // verification stops at the draft that does).
            t.grammar_done = i + 1 >= own && self.dec.grammar_done();
        }
        self.drafter.accept(&self.dec.history, drafted, accepted)?;
        self.stats.rounds += 1;
        self.stats.drafted += drafted;
        self.stats.accepted += accepted;
        self.queue.extend(out);
        Ok(())
    }
}

/// What one sequence brings to a round: the main model with the sequence's cache, which holds
/// all of `history` but its last token, and what decides the sequence's tokens.
pub struct RoundParts<'r> {
    pub model: &'r dyn DynModel,
    pub cache: &'r mut KvCache,
    /// The committed sequence (prompt and generated tokens).
    pub history: &'r [u32],
    pub processors: &'r mut [Box<dyn LogitsProcessor>],
    pub sampler: &'r mut Sampler,
    /// The grammar at the committed sequence; left having consumed the accepted drafts.
    pub constraint: Option<&'r mut SequenceMatcher>,
    pub times: &'r mut HostTimes,
}

/// What a round verified: the main model's samples (evaluated) at the first `accepted + 1`
/// positions after the history, of which the first `accepted` are drafts it agreed with and
/// the last its own token; `drafted` proposals were fed.
pub struct Verified {
    pub samples: Vec<LazySample>,
    pub drafted: usize,
    pub accepted: usize,
}

/// Drafts up to `most` tokens after `p.history`, runs the main model once over what it has
/// not seen plus the drafts, samples each position, and rewinds the cache to the accepted
/// drafts (the main model's own token is not fed yet). The sampler's keys advance past the
/// kept positions; the grammar has consumed the accepted drafts. Committing the tokens (and
/// [`Drafter::accept`]) is the caller's.
pub fn draft_and_verify(
    p: RoundParts<'_>,
    drafter: &mut dyn Drafter,
    most: usize,
    vocab_size: Option<usize>,
) -> Result<Verified> {
    let RoundParts { model, cache, history, processors, sampler, mut constraint, times } = p;
    let h = history.len();
    let plan = sampler.plan_keys(most + 1)?;
    let mut drafts = Vec::new();
    if most > 0 {
        let mut sampling = DraftSampling {
            processors: &mut *processors,
            sampler: &*sampler,
            keys: &plan,
            constraint: constraint.as_deref_mut(),
            committed: h,
            consumed: 0,
        };
        drafts = drafter.draft(history, most, &mut sampling)?;
        let consumed = sampling.consumed;
        if let Some(m) = constraint.as_deref_mut() {
            m.rollback(consumed)?;
        }
        drafts.truncate(most);
        crate::model::check_token_ids("draft", &drafts, vocab_size)?;
    }
    // A draft the grammar refuses cannot be the main model's (masked) choice: the guess
    // ends before the first one.
    if let Some(m) = constraint.as_deref_mut() {
        let valid = m.valid_prefix(&drafts)?;
        drafts.truncate(valid);
    }
    let fed_drafts = drafts.len();
    let mut j = fed_drafts;

    // The main model sees what it has not seen yet (the last committed token, and more
    // after a restored snapshot) and the drafts, in one pass.
    let fed = cache.len();
    let mut input = history[fed..].to_vec();
    input.extend(&drafts);
    let snapshot = (!cache.is_trimmable_after(input.len())).then(|| cache.clone());
    let t = Instant::now();
    let logits = model.forward(Input::Tokens(&token_ids(&input)?), &mut *cache);
    times.forward_seconds += t.elapsed().as_secs_f64();
    let logits = logits?;
    // Row of the position after the last committed token.
    let base = (input.len() - fed_drafts - 1) as i32;
    let mut sequence = history.to_vec();
    sequence.extend(&drafts);
    let mut samples = Vec::with_capacity(j + 1);
    let mut i = 0;
    while i <= j {
        let at = base + i as i32;
        let row = logits.slice_axis(1, at, at + 1)?.reshape(&[-1])?.astype(Dtype::F32)?;
        let processed = apply_processors(processors, &sequence[..h + i], &row)?;
        // Position i's mask is the grammar after the first i drafts (computed while the
        // device runs the verify pass); what the verifier rejects is rolled back below.
        let processed = mask(constraint.as_deref_mut(), times, &processed)?;
        samples.push(sampler.draw(&processed, plan.key(i))?);
        if let (Some(m), Some(&d), true) = (constraint.as_deref_mut(), drafts.get(i), i < j) {
            m.consume(d)?;
            if m.is_done() {
                // Nothing follows a finished grammar: verify no further.
                j = i + 1;
            }
        }
        i += 1;
    }
    let tokens = samples.iter().map(|s| s.token.reshape(&[1])).collect::<std::result::Result<Vec<_>, _>>()?;
    let tokens = concatenate(&tokens.iter().collect::<Vec<_>>(), 0)?;
    let mut pending: Vec<&Array> = samples.iter().flat_map(|s| [&s.logprobs, &s.logprob]).collect();
    pending.push(&tokens);
    eval(&pending)?;
    let ids = tokens.to_vec::<u32>()?;
    let accepted = ids.iter().zip(&drafts[..j]).take_while(|(m, d)| m == d).count();
    sampler.advance(&plan, accepted + 1);
    if let Some(m) = constraint {
        m.rollback(j - accepted)?;
    }

    // Keep the accepted drafts; the main model's own token is fed next round.
    let extra = fed_drafts - accepted;
    if extra > 0 && cache.trim(extra) != extra {
        let Some(snapshot) = snapshot else {
            return Err(param("model", "the KV cache could not be rewound after a speculative step (engine bug)"));
        };
        *cache = snapshot;
    }
    samples.truncate(accepted + 1);
    Ok(Verified { samples, drafted: fed_drafts, accepted })
}

impl TokenStepper for SpeculativeStepper<'_> {
    fn next(&mut self, remaining: usize) -> Result<StepToken> {
        if let Some(first) = self.first.take() {
            let mut token = self.dec.read(first, 0, false)?;
            self.dec.commit(token.id)?;
            token.grammar_done = self.dec.grammar_done();
            return Ok(token);
        }
        if self.queue.is_empty() {
            self.round(remaining)?;
        }
        self.queue.pop_front().ok_or_else(|| param("model", "a speculative round committed no token (engine bug)"))
    }

    /// The main model's graph and wait times (the drafter's own passes are not in them).
    fn host_times(&self) -> HostTimes {
        self.dec.times
    }
}
