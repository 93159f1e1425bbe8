//! Token steppers: the layer of the decode loop that turns model passes into token ids and
//! logprobs, below the text stream (detokenizer, stop strings, EOS; see `stream`).
//!
//! A stepper owns everything that decides *which* token comes next: the model and its live
//! cache, the logits processors with the token history they see, and the sampler with its key
//! chain. It commits every token it hands out (history and prompt-cache record) before the
//! text layer sees it, so the two never disagree about the sequence. The plain stepper runs
//! one forward per token; the speculative one (`crate::speculative`) drafts several and
//! verifies them in one pass, behind the same trait.

use std::time::Instant;

use mlx_engine_plugin_api::{async_eval, Array, DynModel, Input};

use super::prefill::{last_logits, token_ids};
use crate::cache::prompt_cache::PromptCache;
use crate::constrain::SequenceMatcher;
use crate::error::{Error, Result};
use crate::sample::{
    all_run_ahead, apply_processors, apply_processors_ahead, top_candidates, LazySample, LogitsProcessor, Sampler,
    TopCandidates,
};

/// One token a stepper committed to the sequence.
#[derive(Debug)]
pub struct StepToken {
    pub id: u32,
    /// The token's log-probability (after the processors, before temperature and filters).
    pub logprob: f32,
    /// The `[vocab]` f32 log-softmax it was drawn from (for top logprobs), evaluated.
    pub logprobs: Array,
    /// Whether a drafter proposed it and the main model agreed (speculative decoding).
    pub from_draft: bool,
    /// Its top-logprobs candidates, evaluated with it (when the decoder was asked for them).
    pub top: Option<TopCandidates>,
    /// The request's grammar admits no more text after this token (the generation ends).
    pub grammar_done: bool,
}

/// Where the host's time went while decoding: building the model's graph (its forward through
/// the plugin), building the processors' and sampler's graph and queueing both (MLX's
/// `async_eval`, which also blocks while the device is too far behind), computing a grammar's
/// token masks (while the device runs the forward they apply to), waiting for the device to
/// hand a token back, and the text layer (detokenizing, stop strings, handing results out). On a
/// pipelined decode the device works while the host builds, so `forward` well below the time per
/// token means the host does not hold the device up.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HostTimes {
    pub forward_seconds: f64,
    pub sample_seconds: f64,
    pub mask_seconds: f64,
    pub wait_seconds: f64,
    pub text_seconds: f64,
}

/// Produces the tokens of one generation, one at a time.
pub trait TokenStepper {
    /// The next token. `remaining` is how many tokens the stream may still take, this one
    /// included (at least 1): a stepper never computes ahead past it.
    fn next(&mut self, remaining: usize) -> Result<StepToken>;

    /// Graph-building and waiting time so far (`text_seconds` is the caller's to fill).
    fn host_times(&self) -> HostTimes;
}

/// What every stepper shares: the main model with its live cache, and the forward -> processors
/// -> sample step over a token history (prompt plus committed tokens).
pub struct Decoder<'a> {
    pub model: &'a dyn DynModel,
    pub cache: &'a mut PromptCache,
    pub sampler: Sampler,
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    /// The prompt, then every committed token.
    pub history: Vec<u32>,
    /// Tokens committed so far (for error messages that name the step).
    pub generated: usize,
    /// Top-logprobs candidates to build into each sample's graph (0: none).
    pub top_logprobs: usize,
    pub times: HostTimes,
    /// The request's grammar, advanced by every committed token.
    pub constraint: Option<SequenceMatcher>,
}

