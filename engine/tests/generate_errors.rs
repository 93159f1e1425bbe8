//! Bad requests and bad model folders through the public API (`ModelKit::load`,
//! `ModelKit::generate`, `generate::prepare`): each fails with a message naming the parameter
//! and its allowed range (or the folder and the missing file), before any model work, and the
//! same model keeps serving requests afterwards. Also the ordinary ends of a generation:
//! token limit, stop strings (with held text flushed), cancellation, seeded sampling and
//! logprobs.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod tokenizer_fixtures;

use std::path::Path;

use common_models::*;
use mlx_engine::generate::{
    prepare, GenContext, GenerateRequest, GenerationResult, GenerationStats, StopCondition, StopReason, Token,
};
use mlx_engine::model::{load_tokenizer, DtypeChoice};
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::ModelKit;

/// Everything one generation streamed.
struct Run {
    text: String,
    tokens: Vec<Token>,
    top: Vec<Vec<Token>>,
    last_text: String,
    stop: StopCondition,
    stats: GenerationStats,
}

fn run(kit: &ModelKit, req: GenerateRequest) -> mlx_engine::Result<Run> {
    let mut generation = kit.generate(req)?;
    let mut results: Vec<GenerationResult> = Vec::new();
    for r in generation.by_ref() {
        results.push(r?);
    }
    let stats = generation.stats().cloned().expect("stats once the stream ended");
    let n = results.len();
    assert!(n >= 1, "a stream ends with a result carrying the stop condition");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.stop_condition.is_some(), i == n - 1, "only the last result has a stop condition");
        assert!(r.top_logprobs.is_empty() || r.top_logprobs.len() == r.tokens.len());
    }
    Ok(Run {
        text: results.iter().map(|r| r.text.as_str()).collect(),
        tokens: results.iter().flat_map(|r| r.tokens.clone()).collect(),
        top: results.iter().flat_map(|r| r.top_logprobs.clone()).collect(),
        last_text: results[n - 1].text.clone(),
        stop: results[n - 1].stop_condition.clone().expect("stop condition"),
        stats,
    })
}

fn run_ok(kit: &ModelKit, req: GenerateRequest) -> Run {
    run(kit, req).unwrap_or_else(|e| panic!("generation failed: {e}"))
}

fn err_msg(kit: &ModelKit, req: GenerateRequest) -> String {
    match run(kit, req) {
        Ok(r) => panic!("expected an error, generated {:?}", r.text),
        Err(e) => e.to_string(),
    }
}

fn ids_of(r: &Run) -> Vec<u32> {
    r.tokens.iter().map(|t| t.id).collect()
}

fn req(prompt_tokens: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt_tokens, max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }
}

/// The model that writes printable text, and its prompt.
fn printable() -> (tempfile::TempDir, Vec<u32>) {
    let m = TinyModel::printable(3);
    (m.write_temp(), prompt(6, Tok::ByteLevel, 1))
}

/// A request still works on this model: 3 tokens, token limit.
fn assert_serves(kit: &ModelKit, prompt: &[u32]) {
    let r = run_ok(kit, req(prompt.to_vec(), 3));
    assert_eq!(r.tokens.len(), 3);
    assert_eq!(r.stop.reason, StopReason::TokenLimit);
}

