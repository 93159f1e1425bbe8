//! From (processed) logits to a token, as mlx-engine's sampler does it.
//!
//! `logprobs = logits - logsumexp(logits)` is computed once and returned: it is what the
//! generator reports (after the processors, before temperature and the filters). Temperature 0
//! takes the argmax. Otherwise the filters mask tokens to -inf in the order top-p, min-p,
//! top-k, and a token is drawn from `categorical(logprobs / temp)` with an explicit PRNG key
//! that is split once per step, so a seeded request replays exactly.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::{eval, where_, Array, Dtype};
use crate::error::{Error, Result};
use crate::sample::params::{SamplingParams, MAX_TOP_LOGPROBS};

/// One sampled token and the distribution it came from.
#[derive(Debug)]
pub struct SampleOutput {
    pub token: u32,
    /// `[vocab]` f32 log-softmax of the logits handed to `sample` (evaluated).
    pub logprobs: Array,
}

/// [`SampleOutput`] before evaluation (see [`Sampler::sample_lazy`]).
#[derive(Debug)]
pub struct LazySample {
    /// uint32 scalar.
    pub token: Array,
    /// `[vocab]` f32.
    pub logprobs: Array,
    /// `[1]` f32: the token's entry of `logprobs`, part of the same graph, so reading it once
    /// the token is evaluated queues no new work behind a step computed ahead.
    pub logprob: Array,
    /// The top-logprobs candidates, when the request asks for them, in the same graph for the
    /// same reason (see [`top_candidates`]).
    pub top: Option<TopCandidates>,
}

/// Turns logits into tokens for one request.
pub struct Sampler {
    temp: f32,
    top_p: f32,
    min_p: f32,
    min_tokens_to_keep: usize,
    top_k: i32,
    seed: u64,
    /// The key the next step splits; `None` for greedy decoding, which draws nothing.
    key: Option<Array>,
}

/// A fresh seed from the clock and the process's hash keys (which come from OS entropy).
///
/// Kept to 32 bits, as mlx-engine masks its seeds, so a reported seed is exact in any JSON
/// client and can be sent back to replay the request.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() & 0xFFFF_FFFF
}

/// The logits as a `[vocab]` f32 array, whatever their float dtype and leading unit axes.
fn flat_f32(logits: &Array) -> Result<Array> {
    let shape = logits.shape();
    let vocab = shape.last().copied().unwrap_or(0);
    if shape.is_empty() || vocab <= 0 || logits.size() != vocab as usize {
        return Err(Error::Array(crate::api::Error::Array(format!(
            "the sampler takes the logits of one position, shape [vocab] or [1, vocab], got {shape:?}"
        ))));
    }
    let x = if shape.len() == 1 { logits.clone() } else { logits.reshape(&[vocab])? };
    Ok(if x.dtype() == Dtype::F32 { x } else { x.astype(Dtype::F32)? })
}

fn neg_inf_like(a: &Array) -> Result<Array> {
    Ok(Array::scalar(f64::NEG_INFINITY, a.dtype())?)
}

/// Nucleus filter (mlx-lm's `apply_top_p`): sort the probabilities ascending, take the
/// cumulative sum, keep the tokens whose cumulative mass exceeds `1 - top_p` (the smallest set
/// of most likely tokens holding `top_p` of the mass). The most likely token is always kept, so
/// f32 rounding of the sum can never mask everything. `top_p` outside (0, 1) is a no-op.
pub fn apply_top_p(logprobs: &Array, top_p: f32) -> Result<Array> {
    if !(top_p > 0.0 && top_p < 1.0) {
        return Ok(logprobs.clone());
    }
    let vocab = logprobs.dim(-1)?;
    let order = logprobs.argsort(-1)?;
    let sorted = logprobs.take_along_axis(&order, -1)?;
    let cumulative = sorted.exp()?.cumsum(-1, false, true)?;
    let threshold = Array::scalar(1.0 - top_p as f64, Dtype::F32)?;
    let top = sorted.slice_axis(-1, vocab - 1, vocab)?;
    let keep = cumulative.greater(&threshold)?.logical_or(&sorted.equal(&top)?)?;
    let kept = where_(&keep, &sorted, &neg_inf_like(logprobs)?)?;
    // `order` is a permutation, so scattering the sorted values back along it unsorts them.
    Ok(logprobs.put_along_axis(&order, &kept, -1)?)
}

