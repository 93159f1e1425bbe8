//! The engine's KV cache: attention through it, fed in chunks and single tokens, equals one
//! masked attention over the whole sequence (causal, and causal within a window); trimming,
//! snapshots and configuration. Quantized and rotating caches: `kv_cache_quantized.rs`,
//! `kv_cache_rotating.rs`.

use mlx_engine::api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine::api::{random, Array, AttentionOptions, Dtype, ForwardContext, LayerCache};
use mlx_engine::cache::{attention_mask, CacheConfig, KvCache};

mod kv_cache_util;

fn rand(shape: &[i32], seed: u64) -> Array {
    let _ = mlx_engine::mlx::ffi::ops_table();
    random::normal(shape, 0.0, 1.0, Dtype::F32, Some(&random::key(seed).unwrap())).unwrap()
}

/// Reference: one masked attention over all `t` positions.
fn reference(q: &Array, k: &Array, v: &Array, window: Option<u32>) -> Array {
    let t = q.dim(2).unwrap();
    let mask = attention_mask(0, t, 0, t, window).unwrap();
    scaled_dot_product_attention(q, k, v, 0.25, AttnMask::Array(&mask)).unwrap()
}

/// Feeds the sequence through a one-layer cache in the given chunk sizes.
fn chunked(q: &Array, k: &Array, v: &Array, kind: LayerCache, chunks: &[i32], softcap: Option<f32>) -> Array {
    let mut cache = KvCache::new(vec![kind]);
    let mut outs = Vec::new();
    let mut at = 0;
    for &n in chunks {
        assert_eq!(cache.offset(0).unwrap(), at);
        let part = |a: &Array| a.slice_axis(2, at, at + n).unwrap();
        let opts = AttentionOptions { logit_softcap: softcap };
        outs.push(cache.attention(0, &part(q), &part(k), &part(v), 0.25, &opts).unwrap());
        at += n;
    }
    let refs: Vec<&Array> = outs.iter().collect();
    mlx_engine::api::concatenate(&refs, 2).unwrap()
}

fn max_diff(a: &Array, b: &Array) -> f32 {
    let (a, b) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn qkv(t: i32) -> (Array, Array, Array) {
    // Grouped-query shapes: 4 query heads over 2 kv heads.
    (rand(&[1, 4, t, 16], 1), rand(&[1, 2, t, 16], 2), rand(&[1, 2, t, 16], 3))
}

#[test]
fn full_layer_chunks_and_single_tokens_match_one_pass() {
    let t = 300; // crosses the 256-position growth step
    let (q, k, v) = qkv(t);
    let want = reference(&q, &k, &v, None);
    let mut chunks = vec![7, 1, 1, 250];
    chunks.extend(std::iter::repeat_n(1, (t - 259) as usize));
    let got = chunked(&q, &k, &v, LayerCache::Full, &chunks, None);
    assert!(max_diff(&got, &want) < 1e-5, "diff {}", max_diff(&got, &want));
}

#[test]
fn sliding_layer_matches_windowed_reference_across_wraps() {
    let t = 40;
    let (q, k, v) = qkv(t);
    let want = reference(&q, &k, &v, Some(8));
    // Decode past the window (ring wraps several times), a multi-token chunk that overflows a
    // rotated ring, and a first chunk longer than the window.
    for chunks in [vec![1; 40], vec![5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 1, 1, 1, 1, 1, 1, 1, 13], vec![12, 1, 1, 1, 25]] {
        assert_eq!(chunks.iter().sum::<i32>(), t);
        let got = chunked(&q, &k, &v, LayerCache::SlidingWindow { window: 8 }, &chunks, None);
        assert!(max_diff(&got, &want) < 1e-5, "chunks {chunks:?}: diff {}", max_diff(&got, &want));
    }
}

#[test]
fn sliding_layer_shorter_than_window_equals_full_attention() {
    let t = 20;
    let (q, k, v) = qkv(t);
    let want = reference(&q, &k, &v, None);
    let got = chunked(&q, &k, &v, LayerCache::SlidingWindow { window: 512 }, &[9, 1, 1, 9], None);
    assert!(max_diff(&got, &want) < 1e-5);
}

#[test]
fn softcapped_attention_matches_a_manual_reference() {
    let t = 12;
    let (q, k, v) = qkv(t);
    let got = chunked(&q, &k, &v, LayerCache::SlidingWindow { window: 5 }, &[6, 1, 1, 4], Some(2.0));
    // Reference with plain ops: repeat kv heads, cap scores, window mask, softmax.
    let rep = |a: &Array| {
        a.expand_dims(&[2]).unwrap().broadcast_to(&[1, 2, 2, t, 16]).unwrap().reshape(&[1, 4, t, 16]).unwrap()
    };
    let scores = q.matmul(&rep(&k).swapaxes(-1, -2).unwrap()).unwrap();
    let scores = (&(&(&scores * 0.25).unwrap() / 2.0).unwrap().tanh().unwrap() * 2.0).unwrap();
    let mask = attention_mask(0, t, 0, t, Some(5)).unwrap();
    let scores =
        mlx_engine::api::where_(&mask, &scores, &Array::scalar(f64::NEG_INFINITY, Dtype::F32).unwrap()).unwrap();
    let want = scores.softmax(&[-1], true).unwrap().matmul(&rep(&v)).unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "diff {}", max_diff(&got, &want));
}