#[test]
fn bad_sampling_parameters_fail_with_their_range_and_the_model_keeps_working() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    let s = SamplingOverrides::default;
    let cases: Vec<(SamplingOverrides, &str)> = vec![
        (
            SamplingOverrides { temp: Some(-0.5), ..s() },
            "invalid parameter `temp`: must be a finite number >= 0 (0 = greedy), got -0.5",
        ),
        (
            SamplingOverrides { temp: Some(f32::NAN), ..s() },
            "invalid parameter `temp`: must be a finite number >= 0 (0 = greedy), got NaN",
        ),
        (
            SamplingOverrides { top_p: Some(1.5), ..s() },
            "invalid parameter `top_p`: must be in [0, 1] (0 or 1 disables it), got 1.5",
        ),
        (
            SamplingOverrides { top_p: Some(-0.1), ..s() },
            "invalid parameter `top_p`: must be in [0, 1] (0 or 1 disables it), got -0.1",
        ),
        (
            SamplingOverrides { min_p: Some(1.01), ..s() },
            "invalid parameter `min_p`: must be in [0, 1] (0 disables it), got 1.01",
        ),
        (
            SamplingOverrides { min_p: Some(-2.0), ..s() },
            "invalid parameter `min_p`: must be in [0, 1] (0 disables it), got -2",
        ),
        (
            SamplingOverrides { top_k: Some(-1), ..s() },
            "invalid parameter `top_k`: must be >= 0 (0 disables it), got -1",
        ),
        (
            SamplingOverrides { top_logprobs: Some(21), ..s() },
            "invalid parameter `top_logprobs`: must be in [0, 20], got 21",
        ),
    ];
    for (sampling, want) in cases {
        let r = GenerateRequest { sampling, ..req(p.clone(), 4) };
        assert_eq!(err_msg(&kit, r), want);
        assert_serves(&kit, &p);
    }
    for stops in [vec![String::new()], vec!["ok".to_string(), String::new()]] {
        let r = GenerateRequest { stop_strings: stops, ..req(p.clone(), 4) };
        assert_eq!(err_msg(&kit, r), "invalid parameter `stop`: empty stop string");
    }
    assert_eq!(err_msg(&kit, req(p.clone(), 0)), "invalid parameter `max_tokens`: must be at least 1");

    // The edges of every range are accepted.
    let edges = SamplingOverrides {
        temp: Some(0.0),
        top_p: Some(1.0),
        min_p: Some(0.0),
        top_k: Some(0),
        top_logprobs: Some(20),
        ..s()
    };
    let r = run_ok(&kit, GenerateRequest { sampling: edges, ..req(p.clone(), 2) });
    assert_eq!(r.top.len(), 2);
    assert!(r.top.iter().all(|alts| alts.len() == 20));
    let r = run_ok(
        &kit,
        GenerateRequest {
            sampling: SamplingOverrides { temp: Some(0.7), top_p: Some(0.0), min_p: Some(1.0), ..s() },
            ..req(p.clone(), 2)
        },
    );
    assert_eq!(r.tokens.len(), 2);
    assert_serves(&kit, &p);
}

#[test]
fn prompt_longer_than_the_context_names_both_numbers() {
    let (dir, _) = printable();
    let kit = load_kit(dir.path());
    assert_eq!(kit.info().context_length, Some(MAX_POS));
    let long = |n: usize| prompt(n, Tok::ByteLevel, 2);
    let none =
        |n: usize| GenerateRequest { prompt_tokens: long(n), max_tokens: None, ignore_eos: true, ..Default::default() };
    assert_eq!(
        err_msg(&kit, none(70)),
        "invalid parameter `prompt`: the prompt has 70 tokens, more than the model's context length of 64"
    );
    assert_eq!(
        err_msg(&kit, none(64)),
        "invalid parameter `prompt`: the prompt has 64 tokens, which leaves no room for new tokens in the model's context length of 64"
    );
    assert_eq!(
        err_msg(&kit, req(long(60), 10)),
        "invalid parameter `max_tokens`: the prompt has 60 tokens and max_tokens is 10 (together 70), more than the model's context length of 64"
    );
    assert_eq!(
        err_msg(&kit, req(long(64), 1)),
        "invalid parameter `max_tokens`: the prompt has 64 tokens and max_tokens is 1 (together 65), more than the model's context length of 64"
    );
    // Exactly filling the context is fine; without max_tokens the rest of the context is the budget.
    let r = run_ok(&kit, req(long(54), 10));
    assert_eq!((r.tokens.len(), r.stop.reason), (10, StopReason::TokenLimit));
    let r = run_ok(&kit, none(60));
    assert_eq!((r.tokens.len(), r.stop.reason), (4, StopReason::TokenLimit));
    assert_eq!((r.stats.prompt_tokens, r.stats.generated_tokens), (60, 4));
}

