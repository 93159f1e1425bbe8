//! `mlx-engine bench` speed part: prompt and decode throughput per prompt length, from warm
//! in-process runs, as `bench/compare.py` measures mlx-lm's `stream_generate`.
//!
//! Each length gets one untimed run first: MLX compiles kernels for every new shape (seconds
//! on a GPU), and the first pass over the weights pays their page faults. Then `--runs` timed
//! runs from an empty cache, greedy with EOS ignored, so every run decodes `--gen-tokens`
//! tokens. Decode speed counts the tokens after the first over the time after the first, as
//! mlx-lm does; time to first token is the prefill plus the first token's sampling.
//!
//! With a grammar flag (`--json-schema FILE` and the others of `generate`) every length also
//! gets the same runs under that grammar, and the table shows the decode speed they keep. A
//! grammar may finish before `--gen-tokens`; a constrained run then counts what it generated.

use mlx_engine_plugin_api::runtime::{peak_memory, reset_peak_memory};

use super::bench::{mb, synthetic_prompt, tokens_and_stats, BenchArgs};
use super::common::param;
use super::outln;
use crate::constrain::Constraint;
use crate::error::Result;
use crate::generate::{GenerateRequest, GenerationStats};
use crate::model_kit::ModelKit;
use crate::sample::SamplingOverrides;

/// The flags of this part, checked before the model loads.
pub fn check(args: &BenchArgs) -> Result<()> {
    if let Some(&n) = args.prompt_tokens.iter().find(|&&n| n < 1) {
        return Err(param("--prompt-tokens", format!("every length must be at least 1, got {n}")));
    }
    if args.prompt_tokens.is_empty() {
        return Err(param("--prompt-tokens", "needs at least one length"));
    }
    if args.gen_tokens < 2 {
        return Err(param(
            "--gen-tokens",
            format!("must be at least 2 (decode speed counts the tokens after the first), got {}", args.gen_tokens),
        ));
    }
    if args.runs < 1 {
        return Err(param("--runs", "must be at least 1"));
    }
    crate::sample::SamplingParams::from(decode_options(args)).validate_ranges()?;
    args.constraint.constraint()?;
    Ok(())
}

/// One timed run's numbers.
struct Sample {
    prompt_tps: f64,
    decode_tps: f64,
    ttft: f64,
    peak: usize,
    /// Host milliseconds per generated token: building the forward, sampling and queueing,
    /// waiting, text.
    forward_ms: f64,
    sample_ms: f64,
    wait_ms: f64,
    text_ms: f64,
    /// Host milliseconds per token computing grammar masks (constrained runs).
    mask_ms: f64,
    generated: usize,
}

impl Sample {
    fn of(s: &GenerationStats, peak: usize) -> Sample {
        let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Sample {
            prompt_tps: rate(s.prefilled_tokens, s.prompt_seconds),
            decode_tps: rate(s.generated_tokens.saturating_sub(1), s.decode_seconds),
            ttft: s.prompt_seconds,
            peak,
            forward_ms: per_token(s.host.forward_seconds, s.generated_tokens),
            sample_ms: per_token(s.host.sample_seconds, s.generated_tokens),
            wait_ms: per_token(s.host.wait_seconds, s.generated_tokens),
            text_ms: per_token(s.host.text_seconds, s.generated_tokens),
            mask_ms: per_token(s.host.mask_seconds, s.generated_tokens),
            generated: s.generated_tokens,
        }
    }
}