#[test]
fn full_cache_grows_in_steps_not_per_token() {
    let (q, k, v) = qkv(3);
    let mut cache = KvCache::new(vec![LayerCache::Full]);
    let one = |a: &Array, i: i32| a.slice_axis(2, i, i + 1).unwrap();
    cache.attention(0, &one(&q, 0), &one(&k, 0), &one(&v, 0), 0.25, &AttentionOptions::default()).unwrap();
    let after_one = cache.nbytes();
    cache.attention(0, &one(&q, 1), &one(&k, 1), &one(&v, 1), 0.25, &AttentionOptions::default()).unwrap();
    assert_eq!(cache.nbytes(), after_one, "a second token must not reallocate");
    // 256 positions x 2 heads x 16 dims x 4 bytes, for keys and values.
    assert_eq!(after_one, 2 * 256 * 2 * 16 * 4);
    assert_eq!(cache.len(), 2);
}

#[test]
fn attending_through_an_undeclared_layer_is_an_error() {
    let (q, k, v) = qkv(1);
    let mut cache = KvCache::new(vec![LayerCache::Full]);
    let err = cache.attention(3, &q, &k, &v, 0.25, &AttentionOptions::default()).unwrap_err().to_string();
    assert!(err.contains("layer 3") && err.contains("declares 1 layers"), "{err}");
}

#[test]
fn trimming_a_full_cache_replays_exactly() {
    let t = 40;
    let (q, k, v) = kv_cache_util::qkv_d(t, 16, 200);
    let (_, k2, v2) = kv_cache_util::qkv_d(t, 16, 210);
    let mut cache = KvCache::new(vec![LayerCache::Full, LayerCache::Full]);
    assert!(cache.is_trimmable());
    assert_eq!(cache.trim(3), 0, "nothing to drop yet");
    // 30 positions of other data (both layers), trim back to 22, then the real ones.
    kv_cache_util::feed(&mut cache, &q, &k2, &v2, &[25, 1, 1, 1, 1, 1], None);
    let opts = AttentionOptions::default();
    cache
        .attention(
            1,
            &q.slice_axis(2, 0, 30).unwrap(),
            &k2.slice_axis(2, 0, 30).unwrap(),
            &v2.slice_axis(2, 0, 30).unwrap(),
            0.25,
            &opts,
        )
        .unwrap();
    assert_eq!(cache.trim(8), 8);
    assert_eq!((cache.len(), cache.offset(1).unwrap()), (22, 22));
    // Trimming more than is held drops everything held, and says so.
    let mut copy = cache.clone();
    assert_eq!(copy.trim(100), 22);
    assert!(copy.is_empty());
    let mix = |a: &Array, b: &Array| {
        mlx_engine::api::concatenate(&[&a.slice_axis(2, 0, 22).unwrap(), &b.slice_axis(2, 22, t).unwrap()], 2).unwrap()
    };
    let (km, vm) = (mix(&k2, &k), mix(&v2, &v));
    let got = kv_cache_util::feed(&mut cache, &q, &km, &vm, &[5, 1, 12], None);
    let want = reference(&q, &km, &vm, None).slice_axis(2, 22, t).unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "diff {}", max_diff(&got, &want));
}

/// Feeds tokens one at a time, evaluating the cache after each so MLX may reuse buffers in
/// place wherever nothing else holds them.
fn decode(cache: &mut KvCache, q: &Array, k: &Array, v: &Array, from: i32, to: i32) {
    for i in from..to {
        let one = |a: &Array| a.slice_axis(2, i, i + 1).unwrap();
        let out = cache.attention(0, &one(q), &one(k), &one(v), 0.25, &AttentionOptions::default()).unwrap();
        out.eval().unwrap();
        mlx_engine::api::eval(&cache.state()).unwrap();
    }
}

