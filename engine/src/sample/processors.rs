//! Logits processors: edits of the logits that depend on the tokens so far, applied before the
//! sampler (and so before the reported logprobs are taken).
//!
//! Each one touches only the few token ids it is about: it uploads those ids, gathers their
//! logits, computes the new values and scatters them back (`take_along_axis` /
//! `put_along_axis`). A decode step therefore costs work proportional to the context window, not
//! to the vocabulary, and never reads the logits back to the host.
//!
//! Windows:
//! - repetition penalty: the last `repetition_context_size` tokens of the whole history, prompt
//!   included (mlx-lm's `make_repetition_penalty`; mlx-engine also counts cached prompt tokens);
//! - presence / frequency penalty: the tokens *generated* so far (OpenAI: "tokens sampled prior
//!   to the current position"), optionally only the last `penalty_context_size` of them. The
//!   processor learns where the prompt ends from its first call, whose history is the prompt.
//!
//! A window size of 0 means "no limit" for both.
//!
//! Running ahead: on a pipelined decode, step n+1's graph is built before token n is read back,
//! so token n exists only on the device. [`LogitsProcessor::process_ahead`] takes it as a
//! `pending` array and folds it in with device ops (a repeated id is harmless: every copy of an
//! index is written the same value), so the penalties keep the pipeline instead of waiting for
//! each token.

use std::collections::BTreeMap;

use crate::api::{Array, Dtype};
use crate::error::{Error, Result};
use crate::sample::params::SamplingParams;

/// Changes the logits of the next token given every token so far (prompt included).
///
/// `Send` so a generator holding them can move to its worker thread.
pub trait LogitsProcessor: Send {
    /// `logits` is `[vocab]` or `[1, vocab]`; the result has the same shape.
    fn process(&mut self, history: &[u32], logits: &Array) -> Result<Array>;

    /// What `process` gives for the history `history` followed by `pending`, a uint32 `[1]`
    /// token still on the device, without reading it back. `None`: this processor needs every
    /// token on the host, and a decode using it waits for each token.
    fn process_ahead(&mut self, _history: &[u32], _pending: &Array, _logits: &Array) -> Result<Option<Array>> {
        Ok(None)
    }

    /// Whether [`process_ahead`](Self::process_ahead) answers (it must then always answer).
    fn runs_ahead(&self) -> bool {
        false
    }
}

/// The processors a request asks for, in mlx-lm's order: logit bias, repetition penalty,
/// presence/frequency penalty. Disabled ones are left out, so an empty list costs nothing.
pub fn processors_for(params: &SamplingParams) -> Result<Vec<Box<dyn LogitsProcessor>>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if !params.logit_bias.is_empty() {
        out.push(Box::new(LogitBias::new(&params.logit_bias)?));
    }
    if let Some(p) = params.repetition_penalty {
        if p != 1.0 {
            out.push(Box::new(RepetitionPenalty::new(p, params.repetition_context_size)));
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        out.push(Box::new(PresenceFrequencyPenalty::new(
            params.presence_penalty,
            params.frequency_penalty,
            params.penalty_context_size,
        )));
    }
    Ok(out)
}

/// Runs `processors` in order over `logits`.
pub fn apply_processors(processors: &mut [Box<dyn LogitsProcessor>], history: &[u32], logits: &Array) -> Result<Array> {
    let mut x = logits.clone();
    for p in processors.iter_mut() {
        x = p.process(history, &x)?;
    }
    Ok(x)
}

/// [`apply_processors`] for a history ending in the device-side token `pending` (see
/// [`LogitsProcessor::process_ahead`]); an error if one of them cannot run ahead.
pub fn apply_processors_ahead(
    processors: &mut [Box<dyn LogitsProcessor>],
    history: &[u32],
    pending: &Array,
    logits: &Array,
) -> Result<Array> {
    let mut x = logits.clone();
    for p in processors.iter_mut() {
        x = p.process_ahead(history, pending, &x)?.ok_or_else(|| {
            Error::Array(crate::api::Error::Array("a logits processor that cannot run ahead was asked to".into()))
        })?;
    }
    Ok(x)
}

