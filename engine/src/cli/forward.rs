//! `mlx-engine forward`: one forward pass over token ids, for checking a model or a plugin
//! without a tokenizer (real logits, top next tokens, timing and memory).

use super::outln;
use std::path::PathBuf;
use std::time::Instant;

use mlx_engine_plugin_api::runtime::{peak_memory, Device};
use mlx_engine_plugin_api::{Array, Input};

use crate::cache::KvCache;
use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Model folder (config.json + safetensors weights).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Comma-separated prompt token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<i32>,
    /// How many of the most likely next tokens to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Greedy tokens to decode after the prompt, through the KV cache.
    #[arg(long, default_value_t = 0)]
    pub decode: usize,
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub plugins: super::plugins::PluginsArgs,
}

fn param(name: &str, reason: impl Into<String>) -> Error {
    Error::Param { name: name.into(), reason: reason.into() }
}

pub fn run(args: &ForwardArgs) -> Result<()> {
    let device = if args.device == "gpu" { Device::Gpu } else { Device::Cpu };
    device.set_default()?;
    let host = super::plugins::host_from_args(&args.plugins.plugins, args.plugins.registry.as_deref())?;
    let t0 = Instant::now();
    let loaded = crate::model::load(&crate::model::hub::model_path(&args.model, "main", None)?, &host)?;
    eprintln!(
        "loaded {} (model type `{}`, {} layers) in {:.2}s",
        args.model.display(),
        loaded.model_type,
        loaded.cache_layout.len(),
        t0.elapsed().as_secs_f64()
    );
    if args.top == 0 {
        return Err(param("top", "must be at least 1"));
    }
    let mut cache = KvCache::new(loaded.cache_layout.clone());
    crate::model::check_token_ids("tokens", &args.tokens, loaded.vocab_size)?;
    let ids = Array::from_slice(&args.tokens, &[1, args.tokens.len() as i32])?;
    let t1 = Instant::now();
    let logits = loaded.model.forward(Input::Tokens(&ids), &mut cache)?;
    let shape = logits.shape();
    let last =
        logits.slice_axis(1, shape[1] - 1, shape[1])?.reshape(&[-1])?.astype(mlx_engine_plugin_api::Dtype::F32)?;
    let logprobs = last.log_softmax(-1)?.to_vec_f32()?;
    let prefill = t1.elapsed().as_secs_f64();
    outln!("logits shape {shape:?}, dtype {}", logits.dtype());
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
    // Token text beside the ids, when the model has a tokenizer.
    let tokenizer = crate::model::load_tokenizer(&loaded).ok();
    let text = |ids: &[u32]| tokenizer.as_ref().and_then(|t| t.decode(ids, false).ok());
    for &i in order.iter().take(args.top) {
        let piece = text(&[i as u32]).map(|t| format!("  {t:?}")).unwrap_or_default();
        outln!("  token {i:>6}  logprob {:>9.4}{piece}", logprobs[i]);
    }
    let mut next = order.first().copied().unwrap_or(0) as i32;
    let mut decoded = Vec::new();
    let t2 = Instant::now();
    for _ in 0..args.decode {
        decoded.push(next);
        let x = Array::from_slice(&[next], &[1, 1])?;
        let l = loaded.model.forward(Input::Tokens(&x), &mut cache)?;
        next = l.reshape(&[-1])?.argmax(0, false)?.item::<u32>()? as i32;
    }
    if args.decode > 0 {
        let dt = t2.elapsed().as_secs_f64();
        outln!("greedy continuation: {decoded:?}");
        let ids: Vec<u32> = decoded.iter().map(|&t| t as u32).collect();
        if let Some(t) = text(&ids) {
            outln!("as text: {t:?}");
        }
        eprintln!("decode: {} tokens in {dt:.3}s ({:.1} tok/s)", args.decode, args.decode as f64 / dt);
    }
    eprintln!(
        "prefill: {} tokens in {prefill:.3}s, peak memory {:.1} MB",
        args.tokens.len(),
        peak_memory() as f64 / 1e6
    );
    Ok(())
}