impl<'a> Decoder<'a> {
    pub fn new(
        model: &'a dyn DynModel,
        cache: &'a mut PromptCache,
        sampler: Sampler,
        processors: Vec<Box<dyn LogitsProcessor>>,
        prompt: &[u32],
    ) -> Decoder<'a> {
        Decoder {
            model,
            cache,
            sampler,
            processors,
            history: prompt.to_vec(),
            generated: 0,
            top_logprobs: 0,
            times: HostTimes::default(),
            constraint: None,
        }
    }

    /// Constrains every sampled token to `matcher`'s grammar.
    pub fn with_constraint(mut self, matcher: Option<SequenceMatcher>) -> Decoder<'a> {
        self.constraint = matcher;
        self
    }

    /// Whether the grammar (if any) admits no more text.
    pub fn grammar_done(&self) -> bool {
        self.constraint.as_ref().is_some_and(SequenceMatcher::is_done)
    }

    /// `logits` with the grammar's mask for the next position applied (unchanged without a
    /// grammar). The logits are queued first, so the device computes the forward pass while
    /// the host computes the mask: that keeps the matcher off the critical path.
    pub fn masked(&mut self, logits: &Array) -> Result<Array> {
        mask(self.constraint.as_mut(), &mut self.times, logits)
    }

    /// Runs `tokens` (`[1, L]` ids) through the model into the live cache: logits `[1, L, vocab]`.
    pub fn forward(&mut self, tokens: &Array) -> Result<Array> {
        let t = Instant::now();
        let logits = self.model.forward(Input::Tokens(tokens), self.cache.live_mut());
        self.times.forward_seconds += t.elapsed().as_secs_f64();
        Ok(logits?)
    }

    /// Processors (over the committed history), the grammar's mask and the sampler's next key
    /// on one position's logits, queued for evaluation.
    pub fn sample(&mut self, logits: &Array) -> Result<LazySample> {
        self.sample_after(logits, None)
    }

    /// [`sample`](Self::sample) for the position after `pending`, a sampled token not yet read
    /// back and not yet committed (the processors must all run ahead).
    pub fn sample_after(&mut self, logits: &Array, pending: Option<&Array>) -> Result<LazySample> {
        let t = Instant::now();
        let processed = match pending {
            Some(p) => apply_processors_ahead(&mut self.processors, &self.history, p, logits)?,
            None => apply_processors(&mut self.processors, &self.history, logits)?,
        };
        let masking = self.times.mask_seconds;
        let processed = self.masked(&processed)?;
        let mut sample = self.sampler.sample_lazy(&processed)?;
        sample.top = top_candidates(&sample.logprobs, self.top_logprobs)?;
        let mut outputs = vec![&sample.token, &sample.logprob, &sample.logprobs];
        if let Some(top) = &sample.top {
            outputs.extend(top.arrays());
        }
        async_eval(&outputs)?;
        // The mask's own time is `mask_seconds`.
        self.times.sample_seconds += t.elapsed().as_secs_f64() - (self.times.mask_seconds - masking);
        Ok(sample)
    }

    /// Reads a sampled token back (see [`read_sample`]). `ahead` counts the tokens between the
    /// last committed one and this one (for the step named in the error).
    pub fn read(&mut self, sample: LazySample, ahead: usize, from_draft: bool) -> Result<StepToken> {
        let t = Instant::now();
        let read = read_sample(sample, self.generated + ahead + 1, from_draft);
        self.times.wait_seconds += t.elapsed().as_secs_f64();
        read
    }

    /// Adds a token to the sequence: the processors' history, the prompt cache's record
    /// (it enters the KV cache when it is fed back) and the grammar.
    pub fn commit(&mut self, id: u32) -> Result<()> {
        if let Some(m) = self.constraint.as_mut() {
            m.consume(id)?;
        }
        self.commit_seen(id);
        Ok(())
    }

    /// [`Decoder::commit`] for a token the grammar has already consumed (a speculative round
    /// advances it while computing the masks of the drafts).
    pub fn commit_seen(&mut self, id: u32) {
        self.history.push(id);
        self.cache.record(id);
        self.generated += 1;
    }

    /// The last committed token (or the prompt's last token before any).
    pub fn last(&self) -> u32 {
        self.history.last().copied().unwrap_or(0)
    }
}