/// Whether every processor runs ahead, so a decode with them can be pipelined.
pub fn all_run_ahead(processors: &[Box<dyn LogitsProcessor>]) -> bool {
    processors.iter().all(|p| p.runs_ahead())
}

/// The last `size` items of `tokens` (all of them when `size` is 0).
fn window(tokens: &[u32], size: usize) -> &[u32] {
    if size == 0 || size >= tokens.len() {
        tokens
    } else {
        &tokens[tokens.len() - size..]
    }
}

/// The vocabulary size of `[vocab]` / `[1, vocab]` logits.
fn vocab_of(logits: &Array) -> Result<usize> {
    let shape = logits.shape();
    match shape.as_slice() {
        [v] | [1, v] => Ok(*v as usize),
        _ => Err(Error::Array(crate::api::Error::Array(format!(
            "logits processors take logits of shape [vocab] or [1, vocab], got {shape:?}"
        )))),
    }
}

/// `ids` as an index array shaped to broadcast against `logits` along its last axis.
fn index_array(ids: &[u32], logits: &Array) -> Result<Array> {
    let mut shape = vec![1i32; logits.ndim().saturating_sub(1)];
    shape.push(ids.len() as i32);
    Ok(Array::from_slice(ids, &shape)?)
}

/// The window of `size` that ends in a pending token: its host part, the last `size - 1` of
/// `tokens` (all of them when `size` is 0).
fn window_before_pending(tokens: &[u32], size: usize) -> &[u32] {
    match size {
        0 => tokens,
        1 => &[],
        n => window(tokens, n - 1),
    }
}

/// `ids` (host) then `pending` (device, uint32 `[1]`), shaped like [`index_array`]'s result.
fn index_with_pending(ids: &[u32], pending: &Array, logits: &Array) -> Result<Array> {
    let pending = pending.reshape(&[1])?.astype(Dtype::U32)?;
    let all = if ids.is_empty() {
        pending
    } else {
        crate::api::concatenate(&[&Array::from_slice(ids, &[ids.len() as i32])?, &pending], 0)?
    };
    let mut shape = vec![1i32; logits.ndim().saturating_sub(1)];
    shape.push(ids.len() as i32 + 1);
    Ok(all.reshape(&shape)?)
}

/// Replaces the logits at `ids` by `update(their current values)`: one gather and one scatter.
fn update_at(logits: &Array, ids: &Array, update: impl FnOnce(&Array) -> Result<Array>) -> Result<Array> {
    let current = logits.take_along_axis(ids, -1)?;
    let new = update(&current)?;
    let new = if new.dtype() == logits.dtype() { new } else { new.astype(logits.dtype())? };
    Ok(logits.put_along_axis(ids, &new, -1)?)
}

/// Distinct ids of `tokens` below `vocab` with their counts, in id order (deterministic).
///
/// Ids outside the logits (a tokenizer larger than the output layer) cannot be penalised and
/// would index out of bounds, so they are dropped here.
fn counts(tokens: &[u32], vocab: usize) -> BTreeMap<u32, u32> {
    let mut m = BTreeMap::new();
    for &t in tokens.iter().filter(|&&t| (t as usize) < vocab) {
        *m.entry(t).or_insert(0u32) += 1;
    }
    m
}

/// Adds a fixed bias to chosen token ids (OpenAI `logit_bias`).
pub struct LogitBias {
    ids: Vec<u32>,
    bias: Array,
    max_id: u32,
}

