//! Quantized KV caches (`kv_bits`): attention through quantized matmuls equals attention over
//! the dequantized keys and values (so masks, GQA and the bookkeeping are exact), stays close
//! to dense attention (bounded per bit width), converts a dense layer once at
//! `quantized_kv_start`, and holds fewer bytes.
//!
//! Timing (mlx-lm's, which converts after each model call): a layer's first update always
//! attends densely and is stored dense; the layer is converted at the start of its first later
//! update whose offset is at least `quantized_kv_start`. So the tests feed a first chunk that
//! stays dense, and their references ([`Reference`]) take dense keys for that chunk.

mod kv_cache_util;

use kv_cache_util::*;
use mlx_engine::api::{Array, AttentionOptions, ForwardContext, LayerCache};
use mlx_engine::cache::{CacheConfig, KvCache};

fn config(bits: i32, group: i32, start: usize, max_kv_size: Option<usize>) -> CacheConfig {
    CacheConfig { max_kv_size, kv_bits: Some(bits), kv_group_size: group, quantized_kv_start: start }
}

fn cache(kind: LayerCache, config: &CacheConfig) -> KvCache {
    KvCache::with_config(vec![kind], config).unwrap()
}

/// A first token (attended densely; the layer converts at the next update), then a chunk
/// attended quantized over only a few positions (where the rounding error shows most),
/// single-token decode, and a chunk crossing the 256-position step.
const CHUNKS: [i32; 9] = [1, 6, 1, 1, 40, 1, 1, 220, 9];

/// Quantized attention vs dense attention over the same dequantized keys and values: the same
/// math apart from rounding (f32 sums in another order).
const EXACT: f32 = 1e-5;

#[test]
fn quantized_full_layer_is_exact_on_dequantized_data_and_close_to_dense() {
    let t: i32 = CHUNKS.iter().sum();
    let (q, k, v) = qkv_d(t, 64, 10);
    let dense =
        Reference { q: &q, dense: (&k, &v), quantized: None, quant_from: 0, keep: 0, span: None, softcap: None }
            .run(&CHUNKS);
    let dense_cache = feed(&mut KvCache::new(vec![LayerCache::Full]), &q, &k, &v, &CHUNKS, None);
    // Bounds on unit-normal data, scale 1/8, head dim 64, group 64. The largest differences
    // are at the first positions, where a query attends to few values and their quantization
    // error (up to half a step, range / (2 (2^bits - 1))) passes straight through.
    let mut results = Vec::new();
    for (bits, bound, mean_bound) in
        [(8, 2.5e-2, 2e-3), (6, 0.1, 8e-3), (4, 0.35, 3e-2), (3, 0.8, 6e-2), (2, 1.6, 0.12)]
    {
        let mut c = cache(LayerCache::Full, &config(bits, 64, 0, None));
        let got = feed(&mut c, &q, &k, &v, &CHUNKS, None);
        assert!(c.is_quantized());
        // The first update attended densely: exactly what a dense cache gives.
        assert_eq!(max_diff(&part(&got, 0, 1), &part(&dense_cache, 0, 1)), 0.0, "bits {bits}: first update");
        let deq = Reference {
            q: &q,
            dense: (&k, &v),
            quantized: Some((roundtrip(&k, 64, bits), roundtrip(&v, 64, bits))),
            quant_from: 0,
            keep: 0,
            span: None,
            softcap: None,
        }
        .run(&CHUNKS);
        let exact = max_diff(&got, &deq);
        let err = max_diff(&got, &dense);
        let mean = mean_diff(&got, &dense);
        println!(
            "kv_bits {bits}, group 64: |quantized - dense| max {err:.5} mean {mean:.5}; vs dequantized reference {exact:.2e}"
        );
        results.push((bits, bound, mean_bound, exact, err, mean));
    }
    for (bits, bound, mean_bound, exact, err, mean) in results {
        assert!(exact < EXACT, "bits {bits}: quantized path vs dequantized reference {exact}");
        assert!(err < bound, "bits {bits}: max diff to dense {err} >= {bound}");
        assert!(mean < mean_bound, "bits {bits}: mean diff to dense {mean} >= {mean_bound}");
    }
}

#[test]
fn group_sizes_and_softcap_through_quantized_matmuls() {
    let t = 40;
    let chunks = [13, 1, 1, 25];
    let (q, k, v) = qkv_d(t, 128, 20);
    for group in [32, 64, 128] {
        for softcap in [None, Some(2.0)] {
            let mut c = cache(LayerCache::Full, &config(4, group, 0, None));
            let got = feed(&mut c, &q, &k, &v, &chunks, softcap);
            let quantized = Some((roundtrip(&k, group, 4), roundtrip(&v, group, 4)));
            let want = Reference { q: &q, dense: (&k, &v), quantized, quant_from: 0, keep: 0, span: None, softcap }
                .run(&chunks);
            let d = max_diff(&got, &want);
            assert!(d < EXACT, "group {group}, softcap {softcap:?}: {d}");
            // Not vacuous: from the second chunk on, the stored data is the dequantized data,
            // which 4-bit rounding moves visibly away from the dense result.
            let dense = Reference { quantized: None, ..want_ref(&q, &k, &v, softcap) }.run(&chunks);
            assert!(max_diff(&part(&got, 13, t), &part(&dense, 13, t)) > 1e-3, "group {group}: no quantization seen");
        }
    }
}

