//! The decode loop: prompt tokens -> prompt cache reuse -> chunked prefill -> tokens -> text ->
//! streamed [`GenerationResult`]s.
//!
//! Split as mlx-lm splits it: a token stepper (`step`: forward -> processors -> sampler, one
//! token per pass, or `crate::speculative`'s draft-and-verify rounds) yields committed token
//! ids with their logprobs, and the text stream above it (`stream`: detokenizer, stop
//! strings, EOS, token budget) turns them into results. Neither knows how the other works.
//!
//! It runs on the model's worker thread (see `model_kit`), which owns the model and its
//! [`PromptCache`], so consecutive requests reuse what the previous ones computed.

pub mod prefill;
pub mod result;
pub mod step;
pub mod stream;
pub mod warmup;

use std::sync::atomic::{AtomicBool, Ordering};

use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::DynModel;
use serde::Serialize;
use serde_json::Value;

pub use prefill::{NoProgress, PromptProgress, DEFAULT_PREFILL_STEP_SIZE};
pub use result::{GenerationResult, StopCondition, StopReason, Token};

use crate::cache::prompt_cache::PromptCache;
use crate::cache::CacheConfig;
use crate::constrain::{Constraint, ConstraintEnv, SequenceMatcher};
use crate::error::{Error, Result};
use crate::sample::{processors_for, Sampler, SamplingOverrides, SamplingParams};
use crate::speculative::lookup::PromptLookup;
use crate::speculative::model::DraftModel;
use crate::speculative::{Drafter, Speculation, SpeculativeStats, SpeculativeStepper, DEFAULT_NUM_DRAFT_TOKENS};
use crate::stop::StopStrings;
use crate::tokenizer::Tokenizer;
use crate::vision::{self, FeatureMemo, ImageInput, ImageLimits, VisionModel};
use prefill::{OutputHead, Plan};
pub use step::HostTimes;
use step::{Decoder, PlainStepper, TokenStepper};
use stream::{Pushed, TextStream};

/// One generation request over already tokenized prompt tokens.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    pub prompt_tokens: Vec<u32>,
    /// What the request set; the model's generation_config.json fills the rest.
    pub sampling: SamplingOverrides,
    /// At most this many new tokens; `None` = up to the model's context length.
    pub max_tokens: Option<usize>,
    pub stop_strings: Vec<String>,
    /// Keep generating through EOS / end-of-turn tokens (until max_tokens or a stop string).
    pub ignore_eos: bool,
    /// At most this many prompt tokens per prefill chunk (at least 1); `None` =
    /// [`DEFAULT_PREFILL_STEP_SIZE`]. Chunks also shrink as the context grows (see
    /// [`prefill::chunk_size`]).
    pub prefill_step_size: Option<usize>,
    /// Prefill the whole prompt even if a prefix is cached (for cold timings; the result is
    /// still cached for later requests).
    pub ignore_prompt_cache: bool,
    /// Images, in the order of their spans in `prompt_tokens` (expanded as
    /// `ModelKit::tokenize_chat` or `ModelKit::tokenize_with_images` do).
    pub images: Vec<ImageInput>,
    /// Images whose long side exceeds this are scaled down to it first (`--max-image-size`).
    pub max_image_size: Option<u32>,
    /// Speculative decoding: by default with the model kit's draft model when one is loaded.
    pub speculation: Speculation,
    /// Draft tokens per speculative round; `None` = [`DEFAULT_NUM_DRAFT_TOKENS`].
    pub num_draft_tokens: Option<usize>,
    /// Structured output: every token must keep the text inside this grammar, and the
    /// generation stops when the grammar is complete (see [`crate::constrain`]).
    pub constraint: Option<Constraint>,
}

/// What a generation needs from the loaded model.
pub struct GenContext<'a> {
    pub model: &'a dyn DynModel,
    pub tokenizer: &'a Tokenizer,
    pub generation_config: &'a Value,
    /// `max_position_embeddings`, when the config gives one.
    pub context_length: Option<usize>,
    /// The model's embedding rows (`vocab_size`), when known: prompt ids are checked against it.
    pub vocab_size: Option<usize>,
    /// The vision add-on of a vision-language model (or why it could not be built); `None` for
    /// a text-only model.
    pub vision: Option<&'a std::result::Result<VisionModel, String>>,
}