/// mlx-lm's `apply_min_p`: keep the tokens with `logprob >= max + ln(min_p)` (probability at
/// least `min_p` times the best one's), and always the `min_tokens_to_keep` most likely ones in
/// sorted order. `min_p` outside (0, 1] is a no-op.
pub fn apply_min_p(logprobs: &Array, min_p: f32, min_tokens_to_keep: usize) -> Result<Array> {
    if !(min_p > 0.0 && min_p <= 1.0) {
        return Ok(logprobs.clone());
    }
    let vocab = logprobs.dim(-1)?;
    let order = logprobs.neg()?.argsort(-1)?;
    let sorted = logprobs.take_along_axis(&order, -1)?;
    let threshold = sorted.slice_axis(-1, 0, 1)?.add(&Array::scalar((min_p as f64).ln(), Dtype::F32)?)?;
    let position = Array::arange(0.0, vocab as f64, 1.0, Dtype::I32)?;
    let keep_n = Array::scalar(min_tokens_to_keep.min(vocab as usize) as f64, Dtype::I32)?;
    let remove = sorted.less(&threshold)?.logical_and(&position.greater_equal(&keep_n)?)?;
    let kept = where_(&remove, &neg_inf_like(logprobs)?, &sorted)?;
    Ok(logprobs.put_along_axis(&order, &kept, -1)?)
}

/// mlx-lm's `apply_top_k`: mask everything but the `top_k` largest (found with
/// `argpartition`, no full sort). `top_k` <= 0 or >= the vocabulary is a no-op.
pub fn apply_top_k(logprobs: &Array, top_k: i32) -> Result<Array> {
    let vocab = logprobs.dim(-1)?;
    if top_k <= 0 || top_k >= vocab {
        return Ok(logprobs.clone());
    }
    let rest = logprobs.neg()?.argpartition(top_k - 1, -1)?.slice_axis(-1, top_k, vocab)?;
    let masked = Array::full(&rest.shape(), f64::NEG_INFINITY, logprobs.dtype())?;
    Ok(logprobs.put_along_axis(&rest, &masked, -1)?)
}

impl Sampler {
    /// A sampler for `params` (whose ranges are checked here; the vocabulary-dependent checks
    /// are [`SamplingParams::validate`]'s).
    pub fn new(params: &SamplingParams) -> Result<Sampler> {
        params.validate_ranges()?;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        let key = if params.is_greedy() { None } else { Some(crate::api::random::key(seed)?) };
        Ok(Sampler {
            temp: params.temp,
            top_p: params.top_p,
            min_p: params.min_p,
            min_tokens_to_keep: params.min_tokens_to_keep,
            top_k: params.top_k,
            seed,
            key,
        })
    }