/// [`Decoder::masked`] over a grammar and time counters of the caller's.
pub fn mask(constraint: Option<&mut SequenceMatcher>, times: &mut HostTimes, logits: &Array) -> Result<Array> {
    let Some(m) = constraint else { return Ok(logits.clone()) };
    async_eval(&[logits])?;
    let t = Instant::now();
    let out = m.apply(logits);
    times.mask_seconds += t.elapsed().as_secs_f64();
    out
}

/// Reads a sampled token back, refusing non-finite logprobs: NaN logits sample as token 0 or
/// EOS, and saying so beats returning garbage. `step` is the generated token's number (from 1),
/// for the error.
pub fn read_sample(sample: LazySample, step: usize, from_draft: bool) -> Result<StepToken> {
    let token = sample.token.item::<u32>()?;
    let logprob = sample.logprob.item::<f32>()?;
    let LazySample { logprobs, top, .. } = sample;
    if logprob.is_nan() || logprob == f32::INFINITY {
        return Err(Error::Param {
            name: "model".into(),
            reason: format!(
                "the model's logits are not finite (NaN or inf) at generated token {step}: its weights or \
                 config (e.g. a norm eps, rope_theta or softcap of 0) give no usable output"
            ),
        });
    }
    Ok(StepToken { id: token, logprob, logprobs, from_draft, top, grammar_done: false })
}

/// One forward pass per token, run as mlx-lm's pipeline: step n+1's graph is built and queued
/// (async_eval) before step n's token is read, keeping the device busy while the host handles
/// text. The processors see token n as a device array then (`process_ahead`); one that needs
/// every token on the host makes each step wait for the previous token instead. With a
/// grammar only the forward runs ahead: step n+1's forward is queued before token n is read,
/// then token n advances the matcher and step n+1's mask is computed while the device runs
/// that forward (`Decoder::masked`).
pub struct PlainStepper<'a> {
    dec: Decoder<'a>,
    /// The sampled token not yet handed out; `None` when the next one must be computed from
    /// the last committed token first.
    current: Option<LazySample>,
    pipelined: bool,
    /// A grammar: the forward runs one step ahead, the mask and the sample do not.
    constrained: bool,
}

impl<'a> PlainStepper<'a> {
    /// Starts from the last prompt token's logits (`[vocab]`, from the prefill).
    pub fn new(mut dec: Decoder<'a>, first_logits: &Array) -> Result<PlainStepper<'a>> {
        let current = dec.sample(first_logits)?;
        let constrained = dec.constraint.is_some();
        let pipelined = all_run_ahead(&dec.processors) && !constrained;
        Ok(PlainStepper { dec, current: Some(current), pipelined, constrained })
    }
}

impl TokenStepper for PlainStepper<'_> {
    fn next(&mut self, remaining: usize) -> Result<StepToken> {
        let current = match self.current.take() {
            Some(c) => c,
            None => {
                let logits = self.dec.forward(&token_ids(&[self.dec.last()])?)?;
                self.dec.sample(&last_logits(&logits)?)?
            }
        };
        if self.constrained && remaining > 1 {
            let logits = last_logits(&self.dec.forward(&current.token.reshape(&[1, 1])?)?)?;
            async_eval(&[&logits])?;
            let mut token = self.dec.read(current, 0, false)?;
            self.dec.commit(token.id)?;
            token.grammar_done = self.dec.grammar_done();
            if !token.grammar_done {
                self.current = Some(self.dec.sample(&logits)?);
            }
            return Ok(token);
        }
        if self.pipelined && remaining > 1 {
            let logits = self.dec.forward(&current.token.reshape(&[1, 1])?)?;
            self.current = Some(self.dec.sample_after(&last_logits(&logits)?, Some(&current.token))?);
        }
        let mut token = self.dec.read(current, 0, false)?;
        self.dec.commit(token.id)?;
        token.grammar_done = self.dec.grammar_done();
        Ok(token)
    }

    fn host_times(&self) -> HostTimes {
        self.dec.times
    }
}
