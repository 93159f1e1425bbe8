//! Token-exact parity with mlx-lm, against goldens recorded by `scripts/goldens/record.py`
//! (`make goldens`) with the same MLX and OpenBLAS as the engine, on one CPU.
//!
//! Another CPU picks other OpenBLAS kernels, so f32 sums round differently: every numeric
//! bound below is at least 3x the worst difference `scripts/blas-matrix.sh` measured under each
//! OpenBLAS kernel this machine runs and under the wheel's reference BLAS (the table and the
//! reasoning are in docs/testing.md).
//!
//! Greedy token identity is the main check. The engine must pick mlx-lm's token at every step
//! until the first step where they differ, and that step must be a near-tie: its recorded top-2
//! gap is within the measured noise of a gap (`Bounds::tie_margin`), so another rounding may
//! decide it either way. Past such a step the two continuations are different texts and nothing
//! more is compared. Every agreed step also bounds the logprob and the top-2 gap; f32 runs
//! bound the prompt logits of one cache-less forward relative to each position's scale.
//!
//! The tiny models are regenerated deterministically by `scripts/goldens/tiny_models.py`; the
//! real ones come from `make models`. A missing model folder skips its golden with a visible
//! line, unless `MLX_ENGINE_REQUIRE_MODELS=1` (set by `make test`), where it fails.

mod measured;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mlx_engine::api::{Array, Dtype, DynModel, Input};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::generate::{generate, GenContext, GenerateRequest, Token};
use mlx_engine::model::{load_tokenizer, load_with, DtypeChoice};
use mlx_engine::plugin_host::{HostOptions, PluginHost};
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::Value;

/// What one golden's comparison is held to; see docs/testing.md for the measured spread.
#[derive(Clone, Copy)]
struct Bounds {
    /// `|logprob - mlx-lm's|` of every agreed token.
    logprob: f32,
    /// `|top-2 gap - mlx-lm's|` at every agreed step: how far rounding moves a decision. A step
    /// whose recorded gap is at most this is a near-tie that may go either way.
    tie_margin: f32,
    /// Prompt-logit summaries (max, mean, std, 16 fixed ids per position): `|diff|` over the
    /// position's scale `max(|max logit|, 1)`, since the rounding noise of a logit grows with
    /// the magnitude of the sums behind it. `None` for runs that don't compare them (bf16).
    prompt_logits_rel: Option<f32>,
}