/// Summary of a finished generation, for hosts that print statistics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    /// Prompt tokens that came from the prompt cache (not prefilled).
    pub cached_tokens: usize,
    /// Prompt tokens this request ran through the model: all uncached ones, or fewer when the
    /// prefill was cancelled.
    pub prefilled_tokens: usize,
    /// The seed used (the request's, or the one drawn for it).
    pub seed: u64,
    /// Whether decoding was greedy (the seed then played no part).
    pub greedy: bool,
    /// Images of the prompt's uncached part whose features were computed, and those found in
    /// the feature memo (images in the cached part need neither).
    pub images_encoded: usize,
    pub images_from_memo: usize,
    /// What speculative decoding did, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeStats>,
    /// Why a request that would have decoded speculatively decoded plainly (a turn with
    /// images, which a draft model cannot see).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative_fallback: Option<String>,
    /// Where the host's time went during decoding.
    pub host: HostTimes,
}

/// What a generation borrows from the model's worker besides the model: the cache it reuses
/// and fills, the prefill reporter, and what bounds a prefill chunk.
pub struct Session<'a> {
    pub cache: &'a mut PromptCache,
    pub progress: &'a mut dyn PromptProgress,
    /// The model's query heads, for [`prefill::chunk_size`] on the CPU; `None` = chunks of the
    /// step size.
    pub attention_heads: Option<usize>,
    /// Where the model computes, which decides how its prefill runs ([`Plan::for_device`]).
    pub device: Device,
    /// Image features seen before (vision models; `None` encodes every image).
    pub memo: Option<&'a mut FeatureMemo>,
    /// The model kit's draft model, if one is loaded.
    pub draft: Option<&'a mut DraftModel>,
}

fn param(name: &str, reason: impl Into<String>) -> Error {
    Error::Param { name: name.into(), reason: reason.into() }
}

/// Checks the request and works out the prompt and the token budget, before any model work.
pub fn prepare(ctx: &GenContext<'_>, req: &GenerateRequest) -> Result<(Vec<u32>, usize, SamplingParams)> {
    let params = SamplingParams::with_generation_config(ctx.generation_config, &req.sampling);
    params.validate(ctx.tokenizer.vocab_size())?;
    let prompt = if req.prompt_tokens.is_empty() {
        match ctx.tokenizer.bos_token_id() {
            Some(bos) => vec![bos],
            None => {
                return Err(param("prompt", "the prompt is empty and the tokenizer has no BOS token to start from"))
            }
        }
    } else {
        req.prompt_tokens.clone()
    };
    crate::model::check_token_ids("prompt", &prompt, ctx.vocab_size)?;
    req.speculation.validate(req.num_draft_tokens)?;
    if req.max_tokens == Some(0) {
        return Err(param("max_tokens", "must be at least 1"));
    }
    let budget = match (ctx.context_length, req.max_tokens) {
        (Some(ctx_len), max) => {
            let want = prompt.len() + max.unwrap_or(0);
            if prompt.len() >= ctx_len || want > ctx_len {
                // A prompt of exactly the context length is not "more than" it; it leaves no room.
                let relation = if want > ctx_len { "more than" } else { "which leaves no room for new tokens in" };
                // Without max_tokens the prompt alone is too long: blame it, not a limit never set.
                return Err(param(
                    if max.is_some() { "max_tokens" } else { "prompt" },
                    format!(
                        "the prompt has {} tokens{}, {relation} the model's context length of {ctx_len}",
                        prompt.len(),
                        max.map(|m| format!(" and max_tokens is {m} (together {want})")).unwrap_or_default()
                    ),
                ));
            }
            max.unwrap_or(ctx_len - prompt.len())
        }
        (None, max) => max.unwrap_or(usize::MAX),
    };
    Ok((prompt, budget, params))
}

/// Compiles the request's grammar over the model's vocabulary (`None` without one); a bad
/// grammar is an error naming the parameter it came from.
pub fn compile_constraint(ctx: &GenContext<'_>, req: &GenerateRequest) -> Result<Option<SequenceMatcher>> {
    let Some(c) = &req.constraint else { return Ok(None) };
    let env = ConstraintEnv::for_tokenizer(ctx.tokenizer, ctx.vocab_size, &c.param)?;
    Ok(Some(c.compile(&env)?))
}

/// Which stepper a generation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    Plain,
    Model,
    Lookup(usize, usize),
}

/// The only result of a generation cancelled before its first token.
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

