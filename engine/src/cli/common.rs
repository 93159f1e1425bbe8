//! Arguments and helpers shared by the model-running subcommands.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mlx_engine_plugin_api::runtime::{peak_memory, Device};

use crate::cache::CacheConfig;
use crate::distributed::{Group, Split};
use crate::error::{Error, Result};
use crate::generate::{GenerationStats, PromptProgress, DEFAULT_PREFILL_STEP_SIZE};
use crate::model::DtypeChoice;
use crate::model_kit::{LoadOptions, ModelKit};
use crate::plugin_host::HostOptions;
use crate::sample::SamplingOverrides;
use crate::speculative::{Speculation, SpeculativeStats, DEFAULT_NGRAM_MAX, DEFAULT_NGRAM_MIN};
use crate::tokenizer::ChatTemplate;

/// Which model to load and how.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model folder (config.json, safetensors, tokenizer files), a .gguf file, or a Hugging
    /// Face repository id (`org/name`): from the local Hugging Face cache, downloaded into it
    /// from $HF_ENDPOINT (huggingface.co) when missing, unless HF_HUB_OFFLINE=1.
    #[arg(short, long)]
    pub model: PathBuf,
    /// The revision of a repository id: a branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// With a repository id: the .gguf file to use from it (for a repository of several).
    #[arg(long, value_name = "FILE")]
    pub hf_file: Option<String>,
    /// Compute dtype: auto = f32 on cpu, the checkpoint's dtype on gpu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub dtype: String,
    /// Where MLX computes: the CPU, or the GPU (an MLX build with CUDA or Metal).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    pub device: String,
    #[command(flatten)]
    pub plugins: super::plugins::PluginsArgs,
}

/// KV cache and prefill settings. Numbers are read as signed integers so that a negative value
/// gets an error naming the flag rather than a parse failure.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CacheArgs {
    /// Bound each full-attention layer's KV cache to N positions (the first 4 and the most
    /// recent ones; a rotating cache).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_kv_size: Option<i64>,
    /// Store the KV cache quantized to this many bits: 2, 3, 4, 6 or 8.
    #[arg(long, value_name = "BITS", allow_negative_numbers = true)]
    pub kv_bits: Option<i64>,
    /// Group size of the KV quantization: 32, 64 (default) or 128; needs --kv-bits.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub kv_group_size: Option<i64>,
    /// Quantize a layer's cache once it holds N positions (default 0); needs --kv-bits.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub quantized_kv_start: Option<i64>,
    /// At most N prompt tokens per prefill chunk (default 2048; on the CPU chunks also shrink as the
    /// context grows, to bound the attention scores).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub prefill_step_size: Option<i64>,
}

impl CacheArgs {
    /// The cache configuration the flags ask for, validated (without the model: the head
    /// dimension is checked at load).
    pub fn config(&self) -> Result<CacheConfig> {
        let mut c = CacheConfig::default();
        if self.kv_bits.is_none() {
            // As mlx-engine does: a setting that would be silently ignored is a mistake.
            for (flag, set) in [
                ("--kv-group-size", self.kv_group_size.is_some()),
                ("--quantized-kv-start", self.quantized_kv_start.is_some()),
            ] {
                if set {
                    return Err(param(flag, "only applies to a quantized KV cache; pass --kv-bits too"));
                }
            }
        }
        let int = |flag: &str, v: i64| i32::try_from(v).map_err(|_| param(flag, format!("{v} is out of range")));
        c.kv_bits = self.kv_bits.map(|v| int("--kv-bits", v)).transpose()?;
        if let Some(g) = self.kv_group_size {
            c.kv_group_size = int("--kv-group-size", g)?;
        }
        if let Some(s) = self.quantized_kv_start {
            c.quantized_kv_start =
                usize::try_from(s).map_err(|_| param("--quantized-kv-start", format!("must be >= 0, got {s}")))?;
        }
        if let Some(m) = self.max_kv_size {
            // Values from 0 up are the library's to judge (it knows the smallest usable size).
            c.max_kv_size = Some(usize::try_from(m).map_err(|_| {
                param("--max-kv-size", format!("must be at least {}, got {m}", crate::cache::KEEP + 1))
            })?);
        }
        c.validate()?;
        Ok(c)
    }

    /// `--prefill-step-size`, checked (`None` = the default).
    pub fn prefill_step_size(&self) -> Result<Option<usize>> {
        self.prefill_step_size
            .map(|v| {
                usize::try_from(v)
                    .ok()
                    .filter(|&v| v >= 1)
                    .ok_or_else(|| param("--prefill-step-size", format!("must be at least 1, got {v}")))
            })
            .transpose()
    }
}

