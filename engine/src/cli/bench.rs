//! `mlx-engine bench`: throughput, and what the prompt cache and KV quantization buy, measured
//! on a real model. Parts (`--only` picks some):
//!
//! - `speed`: prompt tok/s, decode tok/s (after the first token), time to first token and peak
//!   memory per prompt length, from warm in-process runs (`bench_speed`);
//! - `cache`: time to first token for a prompt from a cold cache, then for a follow-up turn
//!   (that prompt, the reply, and a short question) that finds the prefix in the prompt cache;
//! - `memory`: MLX peak memory while prefilling prompts of several lengths, with a dense KV
//!   cache and with a quantized one;
//! - `image` (with `--image`): the same time-to-first-token turns with an image;
//! - `speculative` (with `--draft-model PATH` or `--draft prompt-lookup`): decode speed with and
//!   without speculative decoding, and the acceptance rate (`bench_speculative`).
//!
//! The prompt is a fixed English passage repeated, so runs are comparable across machines and
//! with mlx-lm (`bench/compare.py` builds the same prompt).

use super::outln;
use std::time::Instant;

use mlx_engine_plugin_api::runtime::{active_memory, peak_memory, reset_peak_memory};

use super::common::{load, param, CacheArgs, DraftArgs, ModelArgs};
use crate::error::Result;
use crate::generate::{GenerateRequest, GenerationStats};
use crate::model_kit::ModelKit;
use crate::sample::SamplingOverrides;
use crate::vision::ImageInput;

/// A part of the benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Speed,
    Cache,
    Memory,
    Image,
    Speculative,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Cache settings for every run (the memory table's quantized column sets its own bits).
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Run only these parts (comma-separated). Default: speed, cache and memory, plus image
    /// with --image and speculative with a drafter.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Prompt lengths of the speed table (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens generated per speed run (greedy, EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed speed runs per prompt length, after one untimed warm-up run at that length (MLX
    /// compiles kernels for each new shape); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print each measurement as one JSON object per line on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Speed runs also return this many top logprobs per token (up to 20), to measure what a
    /// client asking for them costs the decode loop.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    /// Speed runs apply this repetition penalty (a logits processor over the recent tokens), to
    /// measure what processors cost the decode loop.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Prompt length of the prompt-cache comparison.
    #[arg(long, default_value_t = 2048)]
    pub cache_prompt_tokens: usize,
    /// Prompt lengths of the peak-memory table (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
    pub memory_lengths: Vec<usize>,
    /// Bits of the quantized column of the memory table (the --kv-bits value when given).
    #[arg(long, default_value_t = 4)]
    pub memory_kv_bits: i64,
    /// Also time an image prompt (vision models): cold, with the image's features in the memo,
    /// and a text-only follow-up turn that finds the image prefix in the prompt cache.
    #[arg(long, value_name = "FILE")]
    pub image: Option<std::path::PathBuf>,
    /// Compare decoding with and without this drafter.
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Tokens per prompt of the speculative decoding comparison.
    #[arg(long, default_value_t = 128)]
    pub speculative_tokens: usize,
    /// Runs of each kind per prompt in the speculative decoding comparison (the fastest counts).
    #[arg(long, default_value_t = 2)]
    pub speculative_repeats: usize,
    /// The speed table also times decoding under this grammar (structured output).
    #[command(flatten)]
    pub constraint: super::constraint_args::ConstraintArgs,
}

impl BenchArgs {
    /// The parts to run, checked against the flags they need.
    fn parts(&self, drafter: bool) -> Result<Vec<Part>> {
        if self.only.is_empty() {
            let mut parts = vec![Part::Speed, Part::Cache, Part::Memory];
            if self.image.is_some() {
                parts.push(Part::Image);
            }
            if drafter {
                parts.push(Part::Speculative);
            }
            return Ok(parts);
        }
        if self.only.contains(&Part::Image) && self.image.is_none() {
            return Err(param("--only", "`image` needs --image FILE"));
        }
        if self.only.contains(&Part::Speculative) && !drafter {
            return Err(param("--only", "`speculative` needs --draft-model PATH or --draft prompt-lookup"));
        }
        Ok(self.only.clone())
    }
}

/// The benchmark text (shared with `bench/compare.py`, which builds the same prompt for mlx-lm).
pub(super) const PASSAGE: &str = include_str!("bench_passage.txt");

