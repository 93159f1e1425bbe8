//! The server's shared prefill of rows that join together (`server::joint_prefill`): rows with
//! a cached prefix and short new turns prefill in two shared passes, and each row's first
//! sample, cache and checkpoint are what its own one-row prefill gives.

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use common_models::*;
use mlx_engine::cache::CacheConfig;
use mlx_engine::generate::prefill::{OutputHead, Plan};
use mlx_engine::generate::GenerateRequest;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::server::joint_prefill::prefill_together;
use mlx_engine::server::row::Row;
use mlx_engine::server::scheduler::{Job, Metrics};
use mlx_engine::vision::FeatureMemo;
use mlx_engine_plugin_api::runtime::Device;

/// A greedy request for `prompt`, and the receiver of its events (a row whose receiver is gone
/// counts as abandoned).
fn job(prompt: &[u32]) -> (Job, tokio::sync::mpsc::UnboundedReceiver<mlx_engine::server::scheduler::RowEvent>) {
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    let request = GenerateRequest {
        prompt_tokens: prompt.to_vec(),
        max_tokens: Some(4),
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        ..Default::default()
    };
    (Job { id: "t".into(), request, prompt_text: None, cancel: Arc::new(AtomicBool::new(false)), events }, rx)
}

/// (first token, its logprob, prompt tokens each row's cache then holds) of every prompt.
type Firsts = Vec<(u32, f32, usize)>;

#[test]
fn rows_joining_together_prefill_in_shared_passes_as_each_alone() {
    for arch in [Arch::Llama, Arch::Gemma3] {
        let dir = TinyModel::new(arch, 4).write_temp();
        let kit = load_kit_with(dir.path(), CacheConfig::default(), 10).unwrap();
        let tok = arch.default_tok();
        // A cached prefix of 3 tokens, then new turns of 1, 2, 3 and 7 tokens: the first has only
        // its last token left. Gemma3's sliding window is 8, so filler for the 7-token turn would
        // make its rings evict: that row prefills on its own.
        let prefix = prompt(4, tok, 1);
        let prompts: Vec<Vec<u32>> = [2, 3, 4, 8]
            .iter()
            .enumerate()
            .map(|(i, &n)| [&prefix[..3], &prompt(n, tok, 10 + i as u64)[1..]].concat())
            .collect();
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        kit.run_on_worker(move |parts| {
            let mut memo = FeatureMemo::new(0);
            let firsts = |rows: &[Row<'_>]| -> Firsts {
                rows.iter()
                    .map(|r| {
                        let s = r.pending.as_ref().expect("a first sample");
                        (
                            s.token.item::<u32>().unwrap(),
                            s.logprob.item::<f32>().unwrap(),
                            r.cache.as_ref().unwrap().len(),
                        )
                    })
                    .collect()
            };
            let mut receivers = Vec::new();
            let mut start = |memo: &mut FeatureMemo, cache: &mut _, uid| -> Vec<Row<'_>> {
                let mut rows = Vec::new();
                for p in &prompts {
                    let (j, rx) = job(p);
                    receivers.push(rx);
                    rows.push(Row::start(&parts.ctx, cache, memo, j, uid).expect("a row"));
                }
                rows
            };
            let cache = parts.cache;
            let head = OutputHead::of(parts.ctx.model, parts.ctx.vocab_size);
            assert!(head.last_position_only, "the workspace plugins compute the last position alone (ABI 1.4)");
            // mlx-lm's plan: the last token in a pass of its own (a head over every position
            // never joins on the CPU).
            let cpu = Plan::for_device(Device::Cpu, 256, None, None, OutputHead { last_position_only: false, ..head });
            // The prefix's request, done: its cache (all but its last token) is shared.
            let (j, _rx) = job(&prefix);
            let mut first = Row::start(&parts.ctx, cache, &mut memo, j, 0).expect("a row");
            while first.pending.is_none() {
                assert!(first.prefill_step(&parts.ctx, cache, &cpu).unwrap());
            }
            first.finish(cache);
            // Alone: each row's own chunks.
            let mut rows = start(&mut memo, cache, 1);
            let cached: Vec<usize> = rows.iter().map(|r| r.pos).collect();
            for r in rows.iter_mut() {
                while r.pending.is_none() {
                    assert!(r.prefill_step(&parts.ctx, cache, &cpu).unwrap());
                }
            }
            let alone = firsts(&rows);
            drop(rows);
            // Alone with the GPU's plan (computed on the CPU here; the CPU's own plan is the
            // same for these plugins): each rest and its last token in one step.
            let gpu = Plan::for_device(Device::Gpu, 256, None, None, head);
            let mut rows = start(&mut memo, cache, 3);
            for r in rows.iter_mut() {
                assert!(r.prefill_step(&parts.ctx, cache, &gpu).unwrap());
                assert!(r.pending.is_some(), "with the GPU's plan the last token joins the rest");
            }
            let joined = firsts(&rows);
            drop(rows);
            // Together.
            let mut rows = start(&mut memo, cache, 2);
            prefill_together(&parts.ctx, cache, &mut rows, 256, &m);
            for r in rows.iter_mut() {
                while r.pending.is_none() {
                    assert!(r.prefill_step(&parts.ctx, cache, &cpu).unwrap());
                }
            }
            tx.send((cached, alone, joined, firsts(&rows))).unwrap();
        })
        .unwrap();
        let (cached, alone, joined, together) = rx.recv().unwrap();
        assert!(cached.iter().all(|&c| c == 3), "{arch:?}: each row starts from the cached prefix: {cached:?}");
        for (other, what, bound) in [
            (&together, "first logprob, shared vs own prefill", measured::CACHED_VS_FULL),
            (&joined, "first logprob, last token joined vs alone", measured::JOINED_VS_APART),
        ] {
            let mut worst = 0.0f32;
            for (b, (a, t)) in alone.iter().zip(other).enumerate() {
                assert_eq!((a.0, a.2), (t.0, t.2), "{arch:?} row {b} ({what}): first token and cache length");
                worst = worst.max((a.1 - t.1).abs());
            }
            measured::check(what, worst, bound, format!("{arch:?}"));
        }
        let passes = metrics.joint_prefill_passes.load(Ordering::Relaxed);
        let carried = metrics.joint_prefill_rows.load(Ordering::Relaxed);
        // Llama: the rest of every turn but the last-token-only one (3 rows), then every last
        // token (4 rows). Gemma3: the 7-token turn stays out of both.
        let want = if arch == Arch::Gemma3 { (2, 5) } else { (2, 7) };
        assert_eq!((passes, carried), want, "{arch:?}: shared passes and the rows they carried");
    }
}