/// Sampling and stopping.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy. Default: the model's generation_config.json, else 0.
    #[arg(long, allow_negative_numbers = true)]
    pub temp: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (0 or 1 =
    /// off). Default: generation_config.json, else off.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens (0 = off). Default: generation_config.json, else off.
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i32>,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Random seed for sampling (default: drawn at random and printed with the stats).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Divide the logits of tokens seen in the last --repetition-context-size tokens by this
    /// (> 1 discourages repeats; 1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// How many recent tokens the repetition penalty looks at (default 20).
    #[arg(long)]
    pub repetition_context_size: Option<usize>,
    /// Subtract this from the logit of every token already generated (OpenAI's; -2 to 2).
    #[arg(long, allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,
    /// Subtract this times its count from the logit of every generated token (-2 to 2).
    #[arg(long, allow_negative_numbers = true)]
    pub frequency_penalty: Option<f32>,
    /// Alternatives to report per token (jsonl output), at most 20.
    #[arg(long)]
    pub top_logprobs: Option<usize>,
    /// Stop after this many new tokens (default: until EOS or the model's context is full).
    #[arg(short = 'n', long)]
    pub max_tokens: Option<usize>,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Keep going through end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_name = "JSON")]
    pub chat_template_args: Option<String>,
}

impl SamplingArgs {
    /// The range checks that need no model, so a bad flag fails before a long load.
    pub fn check(&self) -> Result<()> {
        crate::sample::SamplingParams::with_generation_config(&serde_json::Value::Null, &self.overrides())
            .validate_ranges()?;
        crate::stop::StopStrings::new(self.stop.clone())?;
        Ok(())
    }

    pub fn overrides(&self) -> SamplingOverrides {
        SamplingOverrides {
            temp: self.temp,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            repetition_context_size: self.repetition_context_size,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            top_logprobs: self.top_logprobs,
            ..Default::default()
        }
    }

    pub fn template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template.as_deref().map(ChatTemplate::from_file).transpose()
    }

    pub fn template_args(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        match &self.chat_template_args {
            None => Ok(Default::default()),
            Some(text) => match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(m)) => Ok(m),
                Ok(_) => Err(param("chat-template-args", "expected a JSON object")),
                Err(e) => Err(param("chat-template-args", format!("invalid JSON: {e}"))),
            },
        }
    }
}

/// Speculative decoding: a draft model, or prompt lookup.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DraftArgs {
    /// A draft model (folder or .gguf) with the main model's vocabulary: it guesses tokens
    /// that the main model verifies several at a time (speculative decoding).
    #[arg(long, value_name = "PATH", conflicts_with = "draft")]
    pub draft_model: Option<PathBuf>,
    /// A drafter that needs no second model: `prompt-lookup` guesses what followed the latest
    /// earlier occurrence of the last few tokens (for editing, summarising, code).
    #[arg(long, value_parser = ["prompt-lookup"])]
    pub draft: Option<String>,
    /// Draft tokens per speculative round (default 3).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub num_draft_tokens: Option<i64>,
    /// Shortest n-gram prompt lookup matches (default 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub lookup_ngram_min: Option<i64>,
    /// Longest n-gram prompt lookup matches, tried first (default 3).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub lookup_ngram_max: Option<i64>,
}

impl DraftArgs {
    /// The request's speculation setting and draft length, checked (without the model).
    pub fn speculation(&self) -> Result<(Speculation, Option<usize>)> {
        let count = |flag: &str, v: i64| usize::try_from(v).map_err(|_| param(flag, format!("must be >= 1, got {v}")));
        let lookup = self.draft.as_deref() == Some("prompt-lookup");
        if !lookup {
            for (flag, set) in [
                ("--lookup-ngram-min", self.lookup_ngram_min.is_some()),
                ("--lookup-ngram-max", self.lookup_ngram_max.is_some()),
            ] {
                if set {
                    return Err(param(flag, "only applies to --draft prompt-lookup"));
                }
            }
        }
        if self.num_draft_tokens.is_some() && !lookup && self.draft_model.is_none() {
            return Err(param("--num-draft-tokens", "only applies with --draft-model or --draft prompt-lookup"));
        }
        let k = self.num_draft_tokens.map(|v| count("--num-draft-tokens", v)).transpose()?;
        let speculation = if lookup {
            let min = self.lookup_ngram_min.map(|v| count("--lookup-ngram-min", v)).transpose()?;
            let max = self.lookup_ngram_max.map(|v| count("--lookup-ngram-max", v)).transpose()?;
            let min_ngram = min.unwrap_or(DEFAULT_NGRAM_MIN);
            Speculation::PromptLookup { min_ngram, max_ngram: max.unwrap_or(DEFAULT_NGRAM_MAX.max(min_ngram)) }
        } else if self.draft_model.is_some() {
            Speculation::DraftModel
        } else {
            Speculation::Off
        };
        speculation.validate(k).map_err(|e| match e {
            Error::Param { name, reason } => param(&format!("--{}", cli_flag(&name)), reason),
            e => e,
        })?;
        Ok((speculation, k))
    }

