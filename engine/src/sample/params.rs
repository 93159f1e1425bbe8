//! Sampling parameters of one request: defaults, validation, and merging with a model's
//! `generation_config.json`.
//!
//! Defaults mirror mlx-engine's `create_generator`: every unset knob disables its filter and an
//! unset temperature means greedy decoding, so a request that says nothing is deterministic.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The most `top_logprobs` a request may ask for (OpenAI's limit; mlx-engine allows 10).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The repetition-penalty window mlx-lm and mlx-engine use when none is given.
pub const DEFAULT_REPETITION_CONTEXT_SIZE: usize = 20;

/// Everything that decides how one request turns logits into tokens.
///
/// Deserializes from a request object (`temperature` is accepted for `temp`); a missing or
/// `null` field takes its default, like mlx-engine's `None` kwargs. Unknown keys are ignored,
/// since a request body carries other fields too.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "SamplingOverrides")]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy argmax.
    pub temp: f32,
    /// Nucleus sampling mass in (0, 1); 0 and 1 disable it.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the best one; 0 disables it.
    pub min_p: f32,
    /// The min-p filter never keeps fewer than this many tokens (it does not affect the others).
    pub min_tokens_to_keep: usize,
    /// Keep only the `top_k` most likely tokens; 0 (or a value >= the vocabulary) disables it.
    pub top_k: i32,
    /// A fixed seed makes the request reproducible; `None` draws one (see `Sampler::seed`).
    pub seed: Option<u64>,
    /// mlx-lm's repetition penalty (> 0); `None` or 1 disables it.
    pub repetition_penalty: Option<f32>,
    /// How many of the most recent tokens (prompt included) the repetition penalty looks at;
    /// 0 means the whole history.
    pub repetition_context_size: usize,
    /// OpenAI presence penalty in [-2, 2]: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2]: subtracted once per earlier occurrence.
    pub frequency_penalty: f32,
    /// How many of the most recent *generated* tokens the presence and frequency penalties
    /// count; 0 (the default) means all of them, as OpenAI does.
    pub penalty_context_size: usize,
    /// Added to the logits of the given token ids.
    pub logit_bias: BTreeMap<u32, f32>,
    /// How many alternatives to report per token (at most [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temp: 0.0,
            top_p: 0.0,
            min_p: 0.0,
            min_tokens_to_keep: 1,
            top_k: 0,
            seed: None,
            repetition_penalty: None,
            repetition_context_size: DEFAULT_REPETITION_CONTEXT_SIZE,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_context_size: 0,
            logit_bias: BTreeMap::new(),
            top_logprobs: 0,
        }
    }
}

/// The same knobs as [`SamplingParams`], each optional: what a request actually set.
///
/// Keeping "unset" apart from "set to the default" is what lets a model's
/// `generation_config.json` fill the gaps without overriding anything the client chose.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SamplingOverrides {
    #[serde(default, alias = "temperature")]
    pub temp: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub min_tokens_to_keep: Option<usize>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub repetition_context_size: Option<usize>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub penalty_context_size: Option<usize>,
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<u32, f32>>,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
}

impl SamplingOverrides {
    /// The sampling defaults a model ships in `generation_config.json`.
    ///
    /// Reads `temperature`, `top_p`, `top_k`, `min_p` and `repetition_penalty`. `do_sample:
    /// false` means greedy decoding in Transformers, so it forces `temp` 0 and drops the
    /// filters, keeping only the repetition penalty (which Transformers applies to greedy
    /// search too). Values of the wrong type or out of range are ignored with a warning: a
    /// model's bad default should not make every request fail validation.
    pub fn from_generation_config(config: &Value) -> SamplingOverrides {
        let num = |key: &str, ok: fn(f64) -> bool| -> Option<f32> {
            let v = config.get(key)?;
            match v.as_f64() {
                Some(x) if ok(x) => Some(x as f32),
                _ if v.is_null() => None,
                _ => {
                    crate::diagnostics::warn_once(format!(
                        "generation_config.json: ignoring `{key}` = {v} (not a valid value)"
                    ));
                    None
                }
            }
        };
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let mut out = SamplingOverrides {
            temp: num("temperature", |x| x.is_finite() && x >= 0.0),
            top_p: num("top_p", unit),
            min_p: num("min_p", unit),
            top_k: num("top_k", |x| x >= 0.0 && x.fract() == 0.0 && x <= i32::MAX as f64).map(|x| x as i32),
            repetition_penalty: num("repetition_penalty", |x| x.is_finite() && x > 0.0),
            ..SamplingOverrides::default()
        };
        if config.get("do_sample").and_then(Value::as_bool) == Some(false) {
            out =
                SamplingOverrides { temp: Some(0.0), repetition_penalty: out.repetition_penalty, ..Default::default() };
        }
        out
    }

