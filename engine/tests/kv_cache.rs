//! The engine's KV cache: attention through it, fed in chunks and single tokens, equals one
//! masked attention over the whole sequence (causal, and causal within a window).

use mlx_engine::api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine::api::{random, Array, AttentionOptions, Dtype, ForwardContext, LayerCache};
use mlx_engine::cache::{attention_mask, KvCache};

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
    let scores = mlx_engine::api::where_(&mask, &scores, &Array::scalar(f64::NEG_INFINITY, Dtype::F32).unwrap()).unwrap();
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