    /// The seed in use: the request's, or the one drawn for it (to report, so the client can
    /// replay the request).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn is_greedy(&self) -> bool {
        self.key.is_none()
    }

    /// The filtered, temperature-scaled logprobs that `categorical` draws from.
    fn sampling_logits(&self, logprobs: &Array) -> Result<Array> {
        let mut x = apply_top_p(logprobs, self.top_p)?;
        x = apply_min_p(&x, self.min_p, self.min_tokens_to_keep)?;
        x = apply_top_k(&x, self.top_k)?;
        // Clamped so a denormal temperature cannot turn the scale into inf (and 0 * inf into NaN).
        let scale = (1.0 / self.temp as f64).min(f32::MAX as f64);
        Ok(x.multiply(&Array::scalar(scale, Dtype::F32)?)?)
    }

    /// Picks the next token from the logits of one position (`[vocab]` or `[1, vocab]`, any
    /// float dtype), already passed through the logits processors.
    pub fn sample(&mut self, logits: &Array) -> Result<SampleOutput> {
        let lazy = self.sample_lazy(logits)?;
        eval(&[&lazy.token, &lazy.logprobs])?;
        Ok(SampleOutput { token: lazy.token.item::<u32>()?, logprobs: lazy.logprobs })
    }

    /// [`Sampler::sample`] without evaluating: the token (a uint32 scalar) and the logprobs
    /// are graph nodes, so a generator can `async_eval` them and build the next step's graph
    /// before reading the token, as mlx-lm's decode loop does.
    pub fn sample_lazy(&mut self, logits: &Array) -> Result<LazySample> {
        let plan = self.plan_keys(1)?;
        let sample = self.draw(logits, plan.key(0))?;
        self.advance(&plan, 1);
        Ok(sample)
    }

    /// The keys of the next `n` draws, worked out without using them up. A speculative round
    /// draws each position (the draft's guess and the main model's verification alike) with
    /// the key that plain decoding would use there, so a seed gives the same tokens with or
    /// without a drafter, and a drafter close to the main model guesses the same token more
    /// often (both sample with the same noise). Empty for greedy decoding.
    pub fn plan_keys(&self, n: usize) -> Result<KeyPlan> {
        let mut plan = KeyPlan { steps: Vec::new(), chain: Vec::new() };
        let Some(mut key) = self.key.clone() else { return Ok(plan) };
        for _ in 0..n {
            // Row 0 carries the chain on, row 1 draws this step's token. Evaluating the
            // token evaluates the split, so the next key is always one node from data.
            let keys = crate::api::random::split(&key, 2)?;
            key = keys.slice_axis(0, 0, 1)?.reshape(&[2])?;
            plan.steps.push(keys.slice_axis(0, 1, 2)?.reshape(&[2])?);
            plan.chain.push(key.clone());
        }
        Ok(plan)
    }

    /// One draw from the logits of one position with `key` (`None`: greedy), changing nothing.
    pub fn draw(&self, logits: &Array, key: Option<&Array>) -> Result<LazySample> {
        let x = flat_f32(logits)?;
        let logprobs = x.subtract(&x.logsumexp(&[-1], true)?)?;
        let token = if self.is_greedy() {
            logprobs.argmax(-1, false)?
        } else {
            let key = key.ok_or_else(|| {
                Error::Array(crate::api::Error::Array(
                    "a sampled draw needs a key from `plan_keys` (engine bug)".into(),
                ))
            })?;
            crate::api::random::categorical(&self.sampling_logits(&logprobs)?, -1, Some(key))?
        };
        let logprob = logprobs.take(&token.reshape(&[1])?, 0)?;
        Ok(LazySample { token, logprobs, logprob, top: None })
    }

    /// Uses up the first `n` keys of `plan` (the draws whose tokens were kept).
    pub fn advance(&mut self, plan: &KeyPlan, n: usize) {
        if let Some(key) = n.checked_sub(1).and_then(|i| plan.chain.get(i)) {
            self.key = Some(key.clone());
        }
    }
}

/// Keys for the draws ahead (see [`Sampler::plan_keys`]).
pub struct KeyPlan {
    /// The key each draw uses.
    steps: Vec<Array>,
    /// The sampler's key after each draw.
    chain: Vec<Array>,
}

impl KeyPlan {
    /// The key of draw `i`; `None` for greedy decoding (or past the plan).
    pub fn key(&self, i: usize) -> Option<&Array> {
        self.steps.get(i)
    }
}

/// The `n` most likely tokens of `logprobs` (`[vocab]` or `[1, vocab]`), most likely first,
/// equal values by ascending id; `n` is at most [`MAX_TOP_LOGPROBS`].
///
/// Finds candidates with `argpartition` on the device and reads back only those. When the
/// last place is tied with tokens left out (common in bf16, and with -inf from masks), the
/// lowest ids among the tied ones take the tied places, so the answer never depends on
/// partition order.
pub fn top_logprobs(logprobs: &Array, n: usize) -> Result<Vec<(u32, f32)>> {
    match top_candidates(logprobs, n)? {
        None => Ok(Vec::new()),
        Some(c) => {
            eval(&c.arrays())?;
            c.resolve()
        }
    }
}

/// [`top_logprobs`] as part of a decode step's graph: the `n` candidates found by
/// `argpartition`, their values, the smallest of them, how many entries share it and the `n`
/// lowest ids among those, packed into one array. It is evaluated with its token, and read
/// back in one transfer that waits for nothing queued behind it: a tie at the last place
/// needs no second pass over the logprobs.
pub struct TopCandidates {
    /// `[values (k) | ids (k) | lowest tied ids (k) | last value | tied count]`, f32 (ids are
    /// exact in f32 below 2^24).
    packed: Array,
    k: usize,
}

impl std::fmt::Debug for TopCandidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopCandidates").field("n", &self.k).finish()
    }
}

