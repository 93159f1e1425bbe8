//! The prefill's device plan (`generate::prefill::Plan::for_device`): on the GPU the last
//! prompt token joins the final chunk, so the prompt takes one pass over the weights where it
//! took two, and the first chunk runs whole. Run here on the CPU with the GPU plan: the logits
//! agree with the CPU plan's, the cache holds the same prompt, checkpoints inside the joined
//! chunk are trimmed back to the same state, the reporter hears the same calls, and a cancel
//! at `finish` leaves the whole prompt cached. Needs the workspace plugins in
//! target/<profile>/ (`cargo build --workspace`).

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::sync::atomic::AtomicBool;

use common_models::*;
use mlx_engine::cache::KvCache;
use mlx_engine::generate::prefill::{chunk_heads, prefill, Plan, Prefilled, JOINED_LOGITS_BUDGET};
use mlx_engine::generate::PromptProgress;
use mlx_engine::model::{DtypeChoice, LoadedModel};
use mlx_engine_plugin_api::runtime::Device;

/// The calls a reporter heard; cancels at the call named `cancel_at`.
#[derive(Default)]
struct Heard {
    calls: Vec<String>,
    cancel_at: Option<&'static str>,
}

impl Heard {
    fn hear(&mut self, call: String, name: &str) -> bool {
        self.calls.push(call);
        self.cancel_at != Some(name)
    }
}

impl PromptProgress for Heard {
    fn begin(&mut self, cached: usize, total: usize) -> bool {
        self.hear(format!("begin({cached}, {total})"), "begin")
    }
    fn update(&mut self, processed: usize) -> bool {
        self.hear(format!("update({processed})"), "update")
    }
    fn finish(&mut self) -> bool {
        self.hear("finish".into(), "finish")
    }
}

/// A tiny model of `arch`, loaded in f32 (the folder must outlive it), and an `n`-token prompt.
fn model(arch: Arch, seed: u64, n: usize) -> (tempfile::TempDir, LoadedModel, Vec<u32>) {
    let m = TinyModel::new(arch, seed);
    let dir = m.write_temp();
    let loaded = load(dir.path(), DtypeChoice::F32);
    (dir, loaded, prompt(n, m.tok, seed))
}

struct Run {
    done: Prefilled,
    cache: KvCache,
    heard: Vec<String>,
}

fn run(loaded: &LoadedModel, prompt: &[u32], plan: &Plan, cancel_at: Option<&'static str>) -> Run {
    let mut cache = KvCache::new(loaded.model.cache_layout());
    let mut heard = Heard { cancel_at, ..Default::default() };
    let done = prefill(loaded.model.as_ref(), &mut cache, prompt, 0, plan, &mut heard, &AtomicBool::new(false))
        .expect("prefill");
    Run { done, cache, heard: heard.calls }
}