fn per_token(seconds: f64, tokens: usize) -> f64 {
    if tokens == 0 {
        0.0
    } else {
        seconds * 1e3 / tokens as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Greedy sampling with the flags' top logprobs and repetition penalty.
fn decode_options(args: &BenchArgs) -> SamplingOverrides {
    SamplingOverrides {
        temp: Some(0.0),
        top_logprobs: Some(args.top_logprobs),
        repetition_penalty: args.repetition_penalty,
        ..Default::default()
    }
}

fn timed(
    kit: &ModelKit,
    args: &BenchArgs,
    prompt: &[u32],
    step: Option<usize>,
    constraint: Option<&Constraint>,
) -> Result<Sample> {
    let gen_tokens = args.gen_tokens;
    let req = GenerateRequest {
        constraint: constraint.cloned(),
        prompt_tokens: prompt.to_vec(),
        sampling: decode_options(args),
        max_tokens: Some(gen_tokens),
        ignore_eos: true,
        prefill_step_size: step,
        ignore_prompt_cache: true,
        ..Default::default()
    };
    reset_peak_memory();
    let (tokens, stats) = tokens_and_stats(kit, req)?;
    let short = match constraint {
        Some(_) => tokens.len() < 2,
        None => tokens.len() != gen_tokens,
    };
    if short {
        return Err(param("bench", format!("a speed run generated {} tokens, expected {gen_tokens}", tokens.len())));
    }
    Ok(Sample::of(&stats, peak_memory()))
}

/// Runs the speed table and prints it (a table, or one JSON object per length).
pub fn run(kit: &ModelKit, args: &BenchArgs, step: Option<usize>) -> Result<()> {
    let info = kit.info();
    let constraint = args.constraint.constraint()?;
    if !args.json {
        outln!(
            "speed, {} ({}, {}): greedy, {} tokens generated, median of {} warm runs",
            args.model.model.display(),
            info.dtype,
            args.model.device,
            args.gen_tokens,
            args.runs
        );
        outln!(
            "  {:>7} | {:>12} | {:>12} | {:>9} | {:>9} | {:>30}",
            "prompt",
            "prompt tok/s",
            "decode tok/s",
            "TTFT s",
            "peak MB",
            "host ms/tok fwd/sample/wait/text"
        );
    }
    for &n in &args.prompt_tokens {
        let prompt = synthetic_prompt(kit, n)?;
        timed(kit, args, &prompt, step, None)?;
        let samples = (0..args.runs).map(|_| timed(kit, args, &prompt, step, None)).collect::<Result<Vec<_>>>()?;
        let pick = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
        let (prompt_tps, decode_tps, ttft) = (pick(|s| s.prompt_tps), pick(|s| s.decode_tps), pick(|s| s.ttft));
        let host = [pick(|s| s.forward_ms), pick(|s| s.sample_ms), pick(|s| s.wait_ms), pick(|s| s.text_ms)];
        let [forward, sample, wait, text] = host.map(median);
        let peak = samples.iter().map(|s| s.peak).max().unwrap_or(0);
        let constrained = match &constraint {
            Some(c) => {
                timed(kit, args, &prompt, step, Some(c))?;
                let runs =
                    (0..args.runs).map(|_| timed(kit, args, &prompt, step, Some(c))).collect::<Result<Vec<_>>>()?;
                Some(Constrained::of(&runs, median(decode_tps.clone())))
            }
            None => None,
        };
        if args.json {
            outln!(
                "{}",
                serde_json::json!({
                    "part": "speed", "runtime": "mlx-engine", "model": args.model.model.display().to_string(),
                    "dtype": info.dtype.to_string(), "device": args.model.device, "prompt_tokens": prompt.len(),
                    "gen_tokens": args.gen_tokens, "runs": args.runs,
                    "prompt_tps": median(prompt_tps.clone()), "decode_tps": median(decode_tps.clone()),
                    "ttft_s": median(ttft.clone()), "peak_mb": mb(peak),
                    "prompt_tps_runs": prompt_tps, "decode_tps_runs": decode_tps, "ttft_s_runs": ttft,
                    "host_ms_per_token": {"forward": forward, "sample": sample, "wait": wait, "text": text},
                    "top_logprobs": args.top_logprobs, "repetition_penalty": args.repetition_penalty,
                    "constrained": constrained.as_ref().map(Constrained::json),
                })
            );
        } else {
            outln!(
                "  {:>7} | {:>12.1} | {:>12.2} | {:>9.3} | {:>9.1} | {:>30}",
                prompt.len(),
                median(prompt_tps),
                median(decode_tps),
                median(ttft),
                mb(peak),
                format!("{forward:.2}/{sample:.2}/{wait:.2}/{text:.2}")
            );
            if let Some(c) = &constrained {
                outln!(
                    "  {:>7} | {:>12} | {:>12.2} | decode {:+.1}% under the grammar ({} tokens; mask {:.3} ms/tok)",
                    "grammar",
                    "",
                    c.decode_tps,
                    -c.drop_pct,
                    c.generated,
                    c.mask_ms
                );
            }
        }
    }
    Ok(())
}

/// The constrained runs of one length, against the plain ones.
struct Constrained {
    decode_tps: f64,
    decode_tps_runs: Vec<f64>,
    /// How much slower than plain decoding, in percent (negative: faster).
    drop_pct: f64,
    generated: usize,
    mask_ms: f64,
}

impl Constrained {
    fn of(runs: &[Sample], plain_tps: f64) -> Constrained {
        let decode_tps_runs: Vec<f64> = runs.iter().map(|s| s.decode_tps).collect();
        let decode_tps = median(decode_tps_runs.clone());
        let drop_pct = if plain_tps > 0.0 { (1.0 - decode_tps / plain_tps) * 100.0 } else { 0.0 };
        Constrained {
            decode_tps,
            decode_tps_runs,
            drop_pct,
            generated: runs.iter().map(|s| s.generated).min().unwrap_or(0),
            mask_ms: median(runs.iter().map(|s| s.mask_ms).collect()),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "decode_tps": self.decode_tps, "decode_tps_runs": self.decode_tps_runs,
            "drop_pct": self.drop_pct, "generated_tokens": self.generated, "mask_ms_per_token": self.mask_ms,
        })
    }
}
