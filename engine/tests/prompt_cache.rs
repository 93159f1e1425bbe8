//! The prompt cache and chunked prefill through the public API (`ModelKit`, `generate::prefill`):
//! how many prompt tokens come from cache for a follow-up turn, a branch and an exact repeat;
//! the T-11 checkpoint; LRU eviction; untrimmable caches (sliding windows, a wrapped
//! `max_kv_size` ring) restoring snapshots instead of trimming; cancelling a prefill and
//! resuming from the partial cache; chunked prefill matching an unchunked one; bad settings.
//!
//! Every reuse is also checked against a fresh model: the cache may save work, never change
//! the tokens. Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`).

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common_models::*;
use mlx_engine::cache::prompt_cache::{EntryKind, PromptCacheInfo};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::cli::common::CacheArgs;
use mlx_engine::generate::prefill::{chunk_size, prefill, OutputHead, Plan, ATTENTION_SCORE_BUDGET, MIN_CHUNK};
use mlx_engine::generate::{GenerateRequest, GenerationStats, NoProgress, PromptProgress, StopReason};
use mlx_engine::model::DtypeChoice;
use mlx_engine::{CancelHandle, ModelKit};
use mlx_engine_plugin_api::runtime::Device;

fn kit_with(dir: &Path, cache: CacheConfig, capacity: usize) -> mlx_engine::Result<ModelKit> {
    load_kit_with(dir, cache, capacity)
}

fn kit(dir: &Path) -> ModelKit {
    kit_with(dir, CacheConfig::default(), 10).expect("load")
}

/// A greedy request that ignores EOS (the tiny models' EOS is arbitrary).
fn req(prompt_tokens: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt_tokens, max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }
}

struct Run {
    tokens: Vec<u32>,
    stats: GenerationStats,
    stop: StopReason,
}

fn run_with(kit: &ModelKit, r: GenerateRequest, progress: Box<dyn PromptProgress>) -> Run {
    let mut g = kit.generate_with_progress(r, progress).expect("start");
    let mut tokens = Vec::new();
    let mut stop = None;
    for res in g.by_ref() {
        let res = res.unwrap_or_else(|e| panic!("generation failed: {e}"));
        tokens.extend(res.tokens.iter().map(|t| t.id));
        stop = res.stop_condition.map(|s| s.reason).or(stop);
    }
    Run { tokens, stats: g.stats().cloned().expect("stats"), stop: stop.expect("stop condition") }
}

fn run(kit: &ModelKit, r: GenerateRequest) -> Run {
    run_with(kit, r, Box::new(NoProgress))
}

/// The tokens a freshly loaded model (nothing cached yet) generates.
fn fresh_tokens(dir: &Path, cache: CacheConfig, r: GenerateRequest) -> Vec<u32> {
    run(&kit_with(dir, cache, 10).expect("load"), r).tokens
}

fn info(kit: &ModelKit) -> PromptCacheInfo {
    kit.prompt_cache_info().expect("cache info")
}

/// `base[..keep]` followed by `n` tokens that differ from `base[keep]`.
fn branch(base: &[u32], keep: usize, n: usize, tok: Tok) -> Vec<u32> {
    let mut out = base[..keep].to_vec();
    out.extend(prompt(n, tok, 77).into_iter().map(|t| if t == base[keep] { t + 1 } else { t }));
    out
}