/// A plain full-attention reference without quantized data (tests fill in the rest).
fn want_ref<'a>(q: &'a Array, k: &'a Array, v: &'a Array, softcap: Option<f32>) -> Reference<'a> {
    Reference { q, dense: (k, v), quantized: None, quant_from: 0, keep: 0, span: None, softcap }
}

/// The timing shared with mlx-lm, for every layer kind: with `quantized_kv_start` 0 (and with
/// a start the first chunk already passes), an empty layer's first update attends densely and
/// is stored dense, giving exactly what a dense cache gives; the next update converts what the
/// layer holds and attends quantized.
#[test]
fn first_update_is_dense_and_the_next_converts() {
    let t = 14;
    let (q, k, v) = qkv_d(t, 64, 15);
    // (layer kind, max_kv_size, keep, span) of the reference.
    let kinds = [
        (LayerCache::Full, None, 0, None),
        (LayerCache::SlidingWindow { window: 8 }, None, 0, Some(8)),
        (LayerCache::Full, Some(12), 4, Some(8)),
    ];
    for (kind, max_kv_size, keep, span) in kinds {
        for (start, first) in [(0, 10), (0, 1), (4, 10), (10, 10)] {
            let what = format!("{kind:?}, max_kv_size {max_kv_size:?}, start {start}, first chunk {first}");
            let mut c = cache(kind, &config(8, 64, start, max_kv_size));
            let mut dense = cache(kind, &CacheConfig { max_kv_size, ..Default::default() });
            let got = feed(&mut c, &q, &k, &v, &[first], None);
            let want = feed(&mut dense, &q, &k, &v, &[first], None);
            assert!(!c.is_quantized(), "{what}: quantized after the first update");
            assert_eq!(max_diff(&got, &want), 0.0, "{what}: first update differs from the dense path");
            assert_eq!(c.nbytes(), dense.nbytes(), "{what}: first update not stored dense");
            let (held, dense_held) = (c.layer_contents(0).unwrap().unwrap(), dense.layer_contents(0).unwrap().unwrap());
            assert_eq!(max_diff(&held.0, &dense_held.0) + max_diff(&held.1, &dense_held.1), 0.0, "{what}");

            // The second update converts (its offset is at least the start) and attends over
            // the converted data plus its own quantized keys and values.
            let rest = [3, 1];
            let got = feed(&mut c, &q, &k, &v, &rest, None);
            feed(&mut dense, &q, &k, &v, &rest, None);
            assert!(c.is_quantized(), "{what}: still dense after the second update");
            assert!(c.nbytes() < dense.nbytes(), "{what}: {} >= {} bytes", c.nbytes(), dense.nbytes());
            let (held, dense_held) = (c.layer_contents(0).unwrap().unwrap(), dense.layer_contents(0).unwrap().unwrap());
            // Quantization is per position, so converting later stores what quantizing each
            // position on arrival would have stored.
            let held_diff = max_diff(&held.0, &roundtrip(&dense_held.0, 64, 8))
                + max_diff(&held.1, &roundtrip(&dense_held.1, 64, 8));
            assert_eq!(held_diff, 0.0, "{what}: converted contents");
            let chunks = [first, 3, 1];
            let quantized = Some((roundtrip(&k, 64, 8), roundtrip(&v, 64, 8)));
            let reference =
                Reference { q: &q, dense: (&k, &v), quantized, quant_from: start as i32, keep, span, softcap: None };
            let end = first + 4;
            let want = part(&reference.run(&chunks), first, end);
            assert!(max_diff(&got, &want) < EXACT, "{what}: {}", max_diff(&got, &want));
        }
    }
}