/// f32 weights, f32 compute. Worst measured (6 BLAS runs here, 5 on an AVX-512 Xeon): logprob
/// 3.6e-5, gap 2.4e-4, prompt logits 6.7e-5 of scale; bounds 4.1x, 4.2x and 3.7x those.
const F32: Bounds = Bounds { logprob: 1.5e-4, tie_margin: 1e-3, prompt_logits_rel: Some(2.5e-4) };
/// bf16 weights and compute: bf16 logits of magnitude 16..32 move in steps of 1/8, and the
/// engine's bf16 forward rounds in places mlx-lm's does not, so logits differ by a step or two
/// under every kernel alike. Worst measured: logprob 0.138, gap 0.25; bounds 3.6x and 3x.
const BF16: Bounds = Bounds { logprob: 0.5, tie_margin: 0.75, prompt_logits_rel: None };
/// f32 with an 8-bit KV cache: f32 noise flips the rounding of single quantized keys and values
/// by a whole step (1/255 of a group's range). Worst measured: logprob 0.093, gap 0.24; bounds
/// 3.2x and 3.1x. A 4-bit cache still misses the 8-bit golden by 0.75 in logprobs.
const KV8: Bounds = Bounds { logprob: 0.3, tie_margin: 0.75, prompt_logits_rel: None };

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn golden(name: &str) -> Value {
    let path = root().join("tests/goldens").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The model folder of a golden, or `None` (with a visible note) when it is absent and not
/// required.
fn model_dir(g: &Value) -> Option<PathBuf> {
    let rel = g["header"]["model_dir"].as_str().unwrap();
    let dir = match rel.strip_prefix("models/") {
        Some(rest) => measured::models_dir().join(rest),
        None => root().join(rel),
    };
    if !dir.join("config.json").exists() && rel.starts_with("target/goldens-models") {
        // Regenerate the deterministic tiny models with the project venv.
        let python = root().join(".venv/bin/python");
        let out = root().join("target/goldens-models");
        let status =
            std::process::Command::new(&python).arg(root().join("scripts/goldens/tiny_models.py")).arg(&out).status();
        assert!(status.is_ok_and(|s| s.success()), "could not run scripts/goldens/tiny_models.py");
    }
    let name = format!("parity {}", g["header"]["name"].as_str().unwrap());
    if !measured::have_models(&name, &[&dir.join("config.json")]) {
        return None;
    }
    if !dir.join("tokenizer.json").exists() {
        write_id_tokenizer(&dir);
    }
    Some(dir)
}

/// The tiny goldens are recorded on token ids; generation still wants a tokenizer, so give
/// the folder a word-level one whose token `i` is the text `<i>`.
fn write_id_tokenizer(dir: &Path) {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap();
    let map: serde_json::Map<String, Value> = (0..vocab).map(|i| (format!("<{i}>"), Value::from(i))).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": map, "unk_token": "<0>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

fn host() -> PluginHost {
    PluginHost::new(&HostOptions::standard(vec![], None)).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().map_or(f32::NAN, |f| f as f32)).collect()
}

/// One comparison against a golden: the real check, or a control run of a deliberately wrong
/// model, whose values stay out of the spread log.
#[derive(Clone, Copy)]
struct Run {
    golden: &'static str,
    control: bool,
}

impl Run {
    fn of(golden: &'static str) -> Run {
        Run { golden, control: false }
    }

    fn control(golden: &'static str) -> Run {
        Run { golden, control: true }
    }

    fn label(&self) -> String {
        if self.control {
            format!("control run against {}", self.golden)
        } else {
            self.golden.to_string()
        }
    }

    fn within(&self, what: &str, value: f32, bound: f32) -> bool {
        if self.control {
            value <= bound
        } else {
            measured::within(&format!("{}/{what}", self.golden), value, bound)
        }
    }
}

/// What one golden's comparison covered.
#[derive(Debug, Default)]
struct Summary {
    prompts: usize,
    /// Greedy steps where the engine picked mlx-lm's token.
    agreed_steps: usize,
    /// Prompts whose continuations parted at a near-tie.
    parted_at_near_tie: usize,
}

/// One prompt's greedy run against the golden's: the number of agreed steps, or why it fails.
/// `tokens` and `top2` (the engine's two most likely tokens per step) come from the engine.
fn compare_steps(
    run: Run,
    p: &Value,
    tokens: &[Token],
    top2: &[Vec<Token>],
    bounds: &Bounds,
    summary: &mut Summary,
) -> Result<(), String> {
    let prompt = p["name"].as_str().unwrap();
    let (want, lp, gaps) = (ids(&p["generated_ids"]), floats(&p["logprobs"]), floats(&p["top2_gap"]));
    if tokens.len() > want.len() || top2.len() != tokens.len() {
        return Err(format!("prompt `{prompt}`: {} tokens for {} recorded steps", tokens.len(), want.len()));
    }
    let (mut worst_lp, mut worst_gap) = (0.0f32, 0.0f32);
    for (step, t) in tokens.iter().enumerate() {
        if t.id != want[step] {
            if gaps[step] <= bounds.tie_margin {
                measured::note(format_args!(
                    "note: {} `{prompt}`: parts from mlx-lm at step {step}, a near-tie (recorded top-2 gap \
                     {:.2e} <= {:.1e}); {step} steps compared",
                    run.label(),
                    gaps[step],
                    bounds.tie_margin
                ));
                summary.parted_at_near_tie += 1;
                break;
            }
            return Err(format!(
                "prompt `{prompt}`: greedy token {step} is {}, mlx-lm's is {} (a decided step: recorded top-2 gap \
                 {:.3e} > {:.1e})",
                t.id, want[step], gaps[step], bounds.tie_margin
            ));
        }
        summary.agreed_steps += 1;
        worst_lp = worst_lp.max((t.logprob - lp[step]).abs());
        let gap = top2[step][0].logprob - top2[step][1].logprob;
        worst_gap = worst_gap.max((gap - gaps[step]).abs());
    }
    if !run.within("logprob", worst_lp, bounds.logprob) {
        return Err(format!(
            "prompt `{prompt}`: logprobs differ from mlx-lm's by {worst_lp:e} (> {:e})",
            bounds.logprob
        ));
    }
    if !run.within("top2-gap", worst_gap, bounds.tie_margin) {
        return Err(format!(
            "prompt `{prompt}`: top-2 gaps differ from mlx-lm's by {worst_gap:e} (> {:e})",
            bounds.tie_margin
        ));
    }
    summary.prompts += 1;
    Ok(())
}

/// Compares the per-position prompt-logit summaries of one cache-less forward pass; returns
/// the worst relative difference.
fn check_prompt_logits(run: Run, model: &dyn DynModel, p: &Value, fixed: &[u32], rel: f32) -> Result<f32, String> {
    let prompt = p["name"].as_str().unwrap();
    let x: Vec<i32> = ids(&p["prompt_ids"]).iter().map(|&t| t as i32).collect();
    let mut cache = KvCache::new(model.cache_layout());
    let logits = model
        .forward(Input::Tokens(&Array::from_slice(&x, &[1, x.len() as i32]).unwrap()), &mut cache)
        .unwrap()
        .astype(Dtype::F32)
        .unwrap();
    let vocab = logits.dim(-1).unwrap() as usize;
    let all = logits.to_vec_f32().unwrap();
    let want = &p["prompt_logits"]["per_position"];
    let (maxes, means, stds, fixed_want) =
        (floats(&want["max"]), floats(&want["mean"]), floats(&want["std"]), &want["fixed_ids_logits"]);
    let (mut worst, mut near_ties) = (0.0f32, 0);
    for (pos, row) in all.chunks(vocab).enumerate() {
        let scale = maxes[pos].abs().max(1.0);
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / vocab as f64;
        let std = (row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / vocab as f64).sqrt();
        let (mut top1, mut top2) = ((0usize, f32::NEG_INFINITY), f32::NEG_INFINITY);
        for (i, &v) in row.iter().enumerate() {
            if v > top1.1 {
                top2 = top1.1;
                top1 = (i, v);
            } else if v > top2 {
                top2 = v;
            }
        }
        let mut got = vec![top1.1, mean as f32, std as f32];
        got.extend(fixed.iter().map(|&i| row[i as usize]));
        let mut exp = vec![maxes[pos], means[pos], stds[pos]];
        exp.extend(floats(&fixed_want[pos]));
        let diff = got.iter().zip(&exp).map(|(g, e)| (g - e).abs()).fold(0.0f32, f32::max);
        worst = worst.max(diff / scale);
        // Each logit may move by `rel * scale`, so a top-2 gap within twice that may flip.
        let want_argmax = want["argmax"][pos].as_u64().unwrap() as usize;
        if top1.1 - top2 <= 2.0 * rel * scale {
            near_ties += 1;
        } else if top1.0 != want_argmax {
            return Err(format!("prompt `{prompt}` position {pos}: argmax {} but mlx-lm's is {want_argmax}", top1.0));
        }
    }
    if near_ties > 0 {
        measured::note(format_args!(
            "note: {} `{prompt}`: argmax not compared at {near_ties} near-tie positions",
            run.label()
        ));
    }
    if !run.within("prompt-logits-rel", worst, rel) {
        return Err(format!(
            "prompt `{prompt}`: prompt logits differ from mlx-lm by {worst:e} of their scale (> {rel:e})"
        ));
    }
    Ok(worst)
}

/// Flattens a generation's results into its tokens and each token's top-2 alternatives.
fn collect(results: impl IntoIterator<Item = mlx_engine::generate::GenerationResult>) -> (Vec<Token>, Vec<Vec<Token>>) {
    let (mut tokens, mut top2) = (Vec::new(), Vec::new());
    for r in results {
        tokens.extend(r.tokens);
        top2.extend(r.top_logprobs);
    }
    (tokens, top2)
}

fn greedy_request(p: &Value, steps: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: ids(&p["prompt_ids"]),
        sampling: SamplingOverrides { temp: Some(0.0), top_logprobs: Some(2), ..Default::default() },
        max_tokens: Some(steps),
        ignore_eos: true,
        ignore_prompt_cache: true,
        ..Default::default()
    }
}