#[test]
fn follow_up_branch_and_repeat_reuse_exact_prefixes() {
    let dir = TinyModel::new(Arch::Llama, 1).write_temp();
    let kit = kit(dir.path());
    let tok = Tok::ByteLevel;
    let p1 = prompt(20, tok, 1);

    let r1 = run(&kit, req(p1.clone(), 4));
    assert_eq!(r1.stats.cached_tokens, 0, "first request");
    assert_eq!(info(&kit).events.checkpoints, 1, "checkpoint at 20 - 11 = 9");

    // Follow-up turn: the conversation so far plus a new message. The cache holds the prompt
    // and all but the last generated token (which was sampled, never fed back).
    let mut p2 = p1.clone();
    p2.extend(&r1.tokens);
    p2.extend(prompt(6, tok, 2));
    let r2 = run(&kit, req(p2.clone(), 4));
    assert_eq!(r2.stats.cached_tokens, 20 + 4 - 1, "follow-up");
    assert_eq!(r2.tokens, fresh_tokens(dir.path(), CacheConfig::default(), req(p2.clone(), 4)));

    // Branch: an earlier message edited at position 15. The longer cache is trimmed back.
    let p3 = branch(&p1, 15, 10, tok);
    let r3 = run(&kit, req(p3.clone(), 4));
    assert_eq!(r3.stats.cached_tokens, 15, "branch");
    assert_eq!(r3.tokens, fresh_tokens(dir.path(), CacheConfig::default(), req(p3.clone(), 4)));

    // Exact repeat: everything but the last token, which seeds decoding.
    let r4 = run(&kit, req(p3.clone(), 4));
    assert_eq!(r4.stats.cached_tokens, p3.len() - 1, "exact repeat");
    assert_eq!(r4.tokens, r3.tokens);

    let i = info(&kit);
    assert_eq!((i.events.requests, i.events.hits, i.events.fresh), (4, 3, 1));
    assert_eq!(i.events.cached_tokens, 23 + 15 + 24);
    assert_eq!((i.events.restores, i.events.trims), (1, 2), "follow-up restores; branch and repeat trim");
    assert!(i.entries.iter().all(|e| e.trimmable), "llama caches stay trimmable");

    // Opting out prefills everything.
    let r5 = run(&kit, GenerateRequest { ignore_prompt_cache: true, ..req(p3.clone(), 4) });
    assert_eq!(r5.stats.cached_tokens, 0);
    assert_eq!(r5.tokens, r3.tokens);
}

#[test]
fn sliding_window_caches_restore_the_checkpoint_instead_of_trimming() {
    // gemma3's local layers (window 8) drop positions once a prompt passes 8 tokens, so no
    // cache here can be trimmed: reuse needs a snapshot of the exact prefix.
    let dir = TinyModel::new(Arch::Gemma3, 2).write_temp();
    let kit = kit(dir.path());
    let tok = Tok::SentencePiece;
    let p1 = prompt(20, tok, 3);
    let r1 = run(&kit, req(p1.clone(), 3));
    assert_eq!(r1.stats.cached_tokens, 0);

    // A branch after the checkpoint (position 9 = 20 - 11) finds it.
    let p2 = branch(&p1, 12, 8, tok);
    let r2 = run(&kit, req(p2.clone(), 3));
    assert_eq!(r2.stats.cached_tokens, 9, "the T-11 checkpoint");
    assert_eq!(r2.tokens, fresh_tokens(dir.path(), CacheConfig::default(), req(p2.clone(), 3)));

    // An exact repeat cannot trim its last token: it falls back to the checkpoint too.
    let r3 = run(&kit, req(p2.clone(), 3));
    assert_eq!(r3.stats.cached_tokens, 9, "exact repeat of an untrimmable cache");
    assert_eq!(r3.tokens, r2.tokens);

    // A follow-up extends the stored cache exactly: restored whole.
    let mut p4 = p2.clone();
    p4.extend(&r3.tokens);
    p4.extend(prompt(5, tok, 4));
    let r4 = run(&kit, req(p4.clone(), 3));
    assert_eq!(r4.stats.cached_tokens, 20 + 3 - 1, "follow-up");
    assert_eq!(r4.tokens, fresh_tokens(dir.path(), CacheConfig::default(), req(p4.clone(), 3)));

    let i = info(&kit);
    assert_eq!(i.events.trims, 0, "nothing was trimmed");
    assert_eq!(i.events.restores, 3);
    assert!(i.entries.iter().any(|e| e.kind == EntryKind::User && e.tokens == 9 && !e.trimmable));
}