#[test]
fn snapshots_are_unaffected_by_later_updates() {
    let configs = [
        CacheConfig::default(),
        CacheConfig { max_kv_size: Some(8), ..Default::default() },
        CacheConfig { kv_bits: Some(8), kv_group_size: 32, ..Default::default() },
        CacheConfig { max_kv_size: Some(8), kv_bits: Some(4), kv_group_size: 32, ..Default::default() },
    ];
    let (q, k, v) = kv_cache_util::qkv_d(40, 32, 220);
    let (_, k2, v2) = kv_cache_util::qkv_d(40, 32, 230);
    for config in configs {
        for kind in [LayerCache::Full, LayerCache::SlidingWindow { window: 6 }] {
            let mut live = KvCache::with_config(vec![kind], &config).unwrap();
            decode(&mut live, &q, &k, &v, 0, 12);
            let mut snap = live.clone();
            let (sk, sv) = snap.layer_contents(0).unwrap().unwrap();
            let (sk, sv) = (sk.to_vec_f32().unwrap(), sv.to_vec_f32().unwrap());
            // The live cache writes into the same buffers (rings wrap, full buffers fill).
            decode(&mut live, &q, &k, &v, 12, 40);
            let (ak, av) = snap.layer_contents(0).unwrap().unwrap();
            assert!(ak.to_vec_f32().unwrap() == sk && av.to_vec_f32().unwrap() == sv, "{config:?} {kind:?}");
            assert_eq!(snap.len(), 12);
            // The snapshot goes on with other data exactly like a cache that never forked.
            let mut fresh = KvCache::with_config(vec![kind], &config).unwrap();
            decode(&mut fresh, &q, &k, &v, 0, 12);
            let mix = |a: &Array, b: &Array| {
                mlx_engine::api::concatenate(&[&a.slice_axis(2, 0, 12).unwrap(), &b.slice_axis(2, 12, 40).unwrap()], 2)
                    .unwrap()
            };
            let (km, vm) = (mix(&k, &k2), mix(&v, &v2));
            let a = kv_cache_util::feed(&mut snap, &q, &km, &vm, &[3, 1, 24], None);
            let b = kv_cache_util::feed(&mut fresh, &q, &km, &vm, &[3, 1, 24], None);
            assert_eq!(max_diff(&a, &b), 0.0, "{config:?} {kind:?}");
        }
    }
}

#[test]
fn config_validation_names_the_parameter() {
    let check = |c: CacheConfig, want: &str| {
        assert_eq!(c.validate().unwrap_err().to_string(), want);
        let err = KvCache::with_config(vec![LayerCache::Full], &c).err().expect("refused").to_string();
        assert_eq!(err, want);
    };
    let d = CacheConfig::default();
    assert_eq!((d.max_kv_size, d.kv_bits, d.kv_group_size, d.quantized_kv_start), (None, None, 64, 0));
    check(
        CacheConfig { kv_bits: Some(5), ..Default::default() },
        "invalid parameter `kv_bits`: 5 is not supported; use 2, 3, 4, 6 or 8",
    );
    check(
        CacheConfig { kv_bits: Some(4), kv_group_size: 16, ..Default::default() },
        "invalid parameter `kv_group_size`: 16 is not supported; use 32, 64 or 128",
    );
    for m in [0, 4] {
        check(
            CacheConfig { max_kv_size: Some(m), ..Default::default() },
            &format!(
                "invalid parameter `max_kv_size`: {m} is too small; it must be at least 5 \
                 (the first 4 positions are always kept, plus at least one recent position)"
            ),
        );
    }
    // Valid: every bit width and group, the smallest ring, and group/start without kv_bits
    // (unused; whether that is a mistake is for the front end to say).
    for bits in [2, 3, 4, 6, 8] {
        for group in [32, 64, 128] {
            let c =
                CacheConfig { kv_bits: Some(bits), kv_group_size: group, max_kv_size: Some(5), quantized_kv_start: 7 };
            assert!(c.validate().is_ok());
        }
    }
    assert!(CacheConfig { kv_group_size: 32, quantized_kv_start: 100, ..Default::default() }.validate().is_ok());
}

#[test]
fn every_combination_is_accepted_and_reports_its_kind() {
    // No combination is refused: quantized rings exist, for max_kv_size and sliding layers.
    let layout = vec![LayerCache::SlidingWindow { window: 4 }, LayerCache::Full];
    let config = CacheConfig { max_kv_size: Some(6), kv_bits: Some(4), kv_group_size: 32, quantized_kv_start: 3 };
    let mut cache = KvCache::with_config(layout, &config).unwrap();
    assert_eq!(cache.config(), &config);
    let (q, k, v) = kv_cache_util::qkv_d(10, 32, 240);
    for i in 0..10 {
        for layer in 0..2 {
            let one = |a: &Array| a.slice_axis(2, i, i + 1).unwrap();
            cache.attention(layer, &one(&q), &one(&k), &one(&v), 0.25, &AttentionOptions::default()).unwrap();
        }
        assert_eq!(cache.is_quantized(), i >= 3, "after position {i}");
    }
    let (k0, _) = cache.layer_contents(0).unwrap().unwrap();
    let (k1, _) = cache.layer_contents(1).unwrap().unwrap();
    assert_eq!((k0.dim(2).unwrap(), k1.dim(2).unwrap()), (4, 6));
}