#[test]
fn quantized_kv_start_keeps_dense_then_converts_once() {
    let chunks = [10, 5, 1, 1, 1, 1, 1, 20, 1, 1, 19];
    let t = chunks.iter().sum();
    let (q, k, v) = qkv_d(t, 64, 30);
    let start = 18;
    let mut c = cache(LayerCache::Full, &config(8, 64, start, None));
    let mut outs = Vec::new();
    let mut at = 0;
    for &n in &chunks {
        let opts = AttentionOptions::default();
        outs.push(
            c.attention(0, &part(&q, at, at + n), &part(&k, at, at + n), &part(&v, at, at + n), scale(&q), &opts)
                .unwrap(),
        );
        assert_eq!(c.is_quantized(), at > 0 && at as usize >= start, "chunk from {at}");
        at += n;
    }
    let got = mlx_engine::api::concatenate(&outs.iter().collect::<Vec<_>>(), 2).unwrap();
    // Chunks starting before 18 attend densely; from the first chunk starting at or after 18,
    // every position (the converted ones too) is quantized.
    let quantized = Some((roundtrip(&k, 64, 8), roundtrip(&v, 64, 8)));
    let want =
        Reference { q: &q, dense: (&k, &v), quantized, quant_from: start as i32, keep: 0, span: None, softcap: None }
            .run(&chunks);
    let d = max_diff(&got, &want);
    assert!(d < EXACT, "{d}");
    // The dense chunks really were dense: exactly what a dense cache gives.
    let dense = want_ref(&q, &k, &v, None).run(&chunks);
    assert!(max_diff(&part(&got, 0, 18), &part(&dense, 0, 18)) < EXACT);
    // The converted layer holds the same values as a layer quantized from its second update
    // on (a first chunk of one token, then the rest), and as quantizing everything at once.
    let mut from_start = cache(LayerCache::Full, &config(8, 64, 0, None));
    feed(&mut from_start, &q, &k, &v, &[1, t - 1], None);
    assert!(from_start.is_quantized());
    let (a, b) = (c.layer_contents(0).unwrap().unwrap(), from_start.layer_contents(0).unwrap().unwrap());
    assert!(max_diff(&a.0, &b.0) == 0.0 && max_diff(&a.1, &b.1) == 0.0);
    assert!(max_diff(&a.0, &roundtrip(&k, 64, 8)) == 0.0 && max_diff(&a.1, &roundtrip(&v, 64, 8)) == 0.0);
}

#[test]
fn quantized_sliding_and_rotating_layers_match_dequantized_references() {
    let t = 50;
    let (q, k, v) = qkv_d(t, 64, 40);
    let quantized = || Some((roundtrip(&k, 64, 4), roundtrip(&v, 64, 4)));
    let chunkings: [&[i32]; 3] =
        [&[1; 50], &[20, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 7, 1, 1, 5], &[3, 1, 1, 1, 44]];
    for chunks in chunkings {
        assert_eq!(chunks.iter().sum::<i32>(), t);
        // A sliding layer of the model (window 8), with max_kv_size set too: it keeps its window.
        let mut s = cache(LayerCache::SlidingWindow { window: 8 }, &config(4, 64, 0, Some(6)));
        let got = feed(&mut s, &q, &k, &v, chunks, None);
        let want = Reference {
            q: &q,
            dense: (&k, &v),
            quantized: quantized(),
            quant_from: 0,
            keep: 0,
            span: Some(8),
            softcap: None,
        }
        .run(chunks);
        assert!(s.is_quantized());
        assert!(max_diff(&got, &want) < EXACT, "sliding {chunks:?}: {}", max_diff(&got, &want));
        // A full layer under max_kv_size 12: the first 4 positions and the last 8.
        let mut r = cache(LayerCache::Full, &config(4, 64, 0, Some(12)));
        let got = feed(&mut r, &q, &k, &v, chunks, None);
        let want = Reference {
            q: &q,
            dense: (&k, &v),
            quantized: quantized(),
            quant_from: 0,
            keep: 4,
            span: Some(8),
            softcap: None,
        }
        .run(chunks);
        assert!(r.is_quantized());
        assert!(max_diff(&got, &want) < EXACT, "rotating {chunks:?}: {}", max_diff(&got, &want));
        assert!(r.nbytes() < cache_bytes_dense(12, 64));
    }
}

/// Bytes of a dense f32 layer holding `n` positions of 2 kv heads, keys and values.
fn cache_bytes_dense(n: usize, d: usize) -> usize {
    2 * n * 2 * d * 4
}

#[test]
fn rotating_layer_converted_after_wrapping() {
    // Dense while wrapping the ring, then quantized from offset 30 on: the rotated ring is
    // converted in place and keeps rotating.
    let t = 60;
    let mut chunks = vec![9];
    chunks.extend([1; 23]);
    chunks.extend([3, 1, 1, 1, 1, 1, 1, 1, 1, 17]);
    assert_eq!(chunks.iter().sum::<i32>(), t);
    let (q, k, v) = qkv_d(t, 64, 50);
    let mut c = cache(LayerCache::Full, &config(8, 64, 30, Some(10)));
    let got = feed(&mut c, &q, &k, &v, &chunks, None);
    assert!(c.is_quantized());
    let quantized = Some((roundtrip(&k, 64, 8), roundtrip(&v, 64, 8)));
    let want = Reference { q: &q, dense: (&k, &v), quantized, quant_from: 30, keep: 4, span: Some(6), softcap: None }
        .run(&chunks);
    assert!(max_diff(&got, &want) < EXACT, "{}", max_diff(&got, &want));
}