#[test]
fn a_wrapped_max_kv_size_cache_restores_a_snapshot() {
    let dir = TinyModel::new(Arch::Llama, 4).write_temp();
    let config = CacheConfig { max_kv_size: Some(16), ..Default::default() };
    let kit = kit_with(dir.path(), config.clone(), 10).expect("load");
    let p = prompt(24, Tok::ByteLevel, 5);
    let r1 = run(&kit, req(p.clone(), 3));
    let stored = info(&kit);
    assert_eq!(stored.events.checkpoints, 1);
    assert_eq!(stored.live_tokens, 24 + 2);

    // The live cache (26 positions in a ring of 16) has wrapped and cannot drop its last
    // token; the checkpoint at 13 (before the wrap) serves the repeat.
    let r2 = run(&kit, req(p.clone(), 3));
    assert_eq!(r2.stats.cached_tokens, 24 - 11);
    assert_eq!(r2.tokens, r1.tokens);
    assert_eq!(r2.tokens, fresh_tokens(dir.path(), config, req(p, 3)));
    let i = info(&kit);
    assert!(i.entries.iter().any(|e| e.kind == EntryKind::Assistant && e.tokens == 26 && !e.trimmable));
    assert_eq!(i.events.trims, 0);
}

#[test]
fn lru_keeps_its_capacity_and_balances_kinds() {
    let dir = TinyModel::new(Arch::Gemma3, 5).write_temp();
    let kit = kit_with(dir.path(), CacheConfig::default(), 3).expect("load");
    let tok = Tok::SentencePiece;
    let prompts: Vec<Vec<u32>> = (10..15).map(|s| prompt(20, tok, s)).collect();
    for p in &prompts {
        run(&kit, req(p.clone(), 2));
        assert!(info(&kit).entries.len() <= 3, "capacity");
    }
    // Each request stored a checkpoint (5) and flushed the previous live cache (4): 9 inserts.
    let i = info(&kit);
    assert_eq!(i.events.evictions, 9 - 3);
    let kinds: Vec<(usize, EntryKind)> = i.entries.iter().map(|e| (e.tokens, e.kind)).collect();
    assert_eq!(kinds, vec![(9, EntryKind::User), (21, EntryKind::Assistant), (9, EntryKind::User)]);

    // The newest conversations are still served, the oldest is gone.
    assert_eq!(run(&kit, req(prompts[3].clone(), 2)).stats.cached_tokens, 9);
    assert_eq!(run(&kit, req(prompts[0].clone(), 2)).stats.cached_tokens, 0);
}

#[test]
fn kv_quantization_skips_checkpoints() {
    let dir = TinyModel::new(Arch::Gemma3, 6).write_temp();
    let p = prompt(20, Tok::SentencePiece, 6);
    let quant = CacheConfig { kv_bits: Some(8), kv_group_size: 32, ..Default::default() };
    let kit = kit_with(dir.path(), quant, 10).expect("load");
    run(&kit, req(p.clone(), 2));
    assert_eq!(info(&kit).events.checkpoints, 0);
    // Without a checkpoint, an exact repeat of an untrimmable cache starts fresh.
    assert_eq!(run(&kit, req(p.clone(), 2)).stats.cached_tokens, 0);
    let kit = kit_with(dir.path(), CacheConfig::default(), 10).expect("load");
    run(&kit, req(p, 2));
    assert_eq!(info(&kit).events.checkpoints, 1);
}

/// Records the reporter's calls and cancels at a chosen one.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    cancel_at: Option<&'static str>,
    /// When set, the first `update` cancels through this handle and continues.
    handle: Option<Arc<Mutex<Option<CancelHandle>>>>,
}