impl LogitBias {
    /// The ids and biases are uploaded once here, so each step is a gather, an add, a scatter.
    pub fn new(bias: &BTreeMap<u32, f32>) -> Result<LogitBias> {
        let ids: Vec<u32> = bias.keys().copied().collect();
        let values: Vec<f32> = bias.values().copied().collect();
        let bias = Array::from_slice(&values, &[values.len() as i32])?;
        Ok(LogitBias { max_id: ids.iter().copied().max().unwrap_or(0), ids, bias })
    }
}

impl LogitsProcessor for LogitBias {
    fn process(&mut self, _history: &[u32], logits: &Array) -> Result<Array> {
        if self.ids.is_empty() {
            return Ok(logits.clone());
        }
        let vocab = vocab_of(logits)?;
        if self.max_id as usize >= vocab {
            // `SamplingParams::validate` normally catches this before generation starts.
            return Err(Error::Param {
                name: "logit_bias".into(),
                reason: format!("token id {} is out of range for a vocabulary of {vocab} tokens", self.max_id),
            });
        }
        let idx = index_array(&self.ids, logits)?;
        let bias = self.bias.reshape(&idx.shape())?;
        update_at(logits, &idx, |cur| Ok(cur.astype(Dtype::F32)?.add(&bias)?))
    }

    /// The bias never looks at the history.
    fn process_ahead(&mut self, history: &[u32], _pending: &Array, logits: &Array) -> Result<Option<Array>> {
        self.process(history, logits).map(Some)
    }

    fn runs_ahead(&self) -> bool {
        true
    }
}

/// mlx-lm's repetition penalty: each distinct token of the window has a negative logit
/// multiplied by the penalty and a positive one divided by it (both push it down for
/// penalty > 1).
pub struct RepetitionPenalty {
    penalty: f32,
    context_size: usize,
    /// The penalty and 0 as f32 scalars, made on first use and kept (not rebuilt per step).
    scalars: Option<(Array, Array)>,
}

impl RepetitionPenalty {
    pub fn new(penalty: f32, context_size: usize) -> RepetitionPenalty {
        RepetitionPenalty { penalty, context_size, scalars: None }
    }

    fn penalise(&mut self, logits: &Array, idx: &Array) -> Result<Array> {
        let (p, zero) = match &self.scalars {
            Some(s) => s.clone(),
            None => {
                let s = (Array::scalar(self.penalty as f64, Dtype::F32)?, Array::scalar(0.0, Dtype::F32)?);
                self.scalars.insert(s).clone()
            }
        };
        update_at(logits, idx, |cur| {
            let cur = cur.astype(Dtype::F32)?;
            Ok(crate::api::where_(&cur.less(&zero)?, &cur.multiply(&p)?, &cur.divide(&p)?)?)
        })
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&mut self, history: &[u32], logits: &Array) -> Result<Array> {
        let vocab = vocab_of(logits)?;
        let ids: Vec<u32> = counts(window(history, self.context_size), vocab).into_keys().collect();
        if ids.is_empty() {
            return Ok(logits.clone());
        }
        let idx = index_array(&ids, logits)?;
        self.penalise(logits, &idx)
    }

    /// A sampled token is always below the vocabulary, so `pending` needs no range check.
    fn process_ahead(&mut self, history: &[u32], pending: &Array, logits: &Array) -> Result<Option<Array>> {
        let vocab = vocab_of(logits)?;
        let ids: Vec<u32> = counts(window_before_pending(history, self.context_size), vocab).into_keys().collect();
        let idx = index_with_pending(&ids, pending, logits)?;
        self.penalise(logits, &idx).map(Some)
    }

    fn runs_ahead(&self) -> bool {
        true
    }
}

/// OpenAI presence and frequency penalties over the generated tokens:
/// `logit[t] -= presence * (count[t] > 0) + frequency * count[t]`.
pub struct PresenceFrequencyPenalty {
    presence: f32,
    frequency: f32,
    context_size: usize,
    /// Length of the history at the first call, i.e. of the prompt.
    prompt_len: Option<usize>,
    /// Presence, frequency, 1 and 0 as f32 scalars for [`LogitsProcessor::process_ahead`],
    /// made on first use and kept (not rebuilt per step).
    scalars: Option<[Array; 4]>,
}