/// See [`TopCandidates`]; `None` for `n == 0`. `n` is at most [`MAX_TOP_LOGPROBS`].
pub fn top_candidates(logprobs: &Array, n: usize) -> Result<Option<TopCandidates>> {
    if n > MAX_TOP_LOGPROBS {
        return Err(Error::Param {
            name: "top_logprobs".into(),
            reason: format!("must be in [0, {MAX_TOP_LOGPROBS}], got {n}"),
        });
    }
    let lp = flat_f32(logprobs)?;
    let vocab = lp.dim(-1)?;
    let k = n.min(vocab as usize) as i32;
    if k == 0 {
        return Ok(None);
    }
    if vocab > 1 << 24 {
        return Err(Error::Param {
            name: "top_logprobs".into(),
            reason: format!("a vocabulary of {vocab} entries is over the 2^24 ids they can report"),
        });
    }
    let ids = lp.neg()?.argpartition(k - 1, -1)?.slice_axis(-1, 0, k)?;
    let values = lp.take(&ids, -1)?;
    let last = values.min(&[], false)?;
    let tied = lp.equal(&last)?;
    let tied_total = tied.astype(Dtype::I32)?.sum(&[], false)?;
    // Every tied id, the rest pushed past the vocabulary; the k smallest of them.
    let (position, beyond) = id_constants(vocab)?;
    let tied_ids = where_(&tied, &position, &beyond)?;
    let lowest = tied_ids.take(&tied_ids.argpartition(k - 1, -1)?.slice_axis(-1, 0, k)?, -1)?;
    let f = |a: &Array| -> Result<Array> { Ok(a.astype(Dtype::F32)?.reshape(&[-1])?) };
    let parts = [values, f(&ids)?, f(&lowest)?, f(&last)?, f(&tied_total)?];
    let packed = crate::api::concatenate(&parts.iter().collect::<Vec<_>>(), 0)?;
    Ok(Some(TopCandidates { packed, k: k as usize }))
}

thread_local! {
    /// [`id_constants`] of the last vocabulary size seen on this thread (a model's worker).
    static ID_CONSTANTS: std::cell::RefCell<Option<(i32, Array, Array)>> = const { std::cell::RefCell::new(None) };
}

/// The ids `0..vocab` and the scalar `vocab`, built once per vocabulary size and thread rather
/// than in every decode step that reports top logprobs: once evaluated they are data, where a
/// fresh `arange` would be one more kernel per token.
fn id_constants(vocab: i32) -> Result<(Array, Array)> {
    ID_CONSTANTS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((v, position, beyond)) = c.as_ref() {
            if *v == vocab {
                return Ok((position.clone(), beyond.clone()));
            }
        }
        let made = (Array::arange(0.0, vocab as f64, 1.0, Dtype::I32)?, Array::scalar(vocab as f64, Dtype::I32)?);
        *c = Some((vocab, made.0.clone(), made.1.clone()));
        Ok(made)
    })
}

impl TopCandidates {
    /// The arrays to evaluate.
    pub fn arrays(&self) -> [&Array; 1] {
        [&self.packed]
    }

    /// The answer of [`top_logprobs`], from the evaluated candidates.
    pub fn resolve(&self) -> Result<Vec<(u32, f32)>> {
        let k = self.k;
        let v = self.packed.to_vec::<f32>()?;
        if v.len() != 3 * k + 2 {
            return Err(Error::Array(crate::api::Error::Array(format!(
                "top logprobs: {} packed values, expected {} (engine bug)",
                v.len(),
                3 * k + 2
            ))));
        }
        let (values, ids, lowest) = (&v[..k], &v[k..2 * k], &v[2 * k..3 * k]);
        let (last_value, tied_total) = (v[3 * k], v[3 * k + 1] as usize);
        let mut out: Vec<(u32, f32)> = ids.iter().map(|&id| id as u32).zip(values.iter().copied()).collect();
        let tied_kept = out.iter().filter(|(_, v)| *v == last_value).count();
        if tied_total > tied_kept {
            // Keep the strictly better ones and refill the tied places with the lowest tied ids.
            out.retain(|(_, v)| *v != last_value);
            let mut lowest: Vec<u32> = lowest.iter().map(|&id| id as u32).collect();
            lowest.sort_unstable();
            out.extend(lowest.into_iter().take(tied_kept).map(|id| (id, last_value)));
        }
        out.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}