/// The decode loop proper: tokens from `stepper` into `stream` until it ends, the request is
/// cancelled (checked between tokens) or the receiver is gone.
fn decode(
    stepper: &mut dyn TokenStepper,
    stream: &mut TextStream<'_>,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(GenerationResult) -> bool,
) -> Result<HostTimes> {
    let mut text = 0.0;
    let done = |stepper: &dyn TokenStepper, text: f64| HostTimes { text_seconds: text, ..stepper.host_times() };
    loop {
        if cancel.load(Ordering::Relaxed) {
            emit(stream.cancel()?);
            return Ok(done(stepper, text));
        }
        let token = stepper.next(stream.remaining())?;
        let t = std::time::Instant::now();
        let go_on = match stream.push(token)? {
            Pushed::Held => true,
            Pushed::Chunk(r) => emit(r),
            Pushed::Done(r) => {
                emit(r);
                false
            }
        };
        text += t.elapsed().as_secs_f64();
        if !go_on {
            return Ok(done(stepper, text));
        }
    }
}

/// Runs one generation on a fresh cache that is dropped afterwards (no reuse, no progress
/// reports); see [`generate_in`].
pub fn generate(
    ctx: &GenContext<'_>,
    req: &GenerateRequest,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(GenerationResult) -> bool,
) -> Result<GenerationStats> {
    let mut cache = PromptCache::new(ctx.model.cache_layout(), CacheConfig::default(), 0)?;
    let session = Session {
        cache: &mut cache,
        progress: &mut NoProgress,
        attention_heads: None,
        device: Device::default_device(),
        memo: None,
        draft: None,
    };
    generate_in(ctx, session, req, cancel, emit)
}