impl Recorder {
    fn log(&self, call: String, name: &str) -> bool {
        self.calls.lock().expect("lock").push(call);
        self.cancel_at != Some(name)
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

impl PromptProgress for Recorder {
    fn begin(&mut self, cached: usize, total: usize) -> bool {
        self.log(format!("begin({cached}, {total})"), "begin")
    }
    fn update(&mut self, processed: usize) -> bool {
        if let Some(slot) = &self.handle {
            // Wait for the host to hold the handle, then cancel as a host thread would.
            loop {
                if let Some(h) = slot.lock().expect("lock").as_ref() {
                    h.cancel();
                    break;
                }
                std::thread::yield_now();
            }
        }
        self.log(format!("update({processed})"), "update")
    }
    fn finish(&mut self) -> bool {
        self.log("finish".into(), "finish")
    }
}

#[test]
fn cancelled_prefill_resumes_from_the_partial_cache() {
    let dir = TinyModel::new(Arch::Llama, 7).write_temp();
    let p = prompt(20, Tok::ByteLevel, 7);
    let chunked = |max| GenerateRequest { prefill_step_size: Some(4), ..req(p.clone(), max) };
    let kit = kit(dir.path());

    let rec = Recorder { cancel_at: Some("update"), ..Default::default() };
    let r = run_with(&kit, chunked(5), Box::new(rec.clone()));
    assert_eq!(r.stop, StopReason::UserCancelled);
    assert!(r.tokens.is_empty());
    assert_eq!(rec.calls(), vec!["begin(0, 20)", "update(4)"], "nothing is called after a cancel");
    assert_eq!(info(&kit).live_tokens, 4, "the first chunk stays in the cache");

    // The same request again resumes at the chunk boundary. Chunks: 4 | 4, 4, 4, 3 (the
    // checkpoint at 9 is the cache trimmed back after the chunk holding it, not a cut) -> the
    // same splits as an uncancelled run.
    let rec = Recorder::default();
    let r = run_with(&kit, chunked(5), Box::new(rec.clone()));
    assert_eq!(r.stop, StopReason::TokenLimit);
    assert_eq!(r.stats.cached_tokens, 4);
    assert_eq!(rec.calls(), ["begin(4, 20)", "update(4)", "update(8)", "update(12)", "update(15)", "finish"]);
    assert_eq!(r.tokens, fresh_tokens(dir.path(), CacheConfig::default(), chunked(5)));
}

#[test]
fn begin_finish_and_the_cancel_handle_all_cancel_a_prefill() {
    let dir = TinyModel::new(Arch::Llama, 8).write_temp();
    let p = prompt(20, Tok::ByteLevel, 8);
    let chunked = || GenerateRequest { prefill_step_size: Some(4), ..req(p.clone(), 3) };
    let kit = kit(dir.path());
    let expected = fresh_tokens(dir.path(), CacheConfig::default(), chunked());

    let rec = Recorder { cancel_at: Some("begin"), ..Default::default() };
    assert_eq!(run_with(&kit, chunked(), Box::new(rec.clone())).stop, StopReason::UserCancelled);
    assert_eq!(rec.calls(), ["begin(0, 20)"]);
    assert_eq!(info(&kit).live_tokens, 0);

    // The cancel handle, between chunks.
    let slot = Arc::new(Mutex::new(None));
    let rec = Recorder { handle: Some(slot.clone()), ..Default::default() };
    let mut g = kit.generate_with_progress(chunked(), Box::new(rec.clone())).expect("start");
    *slot.lock().expect("lock") = Some(g.cancel_handle());
    let last = g.by_ref().map(|r| r.expect("result")).last().expect("a result");
    assert_eq!(last.stop_condition.map(|s| s.reason), Some(StopReason::UserCancelled));
    assert_eq!(rec.calls(), ["begin(0, 20)", "update(4)"]);
    assert_eq!(info(&kit).live_tokens, 4);

    // `finish` cancels after the whole prompt is in the cache: the last token joined the final
    // chunk (the plugins compute its logits alone, ABI 1.4).
    let rec = Recorder { cancel_at: Some("finish"), ..Default::default() };
    let r = run_with(&kit, chunked(), Box::new(rec.clone()));
    assert_eq!((r.stop, r.stats.cached_tokens), (StopReason::UserCancelled, 4));
    assert_eq!(rec.calls().last().map(String::as_str), Some("finish"));
    assert_eq!(info(&kit).live_tokens, 20);

    let r = run(&kit, chunked());
    assert_eq!(r.stats.cached_tokens, 19);
    assert_eq!(r.tokens, expected);
}

#[test]
fn chunked_and_unchunked_prefill_agree() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let m = TinyModel::new(arch, 9);
        let dir = m.write_temp();
        let p = prompt(30, m.tok, 9);
        let loaded = load(dir.path(), DtypeChoice::F32);
        let logits = |step: usize| {
            let mut cache = KvCache::new(loaded.model.cache_layout());
            let plan = Plan::for_device(Device::Cpu, step, None, None, OutputHead::of(loaded.model.as_ref(), None));
            let out =
                prefill(loaded.model.as_ref(), &mut cache, &p, 0, &plan, &mut NoProgress, &AtomicBool::new(false))
                    .expect("prefill");
            assert_eq!(cache.len(), p.len());
            out.logits.expect("not cancelled")
        };
        let diff = max_abs_diff(&logits(3), &logits(usize::MAX));
        measured::check("prompt-cache/chunked-vs-unchunked", diff, measured::CACHED_VS_FULL, format_args!("{arch:?}"));

        let k = kit_with(dir.path(), CacheConfig::default(), 0).expect("load");
        let tokens = |step| run(&k, GenerateRequest { prefill_step_size: step, ..req(p.clone(), 8) }).tokens;
        assert_eq!(tokens(Some(3)), tokens(None), "{arch:?}: greedy tokens");
    }
}

