//! The decode loop: prompt tokens -> prefill -> (processors -> sampler -> token -> detokenizer ->
//! stop strings / EOS) per step -> streamed [`GenerationResult`]s.
//!
//! It runs on the model's worker thread (see `model_kit`), which owns the model and its cache.

pub mod result;

use std::sync::atomic::{AtomicBool, Ordering};

use mlx_engine_plugin_api::{Array, Dtype, DynModel, Input};
use serde_json::Value;

pub use result::{GenerationResult, StopCondition, StopReason, Token};

use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::sample::{apply_processors, processors_for, top_logprobs, Sampler, SamplingOverrides, SamplingParams};
use crate::stop::StopStrings;
use crate::tokenizer::{StreamingDetokenizer, Tokenizer};

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
}

/// What a generation needs from the loaded model.
pub struct GenContext<'a> {
    pub model: &'a dyn DynModel,
    pub tokenizer: &'a Tokenizer,
    pub generation_config: &'a Value,
    /// `max_position_embeddings`, when the config gives one.
    pub context_length: Option<usize>,
}

/// Summary of a finished generation, for hosts that print statistics.
#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    /// The seed used (the request's, or the one drawn for it).
    pub seed: u64,
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
            None => return Err(param("prompt", "the prompt is empty and the tokenizer has no BOS token to start from")),
        }
    } else {
        req.prompt_tokens.clone()
    };
    if req.max_tokens == Some(0) {
        return Err(param("max_tokens", "must be at least 1"));
    }
    let budget = match (ctx.context_length, req.max_tokens) {
        (Some(ctx_len), max) => {
            let want = prompt.len() + max.unwrap_or(0);
            if prompt.len() >= ctx_len || want > ctx_len {
                // A prompt of exactly the context length is not "more than" it; it leaves no room.
                let relation = if want > ctx_len { "more than" } else { "which leaves no room for new tokens in" };
                return Err(param(
                    "max_tokens",
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

/// The logits of the last position of `[1, L, vocab]`, as `[vocab]` f32.
fn last_logits(logits: &Array) -> Result<Array> {
    let l = logits.dim(1)?;
    Ok(logits.slice_axis(1, l - 1, l)?.reshape(&[-1])?.astype(Dtype::F32)?)
}

fn token_ids(tokens: &[u32]) -> Result<Array> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    Ok(Array::from_slice(&ids, &[1, ids.len() as i32])?)
}

/// Fills the cache with all but the last prompt token, evaluating only the cache (the logits
/// of those positions are never needed, and for large vocabularies they are much of the
/// work), then returns the last token's logits.
fn prefill(model: &dyn DynModel, cache: &mut KvCache, prompt: &[u32]) -> Result<Array> {
    let (head, last) = prompt.split_at(prompt.len() - 1);
    if !head.is_empty() {
        let _unused_logits = model.forward(Input::Tokens(&token_ids(head)?), cache)?;
        mlx_engine_plugin_api::eval(&cache.state())?;
    }
    let logits = last_logits(&model.forward(Input::Tokens(&token_ids(last)?), cache)?)?;
    logits.eval()?;
    Ok(logits)
}

/// Runs one generation, handing each result to `emit` (which returns false when the
/// receiver is gone). Ends with exactly one result carrying the stop condition.
pub fn generate(
    ctx: &GenContext<'_>,
    req: &GenerateRequest,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(GenerationResult) -> bool,
) -> Result<GenerationStats> {
    let (prompt, budget, params) = prepare(ctx, req)?;
    let mut stops = StopStrings::new(req.stop_strings.clone())?;
    let mut processors = processors_for(&params)?;
    let mut sampler = Sampler::new(&params)?;
    let mut detok = StreamingDetokenizer::new(ctx.tokenizer.clone(), false);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), seed: sampler.seed(), ..Default::default() };

    let mut cache = KvCache::new(ctx.model.cache_layout());
    let t0 = std::time::Instant::now();
    let mut logits = prefill(ctx.model, &mut cache, &prompt)?;
    stats.prompt_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();

    let mut history = prompt.clone();
    let mut pending = GenerationResult::default();
    let finish = |pending: &mut GenerationResult, reason: StopReason, stop_string: String, stop_tokens: Vec<u32>| {
        let mut last = std::mem::take(pending);
        last.stop_condition = Some(StopCondition { reason, stop_string, stop_tokens });
        last
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            pending.text.push_str(&detok.finish()?);
            pending.text.push_str(&stops.flush());
            emit(finish(&mut pending, StopReason::UserCancelled, String::new(), Vec::new()));
            break;
        }
        let processed = apply_processors(&mut processors, &history, &logits)?;
        let out = sampler.sample(&processed)?;
        let id = out.token;
        let logprob = out.logprobs.take(&Array::from_slice(&[id as i32], &[1])?, 0)?.item::<f32>()?;
        let token = Token { id, text: ctx.tokenizer.decode(&[id], false)?, logprob, from_draft: None };
        if params.top_logprobs > 0 {
            let alts = top_logprobs(&out.logprobs, params.top_logprobs)?
                .into_iter()
                .map(|(t, lp)| Ok(Token { id: t, text: ctx.tokenizer.decode(&[t], false)?, logprob: lp, from_draft: None }))
                .collect::<Result<Vec<_>>>()?;
            pending.top_logprobs.push(alts);
        }
        history.push(id);
        stats.generated_tokens += 1;

        if !req.ignore_eos && ctx.tokenizer.is_eos(id) {
            pending.text.push_str(&detok.finish()?);
            pending.text.push_str(&stops.flush());
            let text = token.text.clone();
            pending.tokens.push(token);
            emit(finish(&mut pending, StopReason::EosToken, text, vec![id]));
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
            pending.text.push_str(&stops.push(&detok.finish()?).text);
            pending.text.push_str(&stops.flush());
            emit(finish(&mut pending, StopReason::TokenLimit, String::new(), Vec::new()));
            break;
        }
        if !pending.text.is_empty() && !emit(std::mem::take(&mut pending)) {
            break;
        }
        logits = last_logits(&ctx.model.forward(Input::Tokens(&token_ids(&[id])?), &mut cache)?)?;
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();
    Ok(stats)
}
