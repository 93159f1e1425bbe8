//! Stacking single-sequence caches into a left-padded batch (what the server's continuous
//! batching does when rows join) and splitting it back: full layers and sliding-window rings,
//! whether or not a row's ring has started to evict. Decoding in the batch gives every row
//! what it gets alone, across the rings' wrap, and the rows come back unchanged.

mod common_models;
mod measured;
mod tokenizer_fixtures;

use common_models::*;
use mlx_engine::api::{random, Array, AttentionOptions, Dtype, ForwardContext, Input, LayerCache};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::model::DtypeChoice;

const LAYOUT: [LayerCache; 2] = [LayerCache::SlidingWindow { window: 4 }, LayerCache::Full];

fn normal(shape: &[i32], seed: u64) -> Array {
    random::normal(shape, 0.0, 1.0, Dtype::F32, Some(&random::key(seed).unwrap())).unwrap()
}

/// A cache of `len` random positions (one chunk, as a prefill writes it).
fn filled(len: i32, seed: u64) -> KvCache {
    let mut c = KvCache::with_config(LAYOUT.to_vec(), &CacheConfig::default()).unwrap();
    for layer in 0..LAYOUT.len() {
        let x = normal(&[1, 2, len, 4], seed * 10 + layer as u64);
        c.attention(layer, &x, &x, &x, 0.5, &AttentionOptions::default()).unwrap();
    }
    c
}

fn contents(c: &KvCache, layer: usize) -> (Vec<i32>, Vec<f32>, Vec<f32>) {
    let (k, v) = c.layer_contents(layer).unwrap().unwrap();
    (k.shape(), k.to_vec_f32().unwrap(), v.to_vec_f32().unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn sliding_window_and_full_layers_stack_decode_as_each_row_alone_and_unstack_unchanged() {
    let _ = mlx_engine::mlx::ffi::ops_table();
    // Under the window, at it, and past it (the ring has evicted and rotated).
    let mut alone: Vec<KvCache> = [(3, 1), (4, 2), (9, 3)].iter().map(|&(len, seed)| filled(len, seed)).collect();
    assert!(alone.iter().all(KvCache::is_stackable));
    let mut batch = KvCache::stack(&alone.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!((batch.left_padding(), batch.len()), (&[6, 5, 0][..], 9));

    // Past every ring's wrap: each step's attention output per row equals the row's alone.
    let mut worst = 0.0f32;
    for step in 0..7u64 {
        for layer in 0..LAYOUT.len() {
            let qkv: Vec<Array> =
                (0..3).map(|b| normal(&[1, 2, 1, 4], 1000 + step * 100 + layer as u64 * 10 + b)).collect();
            let together = mlx_engine::api::concatenate(&qkv.iter().collect::<Vec<_>>(), 0).unwrap();
            let got =
                batch.attention(layer, &together, &together, &together, 0.5, &AttentionOptions::default()).unwrap();
            for (b, c) in alone.iter_mut().enumerate() {
                let want = c.attention(layer, &qkv[b], &qkv[b], &qkv[b], 0.5, &AttentionOptions::default()).unwrap();
                let row = got.slice_axis(0, b as i32, b as i32 + 1).unwrap();
                worst = worst.max(max_diff(&want.to_vec_f32().unwrap(), &row.to_vec_f32().unwrap()));
            }
        }
    }
    measured::check("batched vs alone attention over stacked rings", worst, measured::CACHED_VS_FULL, "3 rows");

    let back = batch.unstack().unwrap();
    for (b, (want, got)) in alone.iter().zip(&back).enumerate() {
        let got = got.detached().unwrap();
        assert_eq!((got.len(), got.is_trimmable()), (want.len(), want.is_trimmable()), "row {b}");
        for layer in 0..LAYOUT.len() {
            let (w, g) = (contents(want, layer), contents(&got, layer));
            assert_eq!(w.0, g.0, "row {b} layer {layer}: the entries it holds");
            assert!(max_diff(&w.1, &g.1) == 0.0 && max_diff(&w.2, &g.2) == 0.0, "row {b} layer {layer}");
        }
    }

    // `max_kv_size` rings keep each row's first positions as sinks: they decode alone.
    let bounded = CacheConfig { max_kv_size: Some(8), ..Default::default() };
    let mut ring = KvCache::with_config(vec![LayerCache::Full], &bounded).unwrap();
    let x = normal(&[1, 2, 3, 4], 7);
    ring.attention(0, &x, &x, &x, 0.5, &AttentionOptions::default()).unwrap();
    assert!(!ring.is_stackable());
    assert!(KvCache::stack(&[&ring]).is_err());
}

/// The server's path on Gemma 3 (sliding layers of window 8): prompts prefilled alone, their
/// caches stacked, then decoded together; each row's greedy tokens and logits are its own.
#[test]
fn gemma3_rows_prefilled_alone_decode_together_as_alone() {
    let dir = TinyModel::new(Arch::Gemma3, 5).write_temp();
    let m = load(dir.path(), DtypeChoice::F32);
    let tok = Arch::Gemma3.default_tok();
    let prompts = [prompt(3, tok, 1), prompt(12, tok, 2), prompt(7, tok, 3)];
    let steps = 12;
    let forward = |c: &mut KvCache, ids: &[i32], rows: i32| {
        let input = Array::from_slice(ids, &[rows, ids.len() as i32 / rows]).unwrap();
        let l = m.model.forward(Input::Tokens(&input), c).unwrap();
        let n = l.dim(1).unwrap();
        l.slice_axis(1, n - 1, n).unwrap().astype(Dtype::F32).unwrap()
    };
    let argmax = |v: &[f32]| v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
    let mut caches = Vec::new();
    let mut alone = Vec::new();
    for p in &prompts {
        let ids: Vec<i32> = p.iter().map(|&t| t as i32).collect();
        let mut c = KvCache::with_config(m.model.cache_layout(), &CacheConfig::default()).unwrap();
        forward(&mut c, &ids[..ids.len() - 1], 1).eval().unwrap();
        caches.push(c.clone());
        // Alone: the last prompt token, then greedy steps.
        let mut logits = forward(&mut c, &ids[ids.len() - 1..], 1).to_vec_f32().unwrap();
        let mut run = Vec::new();
        for _ in 0..steps {
            let t = argmax(&logits);
            run.push((t, logits.clone()));
            logits = forward(&mut c, &[t as i32], 1).to_vec_f32().unwrap();
        }
        alone.push(run);
    }
    assert!(caches.iter().all(KvCache::is_stackable), "gemma3's sliding layers stack");
    let mut batch = KvCache::stack(&caches.iter().collect::<Vec<_>>()).unwrap();
    let mut next: Vec<i32> = prompts.iter().map(|p| *p.last().unwrap() as i32).collect();
    let mut worst = 0.0f32;
    for step in 0..steps {
        let logits = forward(&mut batch, &next, 3);
        for (b, run) in alone.iter().enumerate() {
            let row = logits.slice_axis(0, b as i32, b as i32 + 1).unwrap().to_vec_f32().unwrap();
            let (t, want) = &run[step];
            let scale = want.iter().fold(1.0f32, |s, x| s.max(x.abs()));
            worst = worst.max(max_diff(want, &row) / scale);
            next[b] = *t as i32;
        }
    }
    measured::check("gemma3 stacked batch vs alone logits, relative", worst, measured::CACHED_VS_FULL, "3 rows");
}
