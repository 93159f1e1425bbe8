//! The decode loop: prompt tokens -> prompt cache reuse -> chunked prefill -> (processors ->
//! sampler -> token -> detokenizer -> stop strings / EOS) per step -> streamed
//! [`GenerationResult`]s.
//!
//! It runs on the model's worker thread (see `model_kit`), which owns the model and its
//! [`PromptCache`], so consecutive requests reuse what the previous ones computed.

pub mod prefill;
pub mod result;

use std::sync::atomic::{AtomicBool, Ordering};

use mlx_engine_plugin_api::{async_eval, Array, DynModel, Input};
use serde_json::Value;

pub use prefill::{NoProgress, PromptProgress, DEFAULT_PREFILL_STEP_SIZE};
pub use result::{GenerationResult, StopCondition, StopReason, Token};

use crate::cache::prompt_cache::PromptCache;
use crate::cache::CacheConfig;
use crate::error::{Error, Result};
use crate::sample::{
    apply_processors, processors_for, top_logprobs, SampleOutput, Sampler, SamplingOverrides, SamplingParams,
};
use crate::stop::StopStrings;
use crate::tokenizer::{StreamingDetokenizer, Tokenizer};
use crate::vision::{self, FeatureMemo, ImageInput, ImageLimits, VisionModel};
use prefill::{last_logits, token_ids, Plan};

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
#[derive(Clone, Debug, Default, serde::Serialize)]
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
}

/// What a generation borrows from the model's worker besides the model: the cache it reuses
/// and fills, the prefill reporter, and what bounds a prefill chunk.
pub struct Session<'a> {
    pub cache: &'a mut PromptCache,
    pub progress: &'a mut dyn PromptProgress,
    /// The model's query heads, for [`prefill::chunk_size`]; `None` = chunks of the step size.
    pub attention_heads: Option<usize>,
    /// Image features seen before (vision models; `None` encodes every image).
    pub memo: Option<&'a mut FeatureMemo>,
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