#[test]
fn prepare_checks_the_request_before_any_model_work() {
    let (dir, _) = printable();
    let m = load(dir.path(), DtypeChoice::F32);
    let tokenizer = load_tokenizer(&m).expect("tokenizer");
    let ctx = GenContext {
        model: m.model.as_ref(),
        tokenizer: &tokenizer,
        generation_config: &m.generation_config,
        context_length: m.context_length,
        vocab_size: m.vocab_size,
        vision: None,
    };
    let p = prompt(60, Tok::ByteLevel, 3);
    let none = GenerateRequest { prompt_tokens: p.clone(), ..Default::default() };
    let (prompt_out, budget, params) = prepare(&ctx, &none).expect("fits");
    assert_eq!((prompt_out, budget, params.temp), (p.clone(), 4, 0.0));
    let (_, budget, _) = prepare(&ctx, &req(p[..20].to_vec(), 7)).expect("fits");
    assert_eq!(budget, 7);
    let e = prepare(&ctx, &req(p.clone(), 5)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("60 tokens") && e.contains("max_tokens is 5") && e.contains("context length of 64"), "{e}");
    let bad = GenerateRequest { sampling: SamplingOverrides { top_k: Some(-3), ..Default::default() }, ..req(p, 1) };
    let e = prepare(&ctx, &bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(e, "invalid parameter `top_k`: must be >= 0 (0 disables it), got -3");
    let e = prepare(&ctx, &req(vec![], 3)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("empty and the tokenizer has no BOS"), "{e}");
}

#[test]
fn empty_prompt_starts_from_bos_or_is_an_error() {
    // SentencePiece tokenizer: BOS `<s>` = 1.
    let m = TinyModel::new(Arch::Gemma3, 5);
    let dir = m.write_temp();
    let kit = load_kit(dir.path());
    assert_eq!(kit.tokenizer().bos_token_id(), Some(1));
    let empty = run_ok(&kit, req(vec![], 5));
    let bos = run_ok(&kit, req(vec![1], 5));
    assert_eq!(empty.tokens.len(), 5);
    assert_eq!(empty.stats.prompt_tokens, 1, "the prompt became [BOS]");
    assert_eq!(ids_of(&empty), ids_of(&bos), "same as an explicit [BOS] prompt");
    // The first token is the argmax of the model's logits for [BOS] alone.
    let logits = last_position(&full_forward(&load(dir.path(), DtypeChoice::F32), &[1]));
    let argmax = logits.argmax(0, false).expect("argmax").item::<u32>().expect("id");
    assert_eq!(empty.tokens[0].id, argmax);

    // Byte-level tokenizer: no BOS.
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    assert_eq!(kit.tokenizer().bos_token_id(), None);
    assert_eq!(
        err_msg(&kit, req(vec![], 5)),
        "invalid parameter `prompt`: the prompt is empty and the tokenizer has no BOS token to start from"
    );
    assert_serves(&kit, &p);
}

fn load_err(path: &Path) -> String {
    match try_load_kit(path) {
        Ok(k) => panic!("{} loaded as {}", path.display(), k.info().model_type),
        Err(e) => e.to_string(),
    }
}

/// A complete folder, then with `remove` deleted and a corrupt model.safetensors when `corrupt`.
fn broken_folder(remove: &[&str], corrupt: bool) -> tempfile::TempDir {
    let dir = TinyModel::new(Arch::Llama, 9).write_temp();
    for f in remove {
        std::fs::remove_file(dir.path().join(f)).expect("remove");
    }
    if corrupt {
        std::fs::write(dir.path().join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
            .expect("write");
    }
    dir
}

#[test]
fn bad_model_folders_fail_before_weights_are_read() {
    let (good, p) = printable();
    let kit = load_kit(good.path());

    let missing = good.path().join("no-such-model");
    assert_eq!(load_err(&missing), format!("{}: no such file or folder", missing.display()));

    // A corrupt weights file is only noticed once the weights are read...
    let d = broken_folder(&[], true);
    let msg = load_err(d.path());
    assert!(
        msg.starts_with(&format!("{}: invalid safetensors header", d.path().join("model.safetensors").display())),
        "{msg}"
    );
    // ...so these errors, with the same corrupt file present, come before any weight is read.
    let d = broken_folder(&["config.json"], true);
    assert_eq!(load_err(d.path()), format!("{}: no config.json in the model folder", d.path().display()));
    let d = broken_folder(&["tokenizer.json"], true);
    assert_eq!(load_err(d.path()), format!("{}: no tokenizer.json in the model folder", d.path().display()));
    let d = broken_folder(&["model.safetensors"], false);
    assert_eq!(
        load_err(d.path()),
        format!(
            "{}: no weights: expected model.safetensors, a sharded index, or *.safetensors files",
            d.path().display()
        )
    );

    let d = broken_folder(&[], true);
    let mut config = config_json(Arch::Llama, Tok::ByteLevel);
    config["model_type"] = serde_json::json!("mamba_tiny");
    tokenizer_fixtures::write_json(d.path(), "config.json", &config);
    let msg = load_err(d.path());
    assert!(msg.starts_with("no architecture for model type `mamba_tiny`; available: "), "{msg}");
    for (t, plugin) in
        [("llama", "llama"), ("mistral", "llama"), ("qwen2", "llama"), ("qwen3", "llama"), ("gemma3_text", "gemma3")]
    {
        assert!(msg.contains(&format!("`{t}` (plugin {plugin})")), "lists {t}: {msg}");
    }
    assert!(!msg.contains("safetensors"), "not about the weights: {msg}");
    config.as_object_mut().expect("object").remove("model_type");
    tokenizer_fixtures::write_json(d.path(), "config.json", &config);
    assert_eq!(
        load_err(d.path()),
        format!("{}: field `model_type` (a string) is missing", d.path().join("config.json").display())
    );

    // The process and the model loaded before all this are fine.
    assert_serves(&kit, &p);
    let again = load_kit(good.path());
    assert_serves(&again, &p);
}

#[test]
fn token_limit_gives_exactly_n_tokens() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    for n in [1, 9] {
        let r = run_ok(&kit, req(p.clone(), n));
        assert_eq!(r.tokens.len(), n);
        assert_eq!(
            r.stop,
            StopCondition { reason: StopReason::TokenLimit, stop_string: String::new(), stop_tokens: vec![] }
        );
        assert_eq!((r.stats.prompt_tokens, r.stats.generated_tokens), (6, n));
        assert_eq!(r.text, kit.tokenizer().decode(&ids_of(&r), false).expect("decode"));
    }
}

#[test]
fn stop_strings_cut_the_text_and_held_text_is_flushed_at_the_limit() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    let full = run_ok(&kit, req(p.clone(), 20));
    assert_eq!(full.text.len(), 20, "one ASCII character per token: {:?}", full.text);

    // A stop string taken from the middle of the output: the text ends right before its first
    // occurrence, and generation stops at the token that completed it.
    let stop = full.text[8..11].to_string();
    let at = full.text.find(&stop).expect("occurs");
    let r = run_ok(&kit, GenerateRequest { stop_strings: vec!["never".into(), stop.clone()], ..req(p.clone(), 20) });
    assert_eq!(r.stop.reason, StopReason::StopString);
    assert_eq!(r.stop.stop_string, stop);
    assert_eq!(r.text, full.text[..at]);
    assert_eq!(r.tokens.len(), at + stop.len(), "tokens up to the one completing {stop:?}");
    assert_eq!(ids_of(&r), ids_of(&full)[..at + stop.len()]);
    assert_eq!(r.stop.stop_tokens.last(), r.tokens.last().map(|t| &t.id));

    // A stop string that starts like the end of the output but never completes: its prefix is
    // held back, then flushed when the token limit ends the stream. Nothing is lost.
    let tail = &full.text[full.text.len() - 2..];
    let stop = format!("{tail}zzz");
    assert!(!full.text.contains(&stop));
    let r = run_ok(&kit, GenerateRequest { stop_strings: vec![stop], ..req(p.clone(), 20) });
    assert_eq!(r.stop.reason, StopReason::TokenLimit);
    assert_eq!(r.text, full.text, "held text is flushed");
    assert!(
        r.last_text.ends_with(tail) && r.last_text.len() >= 2,
        "the last chunk carries the held {tail:?}: {:?}",
        r.last_text
    );
    assert_eq!(ids_of(&r), ids_of(&full));
}