const FOLLOW_UP: &str = "\n\nQuestion: what drove the looms in the town? Answer:";

/// Reply tokens generated per timed turn: enough to be a turn, few enough not to matter.
const REPLY_TOKENS: usize = 8;

/// `n` prompt tokens: BOS (when the tokenizer has one), then the passage repeated.
pub(super) fn synthetic_prompt(kit: &ModelKit, n: usize) -> Result<Vec<u32>> {
    let passage = kit.tokenizer().encode(PASSAGE, false)?;
    if passage.is_empty() {
        return Err(param("model", "the tokenizer encodes the benchmark passage to no tokens"));
    }
    let mut out: Vec<u32> = kit.tokenizer().bos_token_id().into_iter().collect();
    out.extend(passage.iter().cycle().take(n.saturating_sub(out.len())));
    Ok(out)
}

/// Runs a greedy generation and returns its tokens and stats.
fn run(
    kit: &ModelKit,
    prompt: Vec<u32>,
    max_tokens: usize,
    fresh: bool,
    step: Option<usize>,
) -> Result<(Vec<u32>, GenerationStats)> {
    run_with(kit, prompt, Vec::new(), max_tokens, fresh, step)
}

fn run_with(
    kit: &ModelKit,
    prompt: Vec<u32>,
    images: Vec<ImageInput>,
    max_tokens: usize,
    fresh: bool,
    step: Option<usize>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let req = GenerateRequest {
        prompt_tokens: prompt,
        images,
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        prefill_step_size: step,
        ignore_prompt_cache: fresh,
        ..Default::default()
    };
    tokens_and_stats(kit, req)
}

/// Runs `req` to its end: the generated token ids and the stats.
pub(super) fn tokens_and_stats(kit: &ModelKit, req: GenerateRequest) -> Result<(Vec<u32>, GenerationStats)> {
    // The cold prefill of a long prompt takes minutes on a CPU: show it.
    let bar = Box::new(super::common::PrefillBar::new(req.prefill_step_size));
    let mut generation = kit.generate_with_progress(req, bar)?;
    let mut tokens = Vec::new();
    for r in generation.by_ref() {
        tokens.extend(r?.tokens.iter().map(|t| t.id));
    }
    let stats = generation.stats().cloned().ok_or_else(|| param("bench", "the generation ended without stats"))?;
    Ok((tokens, stats))
}

/// Checks that `n` tokens fit the model's context; `flag` is the flag that asked for them.
pub(super) fn check_fits(kit: &ModelKit, flag: &str, n: usize) -> Result<()> {
    match kit.info().context_length {
        Some(ctx) if n > ctx => Err(param(
            flag,
            format!("{n} tokens (with the tokens generated) do not fit the model's context length of {ctx}"),
        )),
        _ => Ok(()),
    }
}

/// TTFT of `IMAGE_PROMPT` with `image`: cold (features computed), with the features in the memo
/// (prompt cache cleared), and a text-only follow-up turn on the cached image prefix. A mirrored
/// copy of the image warms up the vision tower first, so the cold run encodes.
fn image_ttft(kit: &ModelKit, image: &std::path::Path, step: Option<usize>) -> Result<()> {
    let img = ImageInput::Path(image.to_path_buf());
    let decoded = crate::vision::decode(&img, &Default::default())?;
    let mut png = Vec::new();
    ::image::DynamicImage::ImageRgb8(::image::imageops::flip_horizontal(&decoded.rgb))
        .write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png)
        .map_err(|e| param("image", e.to_string()))?;
    let warm = ImageInput::Bytes(png);
    let prompt = kit.tokenize_with_images(IMAGE_PROMPT, std::slice::from_ref(&img), None)?;
    run_with(kit, prompt.clone(), vec![warm], 2, true, step)?;
    kit.clear_prompt_cache()?;
    let (reply, cold) = run_with(kit, prompt.clone(), vec![img.clone()], REPLY_TOKENS, true, step)?;
    kit.clear_prompt_cache()?;
    let (_, memo) = run_with(kit, prompt.clone(), vec![img.clone()], REPLY_TOKENS, true, step)?;
    let mut turn = prompt;
    turn.extend(&reply);
    turn.extend(kit.tokenizer().encode(FOLLOW_UP, false)?);
    let (_, follow) = run_with(kit, turn, vec![img], REPLY_TOKENS, false, step)?;
    outln!("time to first token with an image ({})", image.display());
    for (what, s) in [("cold", &cold), ("memo hit", &memo), ("follow-up", &follow)] {
        outln!(
            "  {what:<10}: {:>5} prompt tokens, {:>5} from cache, {} encoded / {} from memo, TTFT {:>8.3}s",
            s.prompt_tokens,
            s.cached_tokens,
            s.images_encoded,
            s.images_from_memo,
            s.prompt_seconds
        );
    }
    Ok(())
}