/// [`greedy_request`] through the logits processors the golden was recorded with
/// (`header.logits_processors`, make_logits_processors' arguments), if any.
fn golden_request(g: &Value, p: &Value, steps: usize) -> GenerateRequest {
    let mut req = greedy_request(p, steps);
    let procs = &g["header"]["logits_processors"];
    if let Some(penalty) = procs["repetition_penalty"].as_f64() {
        req.sampling.repetition_penalty = Some(penalty as f32);
        req.sampling.repetition_context_size = procs["repetition_context_size"].as_u64().map(|n| n as usize);
    }
    req
}

/// Runs the golden `name`'s prompts from the model folder `dir` through the engine's
/// generation path, for at most `steps` steps each.
fn compare(run: Run, dir: &Path, dtype: DtypeChoice, steps: usize, bounds: Bounds) -> Result<Summary, String> {
    let name = run.golden;
    let g = golden(name);
    let host = host();
    let loaded = load_with(dir, &host, dtype, mlx_engine::api::runtime::Device::Cpu).unwrap();
    let tokenizer = load_tokenizer(&loaded).unwrap();
    let gen_config = Value::Object(Default::default());
    let ctx = GenContext {
        model: loaded.model.as_ref(),
        tokenizer: &tokenizer,
        generation_config: &gen_config,
        context_length: loaded.context_length,
        vocab_size: loaded.vocab_size,
        vision: None,
    };
    let fixed = ids(&g["header"]["fixed_vocab_ids"]);
    let mut summary = Summary::default();
    for p in g["prompts"].as_array().unwrap() {
        let steps = steps.min(p["generated_ids"].as_array().unwrap().len());
        let mut results = Vec::new();
        generate(&ctx, &golden_request(&g, p, steps), &AtomicBool::new(false), &mut |r| {
            results.push(r);
            true
        })
        .unwrap();
        let (tokens, top2) = collect(results);
        compare_steps(run, p, &tokens, &top2, &bounds, &mut summary)?;
        if let Some(rel) = bounds.prompt_logits_rel {
            let worst = check_prompt_logits(run, loaded.model.as_ref(), p, &fixed, rel)?;
            eprintln!("{name} `{}`: prompt-logit diff {worst:.2e} of scale", p["name"]);
        }
    }
    eprintln!("{name}: {summary:?}");
    Ok(summary)
}

