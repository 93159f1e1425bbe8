//! `mlx-engine bench`: what the prompt cache and KV quantization buy, measured on a real model.
//!
//! 1. Time to first token for a synthetic prompt of `--prompt-tokens` tokens from a cold cache,
//!    then for a follow-up turn (that prompt, the reply, and a short question) that finds the
//!    prefix in the prompt cache.
//! 2. MLX peak memory while prefilling prompts of several lengths, with a dense KV cache and
//!    with a quantized one.
//!
//! The prompt is a fixed English passage repeated, so runs are comparable across machines.

use super::outln;
use std::time::Instant;

use mlx_engine_plugin_api::runtime::{active_memory, peak_memory, reset_peak_memory};

use super::common::{load, param, CacheArgs, ModelArgs};
use crate::error::Result;
use crate::generate::{GenerateRequest, GenerationStats};
use crate::model_kit::ModelKit;
use crate::sample::SamplingOverrides;
use crate::vision::ImageInput;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Cache settings for the time-to-first-token runs and the dense column of the memory table.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Prompt length of the time-to-first-token comparison.
    #[arg(long, default_value_t = 2048)]
    pub prompt_tokens: usize,
    /// Prompt lengths of the peak-memory table (comma-separated; the flag with no value skips
    /// the table).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "256,512,1024,2048")]
    pub memory_lengths: Vec<usize>,
    /// Bits of the quantized column of the memory table (the --kv-bits value when given).
    #[arg(long, default_value_t = 4)]
    pub memory_kv_bits: i64,
    /// Also time an image prompt (vision models): cold, with the image's features in the memo,
    /// and a text-only follow-up turn that finds the image prefix in the prompt cache.
    #[arg(long, value_name = "FILE")]
    pub image: Option<std::path::PathBuf>,
}

const PASSAGE: &str = "The river rises in the hills above the old mill town, where the first \
settlers built a dam of stone and timber to turn their wheels. For two centuries the water drove \
looms, saws and grindstones, and the town grew along both banks. When the railway came, the mills \
closed one by one; the dam silted up, and herons returned to the shallows. Today a footpath follows \
the river from the hills to the sea, past the ruined mills, the iron bridge and the marshes where \
the estuary widens. Walkers count the kingfishers, children race sticks under the bridges, and in \
autumn the salmon leap the weir on their way upstream to spawn.\n\n";

const FOLLOW_UP: &str = "\n\nQuestion: what drove the looms in the town? Answer:";

/// Reply tokens generated per timed turn: enough to be a turn, few enough not to matter.
const REPLY_TOKENS: usize = 8;

/// `n` prompt tokens: BOS (when the tokenizer has one), then the passage repeated.
fn synthetic_prompt(kit: &ModelKit, n: usize) -> Result<Vec<u32>> {
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
    // The cold prefill of a long prompt takes minutes on a CPU: show it.
    let mut generation = kit.generate_with_progress(req, Box::new(super::common::PrefillBar::new(step)))?;
    let mut tokens = Vec::new();
    for r in generation.by_ref() {
        tokens.extend(r?.tokens.iter().map(|t| t.id));
    }
    let stats = generation.stats().cloned().ok_or_else(|| param("bench", "the generation ended without stats"))?;
    Ok((tokens, stats))
}

fn check_fits(kit: &ModelKit, n: usize) -> Result<()> {
    match kit.info().context_length {
        Some(ctx) if n > ctx => Err(param(
            "--prompt-tokens",
            format!("{n} tokens with the follow-up turn do not fit the model's context length of {ctx}"),
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

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

pub fn run_bench(args: &BenchArgs) -> Result<()> {
    let step = args.cache.prefill_step_size()?;
    let base_config = args.cache.config()?;
    if args.prompt_tokens < 2 {
        return Err(param("--prompt-tokens", format!("must be at least 2, got {}", args.prompt_tokens)));
    }
    if base_config.kv_bits.is_none() && !args.memory_lengths.is_empty() {
        // The memory table's quantized column takes --memory-kv-bits: name that flag.
        CacheArgs { kv_bits: Some(args.memory_kv_bits), ..args.cache.clone() }.config().map_err(|e| match e {
            crate::Error::Param { name, reason } if name.contains("kv_bits") || name.contains("kv-bits") => {
                param("--memory-kv-bits", reason)
            }
            e => e,
        })?;
    }
    let kit = load(&args.model, &args.cache)?;
    let suffix = kit.tokenizer().encode(FOLLOW_UP, false)?;
    check_fits(&kit, args.prompt_tokens + 2 * REPLY_TOKENS + suffix.len())?;
    if let Some(&longest) = args.memory_lengths.iter().max() {
        check_fits(&kit, longest + 1)?;
    }

    // Warm-up: first-call costs (page faults on the weights, kernel set-up) stay out of the
    // timings.
    run(&kit, synthetic_prompt(&kit, 64)?, 2, true, step)?;
    kit.clear_prompt_cache()?;

    let prompt = synthetic_prompt(&kit, args.prompt_tokens)?;
    let t = Instant::now();
    let (reply, cold) = run(&kit, prompt.clone(), REPLY_TOKENS, true, step)?;
    let cold_wall = t.elapsed().as_secs_f64();
    let mut turn = prompt;
    turn.extend(&reply);
    turn.extend(&suffix);
    let t = Instant::now();
    let (_, warm) = run(&kit, turn, REPLY_TOKENS, false, step)?;
    let warm_wall = t.elapsed().as_secs_f64();
    let ratio = if warm.prompt_seconds > 0.0 { cold.prompt_seconds / warm.prompt_seconds } else { f64::INFINITY };
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
    if let Some(image) = &args.image {
        image_ttft(&kit, image, step)?;
    }
    drop(kit);

    if args.memory_lengths.is_empty() {
        return Ok(());
    }
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