#[test]
fn chunks_shrink_to_bound_the_attention_scores() {
    assert_eq!(chunk_size(2048, 0, Some(9)), 2048, "a 2k prompt on 9 heads fits the budget");
    assert_eq!(chunk_size(2048, 100_000, None), 2048, "no head count, no bound");
    assert_eq!(chunk_size(4, 1_000_000, Some(32)), 4, "a smaller step wins");
    assert_eq!(chunk_size(2048, 10_000_000, Some(32)), MIN_CHUNK, "never below the minimum");
    for (ctx, heads) in [(6144, 9), (16_000, 4), (30_000, 16)] {
        let c = chunk_size(2048, ctx, Some(heads));
        assert!(c < 2048 && c > MIN_CHUNK, "{ctx} x {heads}: {c}");
        assert!(heads * c * (ctx + c) * 4 <= ATTENTION_SCORE_BUDGET, "within budget");
        assert!(heads * (c + 1) * (ctx + c + 1) * 4 > ATTENTION_SCORE_BUDGET, "the largest such chunk");
    }
}

fn load_err(dir: &Path, cache: CacheConfig) -> String {
    match kit_with(dir, cache, 10) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_cache_settings_fail_with_clear_messages() {
    let dir = TinyModel::new(Arch::Llama, 10).write_temp();
    let c = CacheConfig::default;
    let cases = [
        (
            CacheConfig { kv_bits: Some(5), ..c() },
            "invalid parameter `kv_bits`: 5 is not supported; use 2, 3, 4, 6 or 8",
        ),
        (
            CacheConfig { kv_bits: Some(4), kv_group_size: 48, ..c() },
            "invalid parameter `kv_group_size`: 48 is not supported; use 32, 64 or 128",
        ),
        (
            // The tiny llama's head dimension is 64 / 4 = 16.
            CacheConfig { kv_bits: Some(4), kv_group_size: 32, ..c() },
            "invalid parameter `kv_group_size`: 32 does not divide the model's head dimension 16",
        ),
        (
            CacheConfig { max_kv_size: Some(0), ..c() },
            "invalid parameter `max_kv_size`: 0 is too small; it must be at least 5 (the first 4 positions are \
             always kept, plus at least one recent position)",
        ),
    ];
    for (config, want) in cases {
        assert_eq!(load_err(dir.path(), config), want);
    }

    // A request's step size; the model keeps serving.
    let kit = kit(dir.path());
    let p = prompt(8, Tok::ByteLevel, 10);
    let mut g = kit.generate(GenerateRequest { prefill_step_size: Some(0), ..req(p.clone(), 2) }).expect("start");
    let e = g.find_map(|r| r.err()).expect("an error").to_string();
    assert_eq!(e, "invalid parameter `prefill_step_size`: must be at least 1, got 0");
    assert_eq!(run(&kit, req(p, 2)).tokens.len(), 2);
}

#[test]
fn smollm2_rejects_a_group_of_128() {
    let dir = measured::models_dir().join("smollm2-135m-instruct/f32");
    if !measured::have_models("smollm2_rejects_a_group_of_128", &[&dir.join("config.json")]) {
        return;
    }
    let config = CacheConfig { kv_bits: Some(4), kv_group_size: 128, ..Default::default() };
    assert_eq!(
        load_err(&dir, config),
        "invalid parameter `kv_group_size`: 128 does not divide the model's head dimension 64"
    );
}

fn cli_err(args: CacheArgs) -> String {
    let config = args.config().err().map(|e| e.to_string());
    let step = args.prefill_step_size().err().map(|e| e.to_string());
    config.or(step).expect("an error")
}

#[test]
fn bad_cli_cache_flags_name_the_flag() {
    let a = CacheArgs::default;
    let cases = [
        (
            CacheArgs { kv_bits: Some(4), quantized_kv_start: Some(-1), ..a() },
            "invalid parameter `--quantized-kv-start`: must be >= 0, got -1",
        ),
        (
            CacheArgs { prefill_step_size: Some(0), ..a() },
            "invalid parameter `--prefill-step-size`: must be at least 1, got 0",
        ),
        (
            CacheArgs { prefill_step_size: Some(-3), ..a() },
            "invalid parameter `--prefill-step-size`: must be at least 1, got -3",
        ),
        (CacheArgs { max_kv_size: Some(-1), ..a() }, "invalid parameter `--max-kv-size`: must be at least 5, got -1"),
        (CacheArgs { kv_bits: Some(7), ..a() }, "invalid parameter `kv_bits`: 7 is not supported; use 2, 3, 4, 6 or 8"),
        (
            CacheArgs { kv_group_size: Some(32), ..a() },
            "invalid parameter `--kv-group-size`: only applies to a quantized KV cache; pass --kv-bits too",
        ),
        (
            CacheArgs { quantized_kv_start: Some(8), ..a() },
            "invalid parameter `--quantized-kv-start`: only applies to a quantized KV cache; pass --kv-bits too",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(cli_err(args), want);
    }
    let ok = CacheArgs { kv_bits: Some(4), kv_group_size: Some(32), quantized_kv_start: Some(0), ..a() };
    let c = ok.config().expect("valid");
    assert_eq!((c.kv_bits, c.kv_group_size, c.quantized_kv_start), (Some(4), 32, 0));

    // Negative numbers reach the check instead of being taken for flags.
    use clap::Parser;
    let cli = mlx_engine::cli::Cli::try_parse_from([
        "mlx-engine",
        "generate",
        "--model",
        "m",
        "--prompt",
        "hi",
        "--kv-bits",
        "4",
        "--quantized-kv-start",
        "-2",
    ])
    .expect("parses");
    let mlx_engine::cli::Command::Generate(g) = cli.command else { panic!("generate") };
    assert_eq!(cli_err(g.cache), "invalid parameter `--quantized-kv-start`: must be >= 0, got -2");
}
