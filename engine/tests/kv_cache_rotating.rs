//! `max_kv_size`: full-attention layers become rings that keep the first 4 positions and the
//! last `m - 4`. Whatever the chunking, every query sees exactly those positions, as checked
//! against one attention over the whole sequence with an explicit mask. Sliding layers keep
//! their own window. Trimming works until a ring first drops a position.

mod kv_cache_util;

use kv_cache_util::*;
use mlx_engine::api::{AttentionOptions, ForwardContext, LayerCache};
use mlx_engine::cache::{CacheConfig, KvCache};

fn rotating(m: usize) -> KvCache {
    let config = CacheConfig { max_kv_size: Some(m), ..Default::default() };
    KvCache::with_config(vec![LayerCache::Full], &config).unwrap()
}

/// Reference: first 4 positions plus the last `m - 4` for every query.
fn windowed(
    q: &mlx_engine::api::Array,
    k: &mlx_engine::api::Array,
    v: &mlx_engine::api::Array,
    m: i32,
    chunks: &[i32],
    softcap: Option<f32>,
) -> mlx_engine::api::Array {
    Reference { q, dense: (k, v), quantized: None, quant_from: 0, keep: 4, span: Some(m - 4), softcap }.run(chunks)
}

#[test]
fn wrapping_rotating_cache_sees_first_four_and_last_positions() {
    let t = 60;
    let m = 12;
    let (q, k, v) = qkv_d(t, 16, 100);
    let mut decode_after_long_chunk = vec![30];
    decode_after_long_chunk.extend([1; 30]);
    let chunkings: Vec<Vec<i32>> = vec![
        // Single tokens: the ring wraps several times.
        vec![1; 60],
        // A first chunk longer than the ring, then decode.
        decode_after_long_chunk,
        // Chunks that overflow a rotated ring, and chunks longer than the ring after wrapping.
        vec![5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 1, 1, 1, 1, 1, 1, 1, 13, 1, 1, 18],
        // A chunk that exactly fills the ring, then one token at a time.
        [vec![12], vec![1; 48]].concat(),
        // Offsets below the 4 kept positions before overflowing.
        vec![2, 1, 20, 37],
    ];
    for chunks in chunkings {
        assert_eq!(chunks.iter().sum::<i32>(), t);
        let mut c = rotating(m as usize);
        let got = feed(&mut c, &q, &k, &v, &chunks, None);
        let want = windowed(&q, &k, &v, m, &chunks, None);
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "chunks {chunks:?}: diff {d}");
        assert_eq!(c.len(), t as usize);
        // The ring holds exactly m positions: the first 4 and the last m - 4, in time order.
        let (keys, _) = c.layer_contents(0).unwrap().unwrap();
        assert_eq!(keys.dim(2).unwrap(), m);
        let want_keys = mlx_engine::api::concatenate(&[&part(&k, 0, 4), &part(&k, t - (m - 4), t)], 2).unwrap();
        assert_eq!(max_diff(&keys, &want_keys), 0.0, "chunks {chunks:?}: ring contents");
    }
}

#[test]
fn softcapped_rotating_attention() {
    let t = 30;
    let (q, k, v) = qkv_d(t, 16, 110);
    let chunks = [7, 1, 1, 1, 15, 1, 1, 3];
    let mut c = rotating(9);
    let got = feed(&mut c, &q, &k, &v, &chunks, Some(2.0));
    let want = windowed(&q, &k, &v, 9, &chunks, Some(2.0));
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
}

#[test]
fn rotating_cache_shorter_than_its_size_is_full_attention() {
    let t = 20;
    let (q, k, v) = qkv_d(t, 16, 120);
    let chunks = [9, 1, 1, 9];
    let mut c = rotating(64);
    let got = feed(&mut c, &q, &k, &v, &chunks, None);
    let want = Reference { q: &q, dense: (&k, &v), quantized: None, quant_from: 0, keep: 0, span: None, softcap: None }
        .run(&chunks);
    assert!(max_diff(&got, &want) < 1e-5);
    // Buffers stop at the ring size instead of a whole step.
    assert_eq!(c.nbytes(), 2 * 64 * 2 * 16 * 4);
}