#[test]
fn quantized_buffers_grow_in_steps_and_are_smaller() {
    let (q, k, v) = qkv_d(300, 64, 60);
    let mut dense = KvCache::new(vec![LayerCache::Full]);
    let mut quant = cache(LayerCache::Full, &config(8, 64, 0, None));
    feed(&mut dense, &q, &k, &v, &[1], None);
    feed(&mut quant, &q, &k, &v, &[1], None);
    // The first update is stored dense, in a dense step.
    assert_eq!(quant.nbytes(), cache_bytes_dense(256, 64));
    // The second converts the one held position and reserves a quantized step.
    feed(&mut dense, &q, &k, &v, &[1], None);
    feed(&mut quant, &q, &k, &v, &[1], None);
    assert!(quant.is_quantized());
    let (d1, q1) = (dense.nbytes(), quant.nbytes());
    assert_eq!(d1, cache_bytes_dense(256, 64));
    // 8 bits: 64 values in 16 uint32 words, plus one f32 scale and one bias per group of 64.
    assert_eq!(q1, 2 * 256 * 2 * (16 * 4 + 2 * 4));
    let ratio = q1 as f64 / d1 as f64;
    println!("8-bit / f32 dense bytes at head dim 64: {ratio:.3}");
    assert!(ratio < 0.35);
    feed(&mut quant, &q, &k, &v, &[1, 200], None);
    assert_eq!(quant.nbytes(), q1, "no reallocation within a step");
    feed(&mut quant, &q, &k, &v, &[60], None);
    assert_eq!(quant.len(), 263);
    assert_eq!(quant.nbytes(), 2 * q1, "grown by one step");
    // 4 bits with groups of 32: 8 words, two scales and two biases per position and head.
    let mut four = cache(LayerCache::Full, &config(4, 32, 0, None));
    feed(&mut four, &q, &k, &v, &[2, 1], None);
    assert_eq!(four.nbytes(), 2 * 256 * 2 * (8 * 4 + 4 * 4));
}

#[test]
fn trimming_a_quantized_layer_replays_exactly() {
    let t = 30;
    let (q, k, v) = qkv_d(t, 64, 70);
    let (_, k2, v2) = qkv_d(t, 64, 80);
    let mut c = cache(LayerCache::Full, &config(6, 64, 0, None));
    // Quantized from the second update on, so the trim below cuts into a quantized layer.
    feed(&mut c, &q, &k2, &v2, &[5, 15], None);
    assert!(c.is_quantized());
    assert!(c.is_trimmable());
    assert_eq!(c.trim(8), 8);
    assert_eq!(c.len(), 12);
    // Positions 12.. are fed again with other data: the result must not see the dropped ones.
    let k_mixed = mlx_engine::api::concatenate(&[&part(&k2, 0, 12), &part(&k, 12, t)], 2).unwrap();
    let v_mixed = mlx_engine::api::concatenate(&[&part(&v2, 0, 12), &part(&v, 12, t)], 2).unwrap();
    let got = feed(&mut c, &q, &k_mixed, &v_mixed, &[3, 1, 14], None);
    let quantized = Some((roundtrip(&k_mixed, 64, 6), roundtrip(&v_mixed, 64, 6)));
    let want =
        Reference { q: &q, dense: (&k_mixed, &v_mixed), quantized, quant_from: 0, keep: 0, span: None, softcap: None }
            .run(&[12, 3, 1, 14]);
    let want = part(&want, 12, t);
    assert!(c.is_quantized(), "a trimmed layer stays quantized");
    assert!(max_diff(&got, &want) < EXACT, "{}", max_diff(&got, &want));
}

#[test]
fn group_size_that_does_not_divide_the_head_dim_is_refused() {
    let cfg = config(4, 128, 0, None);
    let err = cfg.check_head_dim(64).unwrap_err().to_string();
    assert_eq!(err, "invalid parameter `kv_group_size`: 128 does not divide the model's head dimension 64");
    assert!(cfg.check_head_dim(256).is_ok());
    // Without kv_bits the group size is unused.
    assert!(CacheConfig { kv_group_size: 128, ..Default::default() }.check_head_dim(64).is_ok());
    // The same words if it reaches attention unchecked.
    let (q, k, v) = qkv_d(2, 64, 90);
    let mut c = cache(LayerCache::Full, &cfg);
    let err = c.attention(0, &q, &k, &v, scale(&q), &AttentionOptions::default()).unwrap_err().to_string();
    assert_eq!(err, "invalid parameter `kv_group_size`: 128 does not divide the model's head dimension 64");
}