/// Ends the text of a stream that stops for `reason`: the detokenizer's last bytes go through
/// the stop strings (they may still complete one, which then becomes the reason), and text held
/// back for a possible stop string is released rather than lost.
fn drain(
    detok: &mut StreamingDetokenizer,
    stops: &mut StopStrings,
    pending: &mut GenerationResult,
    reason: StopReason,
) -> Result<(StopReason, String)> {
    let out = stops.push(&detok.finish()?);
    pending.text.push_str(&out.text);
    match out.hit {
        Some(hit) => Ok((StopReason::StopString, hit.stop_string)),
        None => {
            pending.text.push_str(&stops.flush());
            Ok((reason, String::new()))
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
    let session = Session { cache: &mut cache, progress: &mut NoProgress, attention_heads: None, memo: None };
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
    let mut stops = StopStrings::new(req.stop_strings.clone())?;
    let mut processors = processors_for(&params)?;
    let mut sampler = Sampler::new(&params)?;
    let mut detok = StreamingDetokenizer::new(ctx.tokenizer.clone(), false);
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        seed: sampler.seed(),
        greedy: params.is_greedy(),
        ..Default::default()
    };
    let Session { cache, progress, attention_heads, memo } = session;
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
        Some((_, prepared, spans)) => vision::prompt::cache_key(&prompt, spans, prepared),
        None => prompt.clone(),
    };
    let spans: &[std::ops::Range<usize>] = images.as_ref().map_or(&[], |(_, _, s)| s);

    let mut work = || -> Result<()> {
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
        let plan = Plan { step, attention_heads, checkpoint };
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
        let t1 = std::time::Instant::now();
        let Some(logits) = done.logits else {
            emit(GenerationResult {
                stop_condition: Some(StopCondition {
                    reason: StopReason::UserCancelled,
                    stop_string: String::new(),
                    stop_tokens: Vec::new(),
                }),
                ..Default::default()
            });
            return Ok(());
        };

        // Without processors the next token needs no host-side history, so the loop runs
        // mlx-lm's pipeline: step n+1's graph is built and queued (async_eval) before step n's
        // token is read, keeping the device busy while the host handles text. With processors
        // each step waits for the previous token.
        let pipelined = processors.is_empty();
        let mut current = sampler.sample_lazy(&apply_processors(&mut processors, &prompt, &logits)?)?;
        async_eval(&[&current.token, &current.logprobs])?;
        let mut history = prompt.clone();
        let mut pending = GenerationResult::default();
        let finish =
            |pending: &mut GenerationResult, reason: StopReason, stop_string: String, stop_tokens: Vec<u32>| {
                let mut last = std::mem::take(pending);
                last.stop_condition = Some(StopCondition { reason, stop_string, stop_tokens });
                last
            };
        loop {
            if cancel.load(Ordering::Relaxed) {
                let (reason, stop_string) = drain(&mut detok, &mut stops, &mut pending, StopReason::UserCancelled)?;
                emit(finish(&mut pending, reason, stop_string, Vec::new()));
                break;
            }
            let mut next = None;
            if pipelined && stats.generated_tokens + 1 < budget {
                let step = ctx.model.forward(Input::Tokens(&current.token.reshape(&[1, 1])?), cache.live_mut())?;
                let sample = sampler.sample_lazy(&last_logits(&step)?)?;
                async_eval(&[&sample.token, &sample.logprobs])?;
                next = Some(sample);
            }
            let out = SampleOutput { token: current.token.item::<u32>()?, logprobs: current.logprobs.clone() };
            let id = out.token;
            let logprob = out.logprobs.take(&Array::from_slice(&[id as i32], &[1])?, 0)?.item::<f32>()?;
            if logprob.is_nan() || logprob == f32::INFINITY {
                // NaN logits sample as token 0 or EOS; saying so beats returning garbage.
                return Err(param(
                    "model",
                    format!(
                        "the model's logits are not finite (NaN or inf) at generated token {}: its weights or \
                         config (e.g. a norm eps, rope_theta or softcap of 0) give no usable output",
                        stats.generated_tokens + 1
                    ),
                ));
            }
            let token = Token { id, text: ctx.tokenizer.decode(&[id], false)?, logprob, from_draft: None };
            if params.top_logprobs > 0 {
                let alts = top_logprobs(&out.logprobs, params.top_logprobs)?
                    .into_iter()
                    .map(|(t, lp)| {
                        Ok(Token { id: t, text: ctx.tokenizer.decode(&[t], false)?, logprob: lp, from_draft: None })
                    })
                    .collect::<Result<Vec<_>>>()?;
                pending.top_logprobs.push(alts);
            }
            history.push(id);
            cache.record(id);
            stats.generated_tokens += 1;

            if !req.ignore_eos && ctx.tokenizer.is_eos(id) {
                let (reason, stop_string) = drain(&mut detok, &mut stops, &mut pending, StopReason::EosToken)?;
                let stop_string = if reason == StopReason::EosToken { token.text.clone() } else { stop_string };
                pending.tokens.push(token);
                emit(finish(&mut pending, reason, stop_string, vec![id]));
                break;
            }
            pending.tokens.push(token);
            let out = stops.push(&detok.push(id)?);
            pending.text.push_str(&out.text);
            if let Some(hit) = out.hit {
                let stop_tokens = pending.tokens.iter().map(|t| t.id).collect();
                emit(finish(&mut pending, StopReason::StopString, hit.stop_string, stop_tokens));
                break;
            }
            if stats.generated_tokens >= budget {
                let (reason, stop_string) = drain(&mut detok, &mut stops, &mut pending, StopReason::TokenLimit)?;
                emit(finish(&mut pending, reason, stop_string, Vec::new()));
                break;
            }
            if !pending.text.is_empty() && !emit(std::mem::take(&mut pending)) {
                break;
            }
            current = match next {
                Some(sample) => sample,
                None => {
                    let step = ctx.model.forward(Input::Tokens(&token_ids(&[id])?), cache.live_mut())?;
                    let processed = apply_processors(&mut processors, &history, &last_logits(&step)?)?;
                    let sample = sampler.sample_lazy(&processed)?;
                    async_eval(&[&sample.token, &sample.logprobs])?;
                    sample
                }
            };
        }
        stats.decode_seconds = t1.elapsed().as_secs_f64();
        Ok(())
    };
    let out = work();
    if out.is_err() {
        cache.discard_live();
    }
    out.map(|()| stats)
}