#[test]
fn cancellation_ends_with_user_cancelled() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    let long = GenerateRequest { prompt_tokens: p.clone(), ignore_eos: true, ..Default::default() };

    // Cancelled before the first token: the worker notices after the prefill.
    let mut g = kit.generate(long.clone()).expect("start");
    g.cancel_handle().cancel();
    let results: Vec<GenerationResult> = g.by_ref().map(|r| r.expect("result")).collect();
    let last = results.last().and_then(|r| r.stop_condition.clone()).expect("stop condition");
    assert_eq!(last.reason, StopReason::UserCancelled);
    assert!(results.iter().all(|r| r.tokens.is_empty()), "no token after an immediate cancel");
    assert_eq!(g.stats().map(|s| s.generated_tokens), Some(0));

    // Cancelled mid-stream, after the first chunk.
    let mut g = kit.generate(long).expect("start");
    let handle = g.cancel_handle();
    let mut tokens = 0;
    let mut reason = None;
    for r in g.by_ref() {
        let r = r.expect("result");
        tokens += r.tokens.len();
        if tokens > 0 {
            handle.cancel();
        }
        reason = r.stop_condition.map(|s| s.reason).or(reason);
    }
    assert_eq!(reason, Some(StopReason::UserCancelled));
    assert!(tokens >= 1 && tokens < MAX_POS - p.len(), "stopped early: {tokens} tokens");
    assert_serves(&kit, &p);
}