#[test]
fn max_kv_size_leaves_sliding_layers_their_own_window() {
    let t = 40;
    let (q, k, v) = qkv_d(t, 16, 130);
    let chunks = [10, 1, 1, 1, 1, 26];
    let want =
        Reference { q: &q, dense: (&k, &v), quantized: None, quant_from: 0, keep: 0, span: Some(8), softcap: None }
            .run(&chunks);
    // Smaller and larger than the window: the sliding layer is the same either way.
    for m in [5, 8, 100] {
        let config = CacheConfig { max_kv_size: Some(m), ..Default::default() };
        let mut c = KvCache::with_config(vec![LayerCache::SlidingWindow { window: 8 }], &config).unwrap();
        let got = feed(&mut c, &q, &k, &v, &chunks, None);
        assert!(max_diff(&got, &want) < 1e-5, "max_kv_size {m}: {}", max_diff(&got, &want));
    }
}

#[test]
fn rotating_cache_trims_until_it_first_drops_a_position() {
    let t = 30;
    let m = 12;
    let (q, k, v) = qkv_d(t, 16, 140);
    let (_, k2, v2) = qkv_d(t, 16, 150);
    let mut c = rotating(m);
    // 10 positions of other data, trim 4, then the real positions 6..30.
    feed(&mut c, &q, &k2, &v2, &[10], None);
    assert!(c.is_trimmable());
    assert_eq!(c.trim(4), 4);
    assert_eq!(c.len(), 6);
    let k_mixed = mlx_engine::api::concatenate(&[&part(&k2, 0, 6), &part(&k, 6, t)], 2).unwrap();
    let v_mixed = mlx_engine::api::concatenate(&[&part(&v2, 0, 6), &part(&v, 6, t)], 2).unwrap();
    let got = feed(&mut c, &q, &k_mixed, &v_mixed, &[6], None);
    // Exactly full (offset == m): nothing dropped yet, still trimmable.
    assert!(c.is_trimmable());
    assert_eq!(c.trim(1), 1);
    let got2 = feed(&mut c, &q, &k_mixed, &v_mixed, &[1, 1, 1, 16], None);
    assert_eq!(c.len(), t as usize);
    // Wrapped: refused, and nothing changes.
    assert!(!c.is_trimmable());
    assert_eq!(c.trim(3), 0);
    assert_eq!(c.len(), t as usize);
    // What each query sees does not depend on the chunking, so one pass is the reference.
    let want = windowed(&q, &k_mixed, &v_mixed, m as i32, &[t], None);
    assert!(max_diff(&got, &part(&want, 6, 12)) < 1e-5);
    assert!(max_diff(&got2, &part(&want, 11, t)) < 1e-5);
}

#[test]
fn gemma_like_layout_trims_only_while_every_ring_is_unwrapped() {
    // Sliding layers of window 8 and full layers under max_kv_size 20.
    let layout = vec![LayerCache::SlidingWindow { window: 8 }, LayerCache::Full];
    let config = CacheConfig { max_kv_size: Some(20), ..Default::default() };
    let mut c = KvCache::with_config(layout, &config).unwrap();
    let (q, k, v) = qkv_d(12, 16, 160);
    let opts = AttentionOptions::default();
    for layer in 0..2 {
        c.attention(layer, &part(&q, 0, 8), &part(&k, 0, 8), &part(&v, 0, 8), scale(&q), &opts).unwrap();
    }
    assert!(c.is_trimmable(), "window exactly full");
    for layer in 0..2 {
        c.attention(layer, &part(&q, 8, 9), &part(&k, 8, 9), &part(&v, 8, 9), scale(&q), &opts).unwrap();
    }
    assert!(!c.is_trimmable(), "the sliding layer dropped position 0");
    assert_eq!(c.trim(1), 0);
    assert_eq!((c.offset(0).unwrap(), c.offset(1).unwrap()), (9, 9));
}