impl PresenceFrequencyPenalty {
    pub fn new(presence: f32, frequency: f32, context_size: usize) -> PresenceFrequencyPenalty {
        PresenceFrequencyPenalty { presence, frequency, context_size, prompt_len: None, scalars: None }
    }

    fn scalars(&mut self) -> Result<[Array; 4]> {
        if let Some(s) = &self.scalars {
            return Ok(s.clone());
        }
        let f32s = |v: f32| Array::scalar(v as f64, Dtype::F32);
        let s = [f32s(self.presence)?, f32s(self.frequency)?, f32s(1.0)?, f32s(0.0)?];
        Ok(self.scalars.insert(s).clone())
    }

    /// Fixes where the prompt ends instead of learning it from the first call (for callers that
    /// start the processor in the middle of a generation).
    pub fn with_prompt_len(mut self, prompt_len: usize) -> PresenceFrequencyPenalty {
        self.prompt_len = Some(prompt_len);
        self
    }
}

impl LogitsProcessor for PresenceFrequencyPenalty {
    fn process(&mut self, history: &[u32], logits: &Array) -> Result<Array> {
        let vocab = vocab_of(logits)?;
        let prompt_len = *self.prompt_len.get_or_insert(history.len());
        let start = prompt_len.min(history.len());
        let generated = window(&history[start..], self.context_size);
        let counts = counts(generated, vocab);
        if counts.is_empty() {
            return Ok(logits.clone());
        }
        let ids: Vec<u32> = counts.keys().copied().collect();
        let amounts: Vec<f32> = counts.values().map(|&c| self.presence + self.frequency * c as f32).collect();
        let idx = index_array(&ids, logits)?;
        let amounts = Array::from_slice(&amounts, &idx.shape())?;
        update_at(logits, &idx, |cur| Ok(cur.astype(Dtype::F32)?.subtract(&amounts)?))
    }

    /// The host counts, with `pending` added on the device: it raises its own id's count by one,
    /// whether that id is among the counted ones (`hit`) or new.
    fn process_ahead(&mut self, history: &[u32], pending: &Array, logits: &Array) -> Result<Option<Array>> {
        let vocab = vocab_of(logits)?;
        let prompt_len = *self.prompt_len.get_or_insert(history.len());
        let start = prompt_len.min(history.len());
        let counts = counts(window_before_pending(&history[start..], self.context_size), vocab);
        let [presence, frequency, one, zero] = self.scalars()?;
        let ids: Vec<u32> = counts.keys().copied().collect();
        let n = ids.len() as i32;
        let pending_count = if ids.is_empty() {
            one.reshape(&[1])?
        } else {
            let host_ids = Array::from_slice(&ids, &[n])?;
            let host_counts = Array::from_slice(&counts.values().map(|&c| c as f32).collect::<Vec<_>>(), &[n])?;
            let hit = host_ids.equal(&pending.reshape(&[1])?.astype(Dtype::U32)?)?;
            let raised = host_counts.add(&hit.astype(Dtype::F32)?)?;
            let own = crate::api::where_(&hit, &host_counts, &zero)?.sum(&[0], false)?.reshape(&[1])?.add(&one)?;
            crate::api::concatenate(&[&raised, &own], 0)?
        };
        let amounts = presence.add(&frequency.multiply(&pending_count)?)?;
        let idx = index_with_pending(&ids, pending, logits)?;
        let amounts = amounts.reshape(&idx.shape())?;
        update_at(logits, &idx, |cur| Ok(cur.astype(Dtype::F32)?.subtract(&amounts)?)).map(Some)
    }

    fn runs_ahead(&self) -> bool {
        true
    }
}
