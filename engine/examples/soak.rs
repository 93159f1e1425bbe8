//! Soak: many sequential chat turns through the library API with prompt-cache reuse, watching
//! resident memory for growth. Each turn appends the user's message and the model's short
//! greedy reply to one conversation, so every request reuses the previous turn's cached prefix;
//! when the next prompt would pass the context budget the conversation starts over.
//!
//! Resident memory (`VmRSS`) is sampled every few turns; after the warm-up (MLX's buffer cache
//! and the prompt cache's snapshots fill up first) a least-squares line is fitted to the
//! samples. Fails (exit 1) on any error, on a turn that generated nothing, or when the slope
//! passes `--max-slope`.
//!
//! ```sh
//! make soak                       # 500 turns on the small model, release build
//! cargo run --release -p mlx-engine --example soak -- --turns 100 --model DIR
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mlx_engine::generate::GenerateRequest;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::{LoadOptions, ModelKit};

/// A leak of one KV snapshot per turn would cost megabytes (SmolLM2-135M keeps ~46 KB of f32
/// KV per token); a leaked request or string, bytes. 64 KiB a turn (32 MB over 500 turns) is
/// far above allocator noise and far below any cache-sized leak.
const DEFAULT_MAX_SLOPE: f64 = 64.0 * 1024.0;

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Name a prime number larger than ten.",
    "Write one short sentence about the sea.",
    "What colour is the sky on a clear day?",
    "Give me a word that rhymes with cat.",
    "How many legs does a spider have?",
    "Say hello in Spanish.",
    "What is two plus three?",
];

struct Args {
    model: PathBuf,
    turns: usize,
    max_tokens: usize,
    /// Prompt tokens (plus the reply's) at which the conversation starts over.
    budget: usize,
    sample_every: usize,
    warmup: usize,
    max_slope: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from("models/smollm2-135m-instruct/f32"),
        turns: 500,
        max_tokens: 16,
        budget: 1024,
        sample_every: 10,
        warmup: 100,
        max_slope: DEFAULT_MAX_SLOPE,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--turns" => a.turns = num(value()?)?,
            "--max-tokens" => a.max_tokens = num(value()?)?,
            "--budget" => a.budget = num(value()?)?,
            "--sample-every" => a.sample_every = num(value()?)?.max(1),
            "--warmup" => a.warmup = num(value()?)?,
            "--max-slope" => a.max_slope = value()?.parse().map_err(|e| format!("--max-slope: {e}"))?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.warmup + 2 * a.sample_every > a.turns {
        return Err(format!("--turns {} leaves too few samples after --warmup {}", a.turns, a.warmup));
    }
    Ok(a)
}

/// Resident set size in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS in /proc/self/status")?;
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or("unreadable VmRSS")?;
    Ok(kb * 1024)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx).powi(2)));
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn run(a: &Args) -> Result<bool, String> {
    let started = Instant::now();
    let kit = ModelKit::load(&a.model, LoadOptions::default()).map_err(|e| e.to_string())?;
    let no_args = serde_json::Map::new();
    let mut conversation: Vec<ChatMessage> = Vec::new();
    let (mut resets, mut generated, mut cached) = (0usize, 0usize, 0usize);
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let rss_start = rss_bytes()?;
    println!(
        "soak: {} turns on {}, max_tokens {}, budget {} tokens",
        a.turns,
        a.model.display(),
        a.max_tokens,
        a.budget
    );
    for turn in 0..a.turns {
        conversation.push(ChatMessage::new("user", QUESTIONS[turn % QUESTIONS.len()]));
        let mut prompt = kit.tokenize_chat(&conversation, None, &no_args).map_err(|e| format!("turn {turn}: {e}"))?;
        if prompt.len() + a.max_tokens > a.budget {
            conversation = vec![conversation.pop().expect("the new user turn")];
            prompt = kit.tokenize_chat(&conversation, None, &no_args).map_err(|e| format!("turn {turn}: {e}"))?;
            resets += 1;
        }
        let req = GenerateRequest {
            prompt_tokens: prompt,
            sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
            max_tokens: Some(a.max_tokens),
            ..Default::default()
        };
        let mut generation = kit.generate(req).map_err(|e| format!("turn {turn}: {e}"))?;
        let mut reply = String::new();
        for result in generation.by_ref() {
            reply.push_str(&result.map_err(|e| format!("turn {turn}: {e}"))?.text);
        }
        let stats = generation.stats().ok_or_else(|| format!("turn {turn}: no statistics at the end"))?;
        if stats.generated_tokens == 0 {
            return Err(format!("turn {turn}: generated no tokens"));
        }
        generated += stats.generated_tokens;
        cached += stats.cached_tokens;
        conversation.push(ChatMessage::new("assistant", reply));
        if (turn + 1) % a.sample_every == 0 {
            let rss = rss_bytes()?;
            if turn + 1 > a.warmup {
                samples.push(((turn + 1) as f64, rss as f64));
            }
            println!(
                "turn {:>4}: rss {}, mlx active {} cache {}, {} prompt tokens ({} cached), {} resets",
                turn + 1,
                mib(rss as f64),
                mib(mlx_engine::api::runtime::active_memory() as f64),
                mib(mlx_engine::api::runtime::cache_memory() as f64),
                stats.prompt_tokens,
                stats.cached_tokens,
                resets
            );
        }
    }
    let rss_end = rss_bytes()?;
    let per_turn = slope(&samples);
    let ok = per_turn <= a.max_slope;
    println!(
        "soak: {} turns in {:.1} s ({} tokens generated, {} prompt tokens from cache, {} resets); rss {} -> {}; \
         slope after turn {}: {:.0} bytes/turn over {} samples (bound {:.0}): {}",
        a.turns,
        started.elapsed().as_secs_f64(),
        generated,
        cached,
        resets,
        mib(rss_start as f64),
        mib(rss_end as f64),
        a.warmup,
        per_turn,
        samples.len(),
        a.max_slope,
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
