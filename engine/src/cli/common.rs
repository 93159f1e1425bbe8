//! Arguments and helpers shared by the model-running subcommands.

use std::path::PathBuf;
use std::time::Instant;

use mlx_engine_plugin_api::runtime::{peak_memory, Device};

use crate::error::{Error, Result};
use crate::generate::GenerationStats;
use crate::model::DtypeChoice;
use crate::model_kit::{LoadOptions, ModelKit};
use crate::plugin_host::HostOptions;
use crate::sample::SamplingOverrides;
use crate::tokenizer::ChatTemplate;

/// Which model to load and how.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model folder (config.json, safetensors, tokenizer files) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Compute dtype: auto = f32 on cpu, the checkpoint's dtype on gpu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub dtype: String,
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    pub device: String,
    #[command(flatten)]
    pub plugins: super::plugins::PluginsArgs,
}

/// Sampling and stopping.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long)]
    pub temp: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<i32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub repetition_context_size: Option<usize>,
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Alternatives to report per token (jsonl output), at most 20.
    #[arg(long)]
    pub top_logprobs: Option<usize>,
    /// Stop after this many new tokens.
    #[arg(long)]
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

pub fn param(name: &str, reason: impl Into<String>) -> Error {
    Error::Param { name: name.into(), reason: reason.into() }
}

/// Loads the model with a spinner on stderr.
pub fn load(args: &ModelArgs) -> Result<ModelKit> {
    let device = if args.device == "gpu" { Device::Gpu } else { Device::Cpu };
    let options = LoadOptions {
        dtype: args.dtype.parse::<DtypeChoice>()?,
        device,
        plugins: HostOptions::standard(args.plugins.plugins.clone(), args.plugins.registry.clone()),
    };
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", args.model.display()));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let t = Instant::now();
    let kit = ModelKit::load(&args.model, options);
    bar.finish_and_clear();
    let kit = kit?;
    let info = kit.info();
    eprintln!(
        "loaded {} in {:.2}s: model type `{}` via {}, {} layers, {:.1}M parameters, {}",
        args.model.display(),
        t.elapsed().as_secs_f64(),
        info.model_type,
        info.provider,
        info.cache_layout.len(),
        info.num_parameters as f64 / 1e6,
        info.dtype
    );
    Ok(kit)
}

/// Prompt and decode speed, time to first token and peak memory, on stderr.
pub fn print_stats(stats: &GenerationStats) {
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | time to first token {:.3}s | peak memory {:.1} MB | seed {}",
        stats.prompt_tokens,
        rate(stats.prompt_tokens, stats.prompt_seconds),
        stats.generated_tokens,
        rate(stats.generated_tokens.saturating_sub(1), stats.decode_seconds),
        stats.prompt_seconds,
        peak_memory() as f64 / 1e6,
        stats.seed
    );
}