/// Runs one generation, reusing and filling `session.cache`, handing each result to `emit`
/// (which returns false when the receiver is gone). Ends with exactly one result carrying the
/// stop condition; a cancelled prefill ends with `user_cancelled` and leaves the partly
/// filled cache for the next request. The request is checked before any model work; after an
/// error mid-way the live cache is discarded, since its layers may disagree.
pub fn generate_in(
    ctx: &GenContext<'_>,
    session: Session<'_>,
    req: &GenerateRequest,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(GenerationResult) -> bool,
) -> Result<GenerationStats> {
    let (prompt, budget, params) = prepare(ctx, req)?;
    let step = prefill::step_size(req.prefill_step_size)?;
    let stops = StopStrings::new(req.stop_strings.clone())?;
    let processors = processors_for(&params)?;
    let sampler = Sampler::new(&params)?;
    let mut constraint = compile_constraint(ctx, req)?;
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        seed: sampler.seed(),
        greedy: params.is_greedy(),
        ..Default::default()
    };
    let Session { cache, progress, attention_heads, device, memo, mut draft } = session;
    if req.speculation == Speculation::DraftModel && draft.is_none() {
        return Err(param(
            "speculation",
            "the request asks for the draft model, but none is loaded (ModelKit::load_draft_model, --draft-model)",
        ));
    }
    // Time to first token includes decoding and preprocessing the images.
    let t0 = std::time::Instant::now();
    let mut own_memo = FeatureMemo::new(0);
    let memo = memo.unwrap_or(&mut own_memo);
    let images = match (req.images.is_empty(), ctx.vision) {
        (true, _) => None,
        (false, Some(Ok(v))) => {
            let limits = ImageLimits { max_image_size: req.max_image_size, ..Default::default() };
            let prepared = vision::prompt::prepare_images(v, &req.images, &limits)?;
            let spans = vision::prompt::find_spans(&prompt, &prepared, ctx.tokenizer)?;
            Some((v, prepared, spans))
        }
        (false, Some(Err(why))) => return Err(param("images", format!("this model cannot take images: {why}"))),
        (false, None) => {
            return Err(param("images", "this is a text-only model (its config.json has no vision_config)"))
        }
    };
    // The prompt cache sees image tokens as ids derived from each image's content.
    let key = match &images {
        Some((v, prepared, spans)) => vision::prompt::cache_key(ctx.model, v, &prompt, spans, prepared)?,
        None => prompt.clone(),
    };
    let spans: &[std::ops::Range<usize>] = images.as_ref().map_or(&[], |(_, _, s)| s);

    let work = || -> Result<()> {
        let mut cached = cache.prepare(&key, !req.ignore_prompt_cache)?;
        let outside = vision::prompt::outside_spans(cached, spans);
        if outside != cached {
            cached = cache.limit_live(outside)?;
        }
        stats.cached_tokens = cached;
        let checkpoint = cache
            .checkpoint_at(prompt.len(), cached)
            .map(|at| vision::prompt::outside_spans(at, spans))
            .filter(|&at| at > cached);
        let plan =
            Plan::for_device(device, step, attention_heads, checkpoint, OutputHead::of(ctx.model, ctx.vocab_size));
        let embeddings = match &images {
            Some((v, prepared, spans)) => {
                let (hits, encodes) = (memo.hits, memo.encodes);
                let e = vision::prompt::embeddings(ctx.model, v, memo, &prompt, cached, spans, prepared)?;
                stats.images_from_memo = memo.hits - hits;
                stats.images_encoded = memo.encodes - encodes;
                Some(e)
            }
            None => None,
        };
        let done = prefill::prefill_from(
            ctx.model,
            cache.live_mut(),
            &prompt,
            embeddings.as_ref(),
            cached,
            &plan,
            progress,
            cancel,
        )?;
        if let (Some(at), Some(snapshot)) = (plan.checkpoint, done.checkpoint) {
            cache.store_checkpoint(at, snapshot);
        }
        stats.prompt_seconds = t0.elapsed().as_secs_f64();
        stats.prefilled_tokens = done.processed + usize::from(done.logits.is_some());
        let Some(logits) = done.logits else {
            emit(cancelled());
            return Ok(());
        };

        // A draft model sees token ids only: images it has not seen in the cached part would
        // be placeholders to it, so such a turn decodes plainly (ADR 0004).
        let mut how = match (&req.speculation, draft.is_some()) {
            // A missing draft model was refused above.
            (Speculation::Off, _) | (Speculation::Auto | Speculation::DraftModel, false) => How::Plain,
            (Speculation::Auto | Speculation::DraftModel, true) => How::Model,
            (Speculation::PromptLookup { min_ngram, max_ngram }, _) => How::Lookup(*min_ngram, *max_ngram),
        };
        if how != How::Plain && spans.iter().any(|s| s.end > cached) {
            stats.speculative_fallback = Some("the turn has images, which a drafter cannot see".into());
            how = How::Plain;
        }
        let mut draft_cached = 0;
        let mut model_drafter = match (&how, draft.as_deref_mut()) {
            (How::Model, Some(d)) => {
                let Some(c) = d.prefill(&prompt, !req.ignore_prompt_cache, step, progress, cancel)? else {
                    emit(cancelled());
                    return Ok(());
                };
                draft_cached = c;
                Some(d.drafter(prompt.len()))
            }
            _ => None,
        };
        stats.prompt_seconds = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();

        let mut decoder =
            Decoder::new(ctx.model, &mut *cache, sampler, processors, &prompt).with_constraint(constraint.take());
        decoder.top_logprobs = params.top_logprobs;
        let speculative = how != How::Plain;
        let mut stream =
            TextStream::new(ctx.tokenizer, stops, params.top_logprobs, req.ignore_eos, budget, speculative);
        let mut lookup = match how {
            How::Lookup(min, max) => Some(PromptLookup::new(min, max)),
            _ => None,
        };
        let drafter: Option<&mut dyn Drafter> = match (model_drafter.as_mut(), lookup.as_mut()) {
            (Some(d), _) => Some(d),
            (None, Some(l)) => Some(l),
            (None, None) => None,
        };
        match drafter {
            None => stats.host = decode(&mut PlainStepper::new(decoder, &logits)?, &mut stream, cancel, emit)?,
            Some(drafter) => {
                let k = req.num_draft_tokens.unwrap_or(DEFAULT_NUM_DRAFT_TOKENS);
                let mut stepper = SpeculativeStepper::new(decoder, &logits, drafter, k, ctx.vocab_size)?;
                stats.host = decode(&mut stepper, &mut stream, cancel, emit)?;
                stats.speculative = Some(SpeculativeStats { draft_cached_tokens: draft_cached, ..stepper.stats() });
            }
        }
        stats.generated_tokens = stream.generated();
        stats.decode_seconds = t1.elapsed().as_secs_f64();
        Ok(())
    };
    let out = work();
    if out.is_err() {
        cache.discard_live();
        if let Some(d) = draft {
            d.cache.discard_live();
        }
    }
    out.map(|()| stats)
}