/// The golden's comparison from its own model folder; `None` when the folder is missing (and
/// not required).
fn run(name: &'static str, dtype: DtypeChoice, steps: usize, bounds: Bounds) -> Option<Summary> {
    let dir = model_dir(&golden(name))?;
    Some(compare(Run::of(name), &dir, dtype, steps, bounds).unwrap_or_else(|e| panic!("{name}: {e}")))
}

#[test]
fn tiny_llama_f32_matches_mlx_lm() {
    assert!(run("tiny-llama", DtypeChoice::F32, 64, F32).unwrap().prompts >= 3);
}

#[test]
fn tiny_llama_llama3_rope_f32_matches_mlx_lm() {
    assert!(run("tiny-llama-rope-llama3", DtypeChoice::F32, 64, F32).unwrap().prompts >= 3);
}

#[test]
fn tiny_gemma3_f32_matches_mlx_lm() {
    assert!(run("tiny-gemma3", DtypeChoice::F32, 64, F32).unwrap().prompts >= 3);
}

#[test]
fn smollm2_f32_matches_mlx_lm() {
    if let Some(s) = run("smollm2-135m-instruct-f32", DtypeChoice::F32, 64, F32) {
        assert!(s.prompts >= 5 && s.agreed_steps >= 4 * 64, "{s:?}");
    }
}

/// Greedy parity through mlx-lm's repetition penalty (1.3 over the last 20 tokens, the prompt
/// included). The engine's decode stays pipelined: each token is folded into the penalty on the
/// device before it is read back (`LogitsProcessor::process_ahead`).
#[test]
fn smollm2_f32_repetition_penalty_matches_mlx_lm() {
    if let Some(s) = run("smollm2-135m-instruct-f32-reppen", DtypeChoice::F32, 32, F32) {
        assert!(s.prompts >= 4 && s.agreed_steps >= 4 * 32, "{s:?}");
    }
}

#[test]
fn gemma3_270m_f32_matches_mlx_lm() {
    if let Some(s) = run("gemma3-270m-f32", DtypeChoice::F32, 64, F32) {
        assert!(s.prompts >= 4 && s.agreed_steps >= 3 * 64, "{s:?}");
    }
}

#[test]
fn smollm2_bf16_matches_mlx_lm() {
    if let Some(s) = run("smollm2-135m-instruct-bf16", DtypeChoice::BF16, 32, BF16) {
        assert!(s.prompts >= 4 && s.agreed_steps >= 2 * 32, "{s:?}");
    }
}

#[test]
fn gemma3_270m_bf16_matches_mlx_lm() {
    if let Some(s) = run("gemma3-270m-bf16", DtypeChoice::BF16, 32, BF16) {
        assert!(s.prompts >= 5 && s.agreed_steps >= 2 * 32, "{s:?}");
    }
}