#[test]
fn seeded_sampling_is_reproducible_and_reports_the_seed() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    let sampled = |seed: Option<u64>| GenerateRequest {
        sampling: SamplingOverrides { temp: Some(1.0), seed, ..Default::default() },
        ..req(p.clone(), 16)
    };
    let a = run_ok(&kit, sampled(Some(42)));
    let b = run_ok(&kit, sampled(Some(42)));
    assert_eq!(a.stats.seed, 42);
    assert_eq!(ids_of(&a), ids_of(&b), "same seed, same tokens");
    let c = run_ok(&kit, sampled(Some(43)));
    assert_ne!(ids_of(&a), ids_of(&c), "another seed, other tokens");
    let greedy = run_ok(&kit, req(p.clone(), 16));
    assert_ne!(ids_of(&a), ids_of(&greedy), "temperature 1 samples");

    // Without a seed one is drawn and reported; replaying it reproduces the tokens.
    let d = run_ok(&kit, sampled(None));
    let e = run_ok(&kit, sampled(Some(d.stats.seed)));
    assert_eq!(ids_of(&d), ids_of(&e), "the reported seed {} replays the request", d.stats.seed);
}

#[test]
fn greedy_logprobs_are_consistent_with_top_logprobs() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    let sampling = SamplingOverrides { top_logprobs: Some(5), ..Default::default() };
    let r = run_ok(&kit, GenerateRequest { sampling, ..req(p.clone(), 8) });
    assert_eq!(r.tokens.len(), 8);
    assert_eq!(r.top.len(), 8, "one list of alternatives per token");
    for (tok, alts) in r.tokens.iter().zip(&r.top) {
        assert!(tok.logprob <= 0.0 && tok.logprob.is_finite(), "{tok:?}");
        assert_eq!(alts.len(), 5);
        assert!(alts.windows(2).all(|w| w[0].logprob >= w[1].logprob), "sorted: {alts:?}");
        assert_eq!(alts[0].id, tok.id, "greedy picks the most likely token");
        assert!((alts[0].logprob - tok.logprob).abs() < 1e-6);
        assert!(alts.iter().all(|a| a.logprob <= 0.0));
        let mass: f32 = alts.iter().map(|a| a.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "probabilities of the top 5 sum to {mass}");
        assert_eq!(alts[0].text, tok.text);
    }
    // Without top_logprobs, no alternatives are reported but logprobs still are.
    let r = run_ok(&kit, req(p, 3));
    assert!(r.top.is_empty());
    assert!(r.tokens.iter().all(|t| t.logprob <= 0.0));
}

/// Requests without logits processors run the pipelined decode loop (the next step is queued
/// before the current token is read); requests with one wait for each token. Both must give
/// the same tokens and logprobs for the same seed. A zero logit bias is a processor that
/// changes nothing, so it switches paths without changing the maths.
#[test]
fn pipelined_and_stepwise_decoding_agree() {
    let (dir, p) = printable();
    let kit = load_kit(dir.path());
    for temp in [0.0, 1.0] {
        let with_bias = |bias: bool| GenerateRequest {
            sampling: SamplingOverrides {
                temp: Some(temp),
                seed: Some(7),
                logit_bias: bias.then(|| [(0u32, 0.0f32)].into_iter().collect()),
                ..Default::default()
            },
            ..req(p.clone(), 24)
        };
        let fast = run_ok(&kit, with_bias(false));
        let slow = run_ok(&kit, with_bias(true));
        assert_eq!(ids_of(&fast), ids_of(&slow), "temp {temp}: same tokens on both paths");
        let lp = |r: &Run| r.tokens.iter().map(|t| t.logprob).collect::<Vec<f32>>();
        assert_eq!(lp(&fast), lp(&slow), "temp {temp}: same logprobs on both paths");
    }
}