/// Every layer's keys and values, in order, as one vector.
fn cache_values(cache: &KvCache) -> Vec<f32> {
    let mut all = Vec::new();
    // Past the last layer the call is an error, which ends the loop.
    for layer in 0.. {
        let Ok(Some((k, v))) = cache.layer_contents(layer) else { break };
        all.extend(k.to_vec_f32().expect("read"));
        all.extend(v.to_vec_f32().expect("read"));
    }
    all
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn gpu_plan_joins_the_last_token_only_within_the_logits_budget() {
    let vocab = 128_256;
    let gpu = Plan::for_device(Device::Gpu, 2048, Some(32), None, Some(vocab));
    assert_eq!(gpu.last_token_joins, Some(vocab));
    assert!(!gpu.layerwise_first);
    assert_eq!(gpu.attention_heads, None, "the GPU's attention never holds the scores");
    assert_eq!((chunk_heads(Device::Gpu, Some(32)), chunk_heads(Device::Cpu, Some(32))), (None, Some(32)));
    assert!(gpu.joins(2047), "a full 2048-token chunk of a 128k vocabulary fits");
    assert!(!gpu.joins(4095), "a 4096-token one does not");
    let largest = JOINED_LOGITS_BUDGET / (vocab * 4) - 1;
    assert!(gpu.joins(largest) && !gpu.joins(largest + 1), "the bound is the budget, counted as f32");

    let cpu = Plan::for_device(Device::Cpu, 2048, Some(32), None, Some(vocab));
    assert_eq!((cpu.last_token_joins, cpu.layerwise_first, cpu.attention_heads), (None, true, Some(32)));
    assert!(!cpu.joins(1));
    let unknown = Plan::for_device(Device::Gpu, 2048, None, None, None);
    assert!(!unknown.joins(1), "without the vocabulary size the last token goes alone");
}

#[test]
fn joined_last_token_matches_the_separate_pass() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let (_dir, loaded, p) = model(arch, 21, 30);
        let vocab = loaded.vocab_size;
        for (step, chunks) in [(64, 1), (8, 4)] {
            let what = format!("{arch:?}, step {step}");
            let apart = run(&loaded, &p, &Plan::for_device(Device::Cpu, step, None, None, vocab), None);
            let joined = run(&loaded, &p, &Plan::for_device(Device::Gpu, step, None, None, vocab), None);
            let diff = max_abs_diff(
                apart.done.logits.as_ref().expect("apart: not cancelled"),
                joined.done.logits.as_ref().expect("joined: not cancelled"),
            );
            measured::check("prefill-plan/joined-vs-apart-logits", diff, measured::JOINED_VS_APART, &what);
            assert_eq!((apart.cache.len(), joined.cache.len()), (p.len(), p.len()), "{what}: cached tokens");
            let kv = max_diff(&cache_values(&apart.cache), &cache_values(&joined.cache));
            measured::check("prefill-plan/joined-vs-apart-cache", kv, measured::JOINED_VS_APART, &what);
            assert_eq!(joined.done.processed, p.len() - 1, "{what}: processed counts the prompt before its last token");
            // The reporter hears the same calls: the last token is never counted as prefilled.
            assert_eq!(apart.heard, joined.heard, "{what}");
            assert_eq!(joined.heard.len(), chunks + 2, "{what}: {:?}", joined.heard);
            assert_eq!(joined.heard.last().map(String::as_str), Some("finish"));
        }
    }
}

#[test]
fn checkpoint_inside_the_joined_chunk_is_the_trimmed_cache() {
    let (_dir, loaded, p) = model(Arch::Llama, 22, 26);
    // Inside the final chunk, and at its last prompt token (where the apart plan's chunk ends).
    for at in [20, 25] {
        let plan = |device| Plan::for_device(device, 64, None, Some(at), loaded.vocab_size);
        let apart = run(&loaded, &p, &plan(Device::Cpu), None);
        let joined = run(&loaded, &p, &plan(Device::Gpu), None);
        let (a, j) = (apart.done.checkpoint.expect("apart snapshot"), joined.done.checkpoint.expect("joined snapshot"));
        assert_eq!((a.len(), j.len()), (at, at), "checkpoint at {at}");
        let diff = max_diff(&cache_values(&a), &cache_values(&j));
        measured::check("prefill-plan/joined-checkpoint", diff, measured::JOINED_VS_APART, format_args!("at {at}"));
    }
}

#[test]
fn cancel_at_finish_leaves_the_whole_prompt_cached() {
    let (_dir, loaded, p) = model(Arch::Llama, 23, 18);
    let plan = Plan::for_device(Device::Gpu, 8, None, None, loaded.vocab_size);
    let cancelled = run(&loaded, &p, &plan, Some("finish"));
    assert!(cancelled.done.logits.is_none(), "a cancel at finish returns no logits");
    assert_eq!(cancelled.heard.last().map(String::as_str), Some("finish"));
    assert_eq!(cancelled.cache.len(), p.len(), "the joined chunk's work is kept, the last token included");
    let at_update = run(&loaded, &p, &plan, Some("update"));
    assert!(at_update.done.logits.is_none());
    assert_eq!(at_update.cache.len(), 8, "a cancel after the first chunk keeps that chunk");
}