/// The image benchmark's prompt (raw text; the image placeholder goes first).
const IMAGE_PROMPT: &str = "Describe the image in detail.";

pub(super) fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

pub fn run_bench(args: &BenchArgs) -> Result<()> {
    let step = args.cache.prefill_step_size()?;
    let base_config = args.cache.config()?;
    let (speculation, k) = args.draft.speculation()?;
    let parts = args.parts(speculation != crate::speculative::Speculation::Off)?;
    if parts.contains(&Part::Speed) {
        super::bench_speed::check(args)?;
    }
    if parts.contains(&Part::Cache) && args.cache_prompt_tokens < 2 {
        return Err(param("--cache-prompt-tokens", format!("must be at least 2, got {}", args.cache_prompt_tokens)));
    }
    if parts.contains(&Part::Memory) && base_config.kv_bits.is_none() {
        // The memory table's quantized column takes --memory-kv-bits: name that flag.
        CacheArgs { kv_bits: Some(args.memory_kv_bits), ..args.cache.clone() }.config().map_err(|e| match e {
            crate::Error::Param { name, reason } if name.contains("kv_bits") || name.contains("kv-bits") => {
                param("--memory-kv-bits", reason)
            }
            e => e,
        })?;
    }
    let kit = load(&args.model, &args.cache)?;
    // Every length against the context before the first run, so no part fails late.
    if parts.contains(&Part::Speed) {
        let longest = args.prompt_tokens.iter().max().copied().unwrap_or(0);
        check_fits(&kit, "--prompt-tokens", longest + args.gen_tokens)?;
    }
    if parts.contains(&Part::Cache) {
        let suffix = kit.tokenizer().encode(FOLLOW_UP, false)?.len();
        check_fits(&kit, "--cache-prompt-tokens", args.cache_prompt_tokens + 2 * REPLY_TOKENS + suffix)?;
    }
    if parts.contains(&Part::Memory) {
        let longest = args.memory_lengths.iter().max().copied().unwrap_or(0);
        check_fits(&kit, "--memory-lengths", longest + 1)?;
    }
    if parts.contains(&Part::Speculative) {
        args.draft.load_into(&kit)?;
        let (n, repeats) = (args.speculative_tokens.max(1), args.speculative_repeats);
        super::bench_speculative::compare(&kit, &speculation, k, n, repeats, args.json)?;
        kit.unload_draft_model()?;
    }
    if parts.contains(&Part::Speed) {
        super::bench_speed::run(&kit, args, step)?;
    }
    if parts.contains(&Part::Cache) {
        cache_ttft(&kit, args, step)?;
    }
    if parts.contains(&Part::Image) {
        if let Some(image) = &args.image {
            image_ttft(&kit, image, step)?;
        }
    }
    drop(kit);
    if parts.contains(&Part::Memory) && !args.memory_lengths.is_empty() {
        memory_table(args, step)?;
    }
    Ok(())
}