    /// Loads `--draft-model` into `kit`, saying so on stderr.
    pub fn load_into(&self, kit: &ModelKit) -> Result<()> {
        let Some(path) = &self.draft_model else { return Ok(()) };
        let t = Instant::now();
        let info = kit.load_draft_model(path)?;
        eprintln!(
            "loaded draft model {} in {:.2}s: model type `{}` via {}, {} layers, {:.1}M parameters",
            path.display(),
            t.elapsed().as_secs_f64(),
            info.model_type,
            info.provider,
            info.layers,
            info.num_parameters as f64 / 1e6
        );
        Ok(())
    }
}

/// The flag of a library parameter name.
fn cli_flag(name: &str) -> String {
    match name {
        "ngram" => "lookup-ngram-min/--lookup-ngram-max".into(),
        other => other.replace('_', "-"),
    }
}

pub fn param(name: &str, reason: impl Into<String>) -> Error {
    Error::Param { name: name.into(), reason: reason.into() }
}

/// Loads the model without announcing it.
pub fn load_quietly(args: &ModelArgs, cache: &CacheArgs) -> Result<ModelKit> {
    load_quietly_in(args, cache, None, Split::Tensor)
}

/// [`load_quietly`], split over `group` when one is given.
pub fn load_quietly_in(args: &ModelArgs, cache: &CacheArgs, group: Option<Group>, split: Split) -> Result<ModelKit> {
    ModelKit::load(&model_path(args)?, LoadOptions { group, split, ..load_options(args, cache)? })
}

/// Where `--model` (with `--revision` and `--hf-file`) is on disk, downloading it if need be.
pub fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    crate::model::hub::model_path(&args.model, &args.revision, args.hf_file.as_deref())
}

fn load_options(args: &ModelArgs, cache: &CacheArgs) -> Result<LoadOptions> {
    let device = if args.device == "gpu" { Device::Gpu } else { Device::Cpu };
    Ok(LoadOptions {
        dtype: args.dtype.parse::<DtypeChoice>()?,
        device,
        plugins: HostOptions::standard(args.plugins.plugins.clone(), args.plugins.registry.clone()),
        cache: cache.config()?,
        ..Default::default()
    })
}

/// Loads the model with a spinner on stderr.
pub fn load(args: &ModelArgs, cache: &CacheArgs) -> Result<ModelKit> {
    load_in(args, cache, None, Split::Tensor)
}

/// [`load`], split over `group` when one is given.
pub fn load_in(args: &ModelArgs, cache: &CacheArgs, group: Option<Group>, split: Split) -> Result<ModelKit> {
    let options = LoadOptions { group, split, ..load_options(args, cache)? };
    // Before the spinner: a download draws progress bars of its own.
    let path = model_path(args)?;
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", args.model.display()));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let t = Instant::now();
    let kit = ModelKit::load(&path, options);
    bar.finish_and_clear();
    let kit = kit?;
    let info = kit.info();
    eprintln!(
        "loaded {} in {:.2}s: model type `{}` via {}, {} layers, {:.1}M parameters, {} weights, {} compute, vision: {}",
        args.model.display(),
        t.elapsed().as_secs_f64(),
        info.model_type,
        info.provider,
        info.cache_layout.len(),
        info.num_parameters as f64 / 1e6,
        info.storage,
        info.dtype,
        info.vision_path
    );
    Ok(kit)
}

/// Prompt and decode speed, time to first token and peak memory, on stderr. The prompt rate
/// counts only the tokens actually prefilled (not those from cache).
pub fn print_stats(stats: &GenerationStats) {
    let s = Summary::of(stats);
    eprintln!("{} of {} prompt tokens from cache", stats.cached_tokens, stats.prompt_tokens);
    let uncached = stats.prompt_tokens - stats.cached_tokens;
    let prompt = if stats.prefilled_tokens < uncached {
        format!("{} of {uncached} tokens prefilled before the cancel", stats.prefilled_tokens)
    } else {
        format!("{} tokens", stats.prompt_tokens)
    };
    let seed = if stats.greedy { String::new() } else { format!(" | seed {}", stats.seed) };
    let mut line = format!(
        "prompt: {prompt}, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | time to first token {:.3}s | peak memory {:.1} MB{seed}",
        s.prompt_tps,
        stats.generated_tokens,
        s.generation_tps,
        stats.prompt_seconds,
        s.peak_memory_mb,
    );
    if let Some(s) = &stats.speculative {
        line.push_str(&format!(" | {}", speculative_summary(s)));
    }
    if let Some(why) = &stats.speculative_fallback {
        line.push_str(&format!(" | no speculative decoding: {why}"));
    }
    eprintln!("{line}");
}