/// The bounds still mean something: tiny-gemma3 with its local and global RoPE bases swapped
/// (a real bug class: each layer kind rotating at the other's frequencies) fails parity.
#[test]
fn swapped_rope_bases_fail_parity() {
    let g = golden("tiny-gemma3");
    let dir = model_dir(&g).unwrap();
    let wrong = tempfile::tempdir().unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(file), wrong.path().join(file)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let (global, local) = (config["rope_theta"].clone(), config["rope_local_base_freq"].clone());
    assert_ne!(global, local);
    (config["rope_theta"], config["rope_local_base_freq"]) = (local, global);
    std::fs::write(wrong.path().join("config.json"), config.to_string()).unwrap();
    match compare(Run::control("tiny-gemma3"), wrong.path(), DtypeChoice::F32, 64, F32) {
        Ok(s) => panic!("a model with swapped RoPE bases passed parity: {s:?}"),
        Err(e) => eprintln!("swapped RoPE bases fail as they should: {e}"),
    }
}

const KV8_GOLDEN: &str = "smollm2-135m-instruct-f32-kv8";

/// The KV-cache settings the kv8 golden was recorded with (`generate_step`'s arguments).
fn kv8_cache(g: &Value) -> CacheConfig {
    let kv = &g["header"]["kv_cache"];
    let int = |k: &str| kv[k].as_u64().unwrap_or_else(|| panic!("{KV8_GOLDEN}: header.kv_cache.{k} missing"));
    CacheConfig {
        kv_bits: Some(int("kv_bits") as i32),
        kv_group_size: int("kv_group_size") as i32,
        quantized_kv_start: int("quantized_kv_start") as usize,
        ..Default::default()
    }
}

/// Runs the kv8 golden's prompts through `ModelKit` (worker thread, prompt cache, chunked
/// prefill), as a host would, with the KV cache configured as `cache`.
fn compare_kv(run: Run, dir: &Path, cache: CacheConfig) -> Result<Summary, String> {
    let g = golden(KV8_GOLDEN);
    let kit = ModelKit::load(dir, LoadOptions { cache, ..Default::default() }).unwrap();
    let steps = g["header"]["decode_steps"].as_u64().unwrap() as usize;
    let mut summary = Summary::default();
    for p in g["prompts"].as_array().unwrap() {
        let results = kit.generate(greedy_request(p, steps)).unwrap().map(|r| r.unwrap());
        let (tokens, top2) = collect(results);
        compare_steps(run, p, &tokens, &top2, &KV8, &mut summary)?;
    }
    eprintln!("{KV8_GOLDEN}: {summary:?}");
    Ok(summary)
}

/// Greedy parity with mlx-lm under a quantized KV cache (`generate_step(..., kv_bits=8,
/// kv_group_size=64, quantized_kv_start=0)`): the prompt's prefill chunk attends densely, then
/// every layer is quantized and the last prompt token and each decode step attend through
/// quantized matmuls.
///
/// On the recording machine's kernel the engine matched this golden exactly, but across
/// kernels the 8-bit cache's noise (a rounding flip moves a value by a whole step) is as large
/// as the effect of quantizing at all: mlx-lm's own dense and 8-bit runs differ by 0.065 in
/// logprobs before they part. So this is an end-to-end agreement check through the real
/// generation path; the conversion timing and the quantized attention themselves are pinned
/// exactly, independent of BLAS, by `kv_cache_quantized.rs`.
#[test]
fn smollm2_f32_kv8_matches_mlx_lm() {
    let g = golden(KV8_GOLDEN);
    let Some(dir) = model_dir(&g) else { return };
    let steps = g["header"]["decode_steps"].as_u64().unwrap() as usize;
    assert!(steps >= 16, "{KV8_GOLDEN} records {steps} steps, fewer than 16");
    let s = compare_kv(Run::of(KV8_GOLDEN), &dir, kv8_cache(&g)).unwrap_or_else(|e| panic!("{KV8_GOLDEN}: {e}"));
    assert!(s.prompts >= 4 && s.agreed_steps >= 2 * steps, "{KV8_GOLDEN}: {s:?}");
}

/// The kv8 bounds still mean something: a 4-bit cache, whose rounding error is 16x the 8-bit
/// one's, fails the 8-bit golden.
#[test]
fn kv4_cache_fails_the_kv8_golden() {
    let g = golden(KV8_GOLDEN);
    let Some(dir) = model_dir(&g) else { return };
    match compare_kv(Run::control(KV8_GOLDEN), &dir, CacheConfig { kv_bits: Some(4), ..kv8_cache(&g) }) {
        Ok(s) => panic!("a 4-bit KV cache passed the 8-bit golden: {s:?}"),
        Err(e) => eprintln!("a 4-bit KV cache fails as it should: {e}"),
    }
}