/// Time to first token of a cold prompt and of a follow-up turn that finds it in the cache.
fn cache_ttft(kit: &ModelKit, args: &BenchArgs, step: Option<usize>) -> Result<()> {
    let suffix = kit.tokenizer().encode(FOLLOW_UP, false)?;
    // Warm-up: first-call costs (page faults on the weights, kernel set-up) stay out of the
    // timings.
    run(kit, synthetic_prompt(kit, 64)?, 2, true, step)?;
    kit.clear_prompt_cache()?;

    let prompt = synthetic_prompt(kit, args.cache_prompt_tokens)?;
    let t = Instant::now();
    let (reply, cold) = run(kit, prompt.clone(), REPLY_TOKENS, true, step)?;
    let cold_wall = t.elapsed().as_secs_f64();
    let mut turn = prompt;
    turn.extend(&reply);
    turn.extend(&suffix);
    let t = Instant::now();
    let (_, warm) = run(kit, turn, REPLY_TOKENS, false, step)?;
    let warm_wall = t.elapsed().as_secs_f64();
    let ratio = if warm.prompt_seconds > 0.0 { cold.prompt_seconds / warm.prompt_seconds } else { f64::INFINITY };
    if args.json {
        let row = |s: &GenerationStats, wall: f64| {
            serde_json::json!({"prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
                "ttft_s": s.prompt_seconds, "turn_s": wall})
        };
        outln!(
            "{}",
            serde_json::json!({"part": "cache", "model": args.model.model.display().to_string(),
                "cold": row(&cold, cold_wall), "follow_up": row(&warm, warm_wall), "speed_up": ratio})
        );
        return Ok(());
    }
    outln!("time to first token, {} ({})", args.model.model.display(), kit.info().dtype);
    outln!(
        "  cold      : {:>5} prompt tokens, {:>5} from cache, TTFT {:>8.3}s (whole turn {:.3}s)",
        cold.prompt_tokens,
        cold.cached_tokens,
        cold.prompt_seconds,
        cold_wall
    );
    outln!(
        "  follow-up : {:>5} prompt tokens, {:>5} from cache, TTFT {:>8.3}s (whole turn {:.3}s)",
        warm.prompt_tokens,
        warm.cached_tokens,
        warm.prompt_seconds,
        warm_wall
    );
    outln!("  speed-up  : {ratio:.1}x");
    Ok(())
}

/// Peak memory while prefilling each of `--memory-lengths`, dense and quantized KV.
fn memory_table(args: &BenchArgs, step: Option<usize>) -> Result<()> {
    let base_config = args.cache.config()?;
    let bits = base_config.kv_bits.map_or(args.memory_kv_bits, i64::from);
    let quant_args = CacheArgs { kv_bits: Some(bits), ..args.cache.clone() };
    let dense_args = CacheArgs { kv_bits: None, kv_group_size: None, quantized_kv_start: None, ..args.cache.clone() };
    let mut rows: Vec<Vec<(usize, usize, usize)>> = Vec::new();
    for cache_args in [&dense_args, &quant_args] {
        // The same model again with another cache configuration; its load line was printed.
        let kit = super::common::load_quietly(&args.model, cache_args)?;
        let mut row = Vec::new();
        for &n in &args.memory_lengths {
            kit.clear_prompt_cache()?;
            let prompt = synthetic_prompt(&kit, n.max(2))?;
            let before = active_memory();
            reset_peak_memory();
            run(&kit, prompt, 1, true, step)?;
            let peak = peak_memory();
            let kv = kit.prompt_cache_info()?.live_nbytes;
            row.push((peak, peak.saturating_sub(before), kv));
        }
        rows.push(row);
    }
    if args.json {
        for (i, &n) in args.memory_lengths.iter().enumerate() {
            let cell = |r: &[(usize, usize, usize)]| {
                let (p, a, k) = r[i];
                serde_json::json!({"peak_mb": mb(p), "above_weights_mb": mb(a), "kv_cache_mb": mb(k)})
            };
            outln!(
                "{}",
                serde_json::json!({"part": "memory", "model": args.model.model.display().to_string(),
                    "prompt_tokens": n, "dense": cell(&rows[0]), "quantized": cell(&rows[1]), "kv_bits": bits})
            );
        }
        return Ok(());
    }
    outln!(
        "peak memory (MLX) while prefilling, MB: total / above weights / KV cache (max_kv_size {:?}, prefill step {})",
        base_config.max_kv_size,
        step.unwrap_or(crate::generate::DEFAULT_PREFILL_STEP_SIZE)
    );
    outln!("  {:>7} | {:>26} | {:>26}", "tokens", "dense KV", format!("--kv-bits {bits}"));
    for (i, &n) in args.memory_lengths.iter().enumerate() {
        let cell = |r: &[(usize, usize, usize)]| {
            let (p, a, k) = r[i];
            format!("{:>8.1} / {:>7.1} / {:>6.1}", mb(p), mb(a), mb(k))
        };
        outln!("  {n:>7} | {:>26} | {:>26}", cell(&rows[0]), cell(&rows[1]));
    }
    Ok(())
}