/// `draft model: 40 drafted, 31 accepted (77.5%) in 12 rounds of up to 3`.
pub fn speculative_summary(s: &SpeculativeStats) -> String {
    format!(
        "{}: {} drafted, {} accepted ({:.1}%) in {} rounds of up to {}{}",
        s.drafter,
        s.drafted,
        s.accepted,
        100.0 * s.acceptance_rate,
        s.rounds,
        s.num_draft_tokens,
        if s.drafter == "draft model" {
            format!(", {} draft prompt tokens from cache", s.draft_cached_tokens)
        } else {
            String::new()
        }
    )
}

/// The stats with the rates and peak memory worked out: the stderr line, and the last record
/// of `--output jsonl` (as mlx-lm's responses carry them).
#[derive(serde::Serialize)]
pub struct Summary<'a> {
    #[serde(flatten)]
    pub stats: &'a GenerationStats,
    /// Prefilled (not cached) prompt tokens per second.
    pub prompt_tps: f64,
    /// Tokens per second after the first one (whose time is the time to first token).
    pub generation_tps: f64,
    pub peak_memory_mb: f64,
}

impl Summary<'_> {
    pub fn of(stats: &GenerationStats) -> Summary<'_> {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        Summary {
            stats,
            prompt_tps: rate(stats.prefilled_tokens, stats.prompt_seconds),
            generation_tps: rate(stats.generated_tokens.saturating_sub(1), stats.decode_seconds),
            peak_memory_mb: peak_memory() as f64 / 1e6,
        }
    }
}

/// A prefill progress bar on stderr. It appears only for prefills of more than one chunk or
/// that are still running after half a second, so short prompts print nothing extra. It never
/// cancels (Ctrl-C goes through the generation's cancel handle).
pub struct PrefillBar {
    bar: ProgressBar,
    step: usize,
    start: Instant,
    shown: bool,
}

impl PrefillBar {
    pub fn new(step: Option<usize>) -> PrefillBar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tokens, eta {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        PrefillBar { bar, step: step.unwrap_or(DEFAULT_PREFILL_STEP_SIZE), start: Instant::now(), shown: false }
    }

    fn show(&mut self) {
        if !self.shown {
            self.shown = true;
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}

impl PrefillBar {
    fn start(&mut self, what: &str, cached: usize, total: usize) -> bool {
        let todo = total.saturating_sub(cached + 1);
        self.start = Instant::now();
        self.bar.set_position(0);
        self.bar.set_length(todo as u64);
        self.bar.set_message(format!("{what} ({cached} of {total} cached)"));
        if todo > self.step {
            self.show();
        }
        true
    }
}

impl PromptProgress for PrefillBar {
    fn begin(&mut self, cached: usize, total: usize) -> bool {
        self.start("prefill", cached, total)
    }

    fn update(&mut self, processed: usize) -> bool {
        self.bar.set_position(processed as u64);
        if self.start.elapsed().as_secs_f64() > 0.5 {
            self.show();
        }
        true
    }

    fn finish(&mut self) -> bool {
        self.bar.finish_and_clear();
        true
    }

    fn draft_begin(&mut self, cached: usize, total: usize) -> bool {
        // The main prefill's bar was cleared; the draft's reuses it.
        self.bar.reset();
        self.start("draft prefill", cached, total)
    }

    fn draft_update(&mut self, processed: usize) -> bool {
        self.update(processed)
    }

    fn draft_finish(&mut self) -> bool {
        self.finish()
    }
}

impl Drop for PrefillBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Images for a prompt (vision-language models).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ImageArgs {
    /// An image for the prompt: a PNG, JPEG or WebP file, or a `data:image/...;base64,` URL.
    /// Repeatable; images go in order to the prompt's image placeholders (a raw --prompt
    /// without placeholders gets them at its start; --chat lists them after the message's
    /// text, where the chat template places them).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<String>,
    /// Scale images whose long side exceeds this many pixels down to it before preprocessing.
    #[arg(long, value_name = "PIXELS")]
    pub max_image_size: Option<u32>,
}

impl ImageArgs {
    pub fn inputs(&self) -> Vec<crate::vision::ImageInput> {
        self.images.iter().map(|s| crate::vision::ImageInput::from_arg(s)).collect()
    }
}
