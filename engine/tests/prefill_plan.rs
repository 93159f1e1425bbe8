//! The prefill's device plan (`generate::prefill::Plan::for_device`): the last prompt token
//! joins the final chunk, so the prompt takes one pass over the weights where it took two; on
//! the GPU the first chunk runs whole. A model whose output head runs over the last position
//! alone (plugin ABI 1.4's `last_position_only`; the workspace plugins) joins on either
//! device, one that computes every position only on the GPU and within the logits budget.
//! Against the last token's own pass, as mlx-lm runs it: the logits agree, the cache holds the
//! same prompt, checkpoints inside the joined chunk are trimmed back to the same state, the
//! reporter hears the same calls, and a cancel at `finish` leaves the whole prompt cached.
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`).

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::sync::atomic::AtomicBool;

use common_models::*;
use mlx_engine::cache::KvCache;
use mlx_engine::generate::prefill::{
    chunk_heads, prefill, LastPositionOnly, OutputHead, Plan, Prefilled, JOINED_LOGITS_BUDGET,
};
use mlx_engine::generate::PromptProgress;
use mlx_engine::model::{DtypeChoice, LoadedModel};
use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{Array, Input};

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

/// A head of `vocab` rows that computes every position (`false`) or the last alone (`true`).
fn head(vocab: Option<usize>, last_position_only: bool) -> OutputHead {
    OutputHead { vocab, last_position_only }
}

/// `loaded`'s own head, as generate and the server plan with it.
fn own_head(loaded: &LoadedModel) -> OutputHead {
    OutputHead::of(loaded.model.as_ref(), loaded.vocab_size)
}

#[test]
fn gpu_plan_joins_the_last_token_only_within_the_logits_budget() {
    let vocab = 128_256;
    let gpu = Plan::for_device(Device::Gpu, 2048, Some(32), None, head(Some(vocab), false));
    assert_eq!(gpu.last_token_joins.map(|h| h.vocab), Some(Some(vocab)));
    assert!(!gpu.layerwise_first);
    assert_eq!(gpu.attention_heads, None, "the GPU's attention never holds the scores");
    assert_eq!((chunk_heads(Device::Gpu, Some(32)), chunk_heads(Device::Cpu, Some(32))), (None, Some(32)));
    assert!(gpu.joins(2047), "a full 2048-token chunk of a 128k vocabulary fits");
    assert!(!gpu.joins(4095), "a 4096-token one does not");
    let largest = JOINED_LOGITS_BUDGET / (vocab * 4) - 1;
    assert!(gpu.joins(largest) && !gpu.joins(largest + 1), "the bound is the budget, counted as f32");

    let cpu = Plan::for_device(Device::Cpu, 2048, Some(32), None, head(Some(vocab), false));
    assert_eq!((cpu.last_token_joins.is_none(), cpu.layerwise_first, cpu.attention_heads), (true, true, Some(32)));
    assert!(!cpu.joins(1));
    let unknown = Plan::for_device(Device::Gpu, 2048, None, None, head(None, false));
    assert!(!unknown.joins(1), "without the vocabulary size the last token goes alone");
}

#[test]
fn a_head_over_the_last_position_alone_joins_any_chunk_on_either_device() {
    for vocab in [Some(262_208), None] {
        for device in [Device::Gpu, Device::Cpu] {
            let plan = Plan::for_device(device, 8192, Some(32), None, head(vocab, true));
            assert!(plan.joins(1) && plan.joins(8191), "{vocab:?} {device:?}: one position's logits always fit");
        }
    }
    // The workspace plugins honour it (ABI 1.4).
    let (_dir, loaded, _) = model(Arch::Llama, 20, 4);
    assert!(own_head(&loaded).last_position_only);
}

#[test]
fn the_plugins_compute_the_last_position_alone_when_asked() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let (_dir, loaded, p) = model(arch, 24, 12);
        let ids: Vec<i32> = p.iter().map(|&t| t as i32).collect();
        let ids = Array::from_slice(&ids, &[1, ids.len() as i32]).unwrap();
        let mut cache = KvCache::new(loaded.model.cache_layout());
        let all = loaded.model.forward(Input::Tokens(&ids), &mut cache).unwrap();
        let mut cache = KvCache::new(loaded.model.cache_layout());
        let last = loaded.model.forward(Input::Tokens(&ids), &mut LastPositionOnly(&mut cache)).unwrap();
        assert_eq!(last.shape(), vec![1, 1, all.dim(2).unwrap()], "{arch:?}");
        assert_eq!(cache.len(), p.len(), "{arch:?}: every position still reaches the cache");
        let l = p.len() as i32;
        let diff = max_abs_diff(&all.slice_axis(1, l - 1, l).unwrap(), &last);
        measured::check("prefill-plan/last-position-head", diff, measured::JOINED_VS_APART, format_args!("{arch:?}"));
    }
}

#[test]
fn joined_last_token_matches_the_separate_pass() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let (_dir, loaded, p) = model(arch, 21, 30);
        // mlx-lm's way: the CPU plan for a head over every position.
        let every = head(loaded.vocab_size, false);
        // Joined: the model's own head (over the last position alone) on either device, and a
        // head over every position on the GPU.
        let own = own_head(&loaded);
        for (step, chunks, device, head) in
            [(64, 1, Device::Gpu, own), (8, 4, Device::Gpu, own), (8, 4, Device::Cpu, own), (8, 4, Device::Gpu, every)]
        {
            let what = format!("{arch:?}, step {step}, {device:?}, {head:?}");
            let apart = run(&loaded, &p, &Plan::for_device(Device::Cpu, step, None, None, every), None);
            let joined = run(&loaded, &p, &Plan::for_device(device, step, None, None, head), None);
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
        let plan = |device, head| Plan::for_device(device, 64, None, Some(at), head);
        let apart = run(&loaded, &p, &plan(Device::Cpu, head(loaded.vocab_size, false)), None);
        let joined = run(&loaded, &p, &plan(Device::Cpu, own_head(&loaded)), None);
        let (a, j) = (apart.done.checkpoint.expect("apart snapshot"), joined.done.checkpoint.expect("joined snapshot"));
        assert_eq!((a.len(), j.len()), (at, at), "checkpoint at {at}");
        let diff = max_diff(&cache_values(&a), &cache_values(&j));
        measured::check("prefill-plan/joined-checkpoint", diff, measured::JOINED_VS_APART, format_args!("at {at}"));
    }
}

#[test]
fn cancel_at_finish_leaves_the_whole_prompt_cached() {
    let (_dir, loaded, p) = model(Arch::Llama, 23, 18);
    let plan = Plan::for_device(Device::Cpu, 8, None, None, own_head(&loaded));
    let cancelled = run(&loaded, &p, &plan, Some("finish"));
    assert!(cancelled.done.logits.is_none(), "a cancel at finish returns no logits");
    assert_eq!(cancelled.heard.last().map(String::as_str), Some("finish"));
    assert_eq!(cancelled.cache.len(), p.len(), "the joined chunk's work is kept, the last token included");
    let at_update = run(&loaded, &p, &plan, Some("update"));
    assert!(at_update.done.logits.is_none());
    assert_eq!(at_update.cache.len(), 8, "a cancel after the first chunk keeps that chunk");
}