    /// Writes every field that is set onto `params`.
    pub fn apply_to(&self, params: &mut SamplingParams) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        set(&mut params.temp, &self.temp);
        set(&mut params.top_p, &self.top_p);
        set(&mut params.min_p, &self.min_p);
        set(&mut params.min_tokens_to_keep, &self.min_tokens_to_keep);
        set(&mut params.top_k, &self.top_k);
        if self.seed.is_some() {
            params.seed = self.seed;
        }
        if self.repetition_penalty.is_some() {
            params.repetition_penalty = self.repetition_penalty;
        }
        set(&mut params.repetition_context_size, &self.repetition_context_size);
        set(&mut params.presence_penalty, &self.presence_penalty);
        set(&mut params.frequency_penalty, &self.frequency_penalty);
        set(&mut params.penalty_context_size, &self.penalty_context_size);
        set(&mut params.logit_bias, &self.logit_bias);
        set(&mut params.top_logprobs, &self.top_logprobs);
    }
}

impl From<SamplingOverrides> for SamplingParams {
    fn from(o: SamplingOverrides) -> Self {
        let mut p = SamplingParams::default();
        o.apply_to(&mut p);
        p
    }
}

fn param(name: &str, reason: String) -> Error {
    Error::Param { name: name.to_string(), reason }
}

impl SamplingParams {
    /// Defaults, then the model's `generation_config.json`, then the request: the request wins
    /// wherever it set a value.
    pub fn with_generation_config(generation_config: &Value, overrides: &SamplingOverrides) -> SamplingParams {
        let mut p = SamplingParams::default();
        SamplingOverrides::from_generation_config(generation_config).apply_to(&mut p);
        overrides.apply_to(&mut p);
        p
    }

    /// Whether sampling reduces to argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temp == 0.0
    }

    /// Checks every value against its allowed range, and the logit-bias ids against the
    /// vocabulary, so a bad request fails before any work with a message that names the
    /// parameter and the range. NaN fails every check (the comparisons are written so).
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        self.validate_ranges()?;
        for (&id, &bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(param(
                    "logit_bias",
                    format!(
                        "token id {id} is out of range for a vocabulary of {vocab_size} tokens (ids 0 to {})",
                        vocab_size.saturating_sub(1)
                    ),
                ));
            }
            if !bias.is_finite() {
                return Err(param("logit_bias", format!("the bias of token {id} must be a finite number, got {bias}")));
            }
        }
        Ok(())
    }

    /// The checks that need no vocabulary (the sampler runs these on construction).
    pub fn validate_ranges(&self) -> Result<()> {
        let unit = |x: f32| (0.0..=1.0).contains(&x);
        if !(self.temp.is_finite() && self.temp >= 0.0) {
            return Err(param("temp", format!("must be a finite number >= 0 (0 = greedy), got {}", self.temp)));
        }
        if !unit(self.top_p) {
            return Err(param("top_p", format!("must be in [0, 1] (0 or 1 disables it), got {}", self.top_p)));
        }
        if !unit(self.min_p) {
            return Err(param("min_p", format!("must be in [0, 1] (0 disables it), got {}", self.min_p)));
        }
        if self.min_tokens_to_keep < 1 {
            return Err(param("min_tokens_to_keep", format!("must be >= 1, got {}", self.min_tokens_to_keep)));
        }
        if self.top_k < 0 {
            return Err(param("top_k", format!("must be >= 0 (0 disables it), got {}", self.top_k)));
        }
        if let Some(p) = self.repetition_penalty {
            if !(p.is_finite() && p > 0.0) {
                return Err(param(
                    "repetition_penalty",
                    format!("must be a finite number > 0 (1 disables it), got {p}"),
                ));
            }
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(param(name, format!("must be in [-2, 2], got {v}")));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(param(
                "top_logprobs",
                format!("must be in [0, {MAX_TOP_LOGPROBS}], got {}", self.top_logprobs),
            ));
        }
        Ok(())
    }
}
