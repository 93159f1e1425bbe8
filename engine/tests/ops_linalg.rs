//! matmul, addmm, and affine quantization (quantize / dequantize / quantized_matmul) against
//! naive references decoded from MLX's packed layout.

mod common;

use common::*;
use mlx_engine::api::{dequantize, quantize, quantized_matmul, Array, Dtype, Error};

/// f32 sums of `k` products: the error grows with `k`.
fn matmul_tol(k: usize) -> Tol {
    Tol { atol: 2e-6 * k as f32, rtol: 1e-5 }
}

#[test]
fn matmul_2d_f32() {
    init();
    let (m, k, n) = (5, 37, 7);
    let a = rand_vec(1, m * k);
    let b = rand_vec(2, k * n);
    let out = arr_f32(&a, &[m as i32, k as i32]).matmul(&arr_f32(&b, &[k as i32, n as i32])).unwrap();
    assert_eq!(out.dtype(), Dtype::F32);
    check_array(&out, &[m as i32, n as i32], &matmul_ref(&a, &b, m, k, n), matmul_tol(k), "matmul f32");
}

#[test]
fn matmul_2d_bf16() {
    init();
    let (m, k, n) = (5, 37, 7);
    let (a, ar) = arr_bf16(&rand_vec(3, m * k), &[m as i32, k as i32]);
    let (b, br) = arr_bf16(&rand_vec(4, k * n), &[k as i32, n as i32]);
    let out = a.matmul(&b).unwrap();
    assert_eq!(out.dtype(), Dtype::BF16);
    check_array(
        &out,
        &[m as i32, n as i32],
        &matmul_ref(&ar, &br, m, k, n),
        Tol { atol: 2e-2, rtol: 1e-2 },
        "matmul bf16",
    );
}

#[test]
fn matmul_batched_and_broadcast() {
    init();
    let cases: [(&[i32], &[i32]); 4] =
        [(&[3, 4, 6], &[3, 6, 5]), (&[2, 1, 4, 6], &[3, 6, 5]), (&[4, 6], &[2, 6, 5]), (&[2, 3, 4, 6], &[6, 5])];
    for (i, (ash, bsh)) in cases.iter().enumerate() {
        let a = rand_vec(10 + i as u64, numel(ash));
        let b = rand_vec(20 + i as u64, numel(bsh));
        let (want, shape) = batched_matmul_ref(&a, ash, &b, bsh);
        for dtype in [Dtype::F32, Dtype::BF16] {
            let (x, xr) = arr_of(&a, ash, dtype);
            let (y, yr) = arr_of(&b, bsh, dtype);
            let out = x.matmul(&y).unwrap();
            let (want, tol) = if dtype == Dtype::F32 {
                (want.clone(), matmul_tol(6))
            } else {
                (batched_matmul_ref(&xr, ash, &yr, bsh).0, Tol { atol: 2e-2, rtol: 1e-2 })
            };
            check_array(&out, &shape, &want, tol, &format!("matmul {ash:?} @ {bsh:?} {dtype}"));
        }
    }
}

#[test]
fn matmul_vectors_and_transposed_views() {
    init();
    let (k, n) = (6, 4);
    let v = rand_vec(30, k);
    let w = rand_vec(31, k * n);
    // [K] @ [K, N] -> [N]
    let out = arr_f32(&v, &[k as i32]).matmul(&arr_f32(&w, &[k as i32, n as i32])).unwrap();
    check_array(&out, &[n as i32], &matmul_ref(&v, &w, 1, k, n), matmul_tol(k), "vector @ matrix");
    // [N, K] @ [K] -> [N] using the transposed view of w.
    let wt = transpose2(&w, k, n);
    let out = arr_f32(&wt, &[n as i32, k as i32]).matmul(&arr_f32(&v, &[k as i32])).unwrap();
    check_array(&out, &[n as i32], &matmul_ref(&v, &w, 1, k, n), matmul_tol(k), "matrix @ vector");
    // A strided (transposed) operand: (w^T)^T == w.
    let wtv = arr_f32(&wt, &[n as i32, k as i32]).t().unwrap();
    let x = rand_vec(32, 3 * k);
    let out = arr_f32(&x, &[3, k as i32]).matmul(&wtv).unwrap();
    check_array(&out, &[3, n as i32], &matmul_ref(&x, &w, 3, k, n), matmul_tol(k), "matmul with transposed view");
}

#[test]
fn addmm_scales_and_broadcasts() {
    init();
    let (m, k, n) = (4, 9, 3);
    let a = rand_vec(40, m * k);
    let b = rand_vec(41, k * n);
    let ab = matmul_ref(&a, &b, m, k, n);
    let (alpha, beta) = (0.5f32, 2.0f32);
    // Full c.
    let c = rand_vec(42, m * n);
    let out = arr_f32(&c, &[m as i32, n as i32])
        .addmm(&arr_f32(&a, &[m as i32, k as i32]), &arr_f32(&b, &[k as i32, n as i32]), alpha, beta)
        .unwrap();
    let want: Vec<f32> = c.iter().zip(&ab).map(|(&c, &p)| beta * c + alpha * p).collect();
    check_array(&out, &[m as i32, n as i32], &want, matmul_tol(k), "addmm");
    // Bias row broadcast over the rows.
    let bias = rand_vec(43, n);
    let out = arr_f32(&bias, &[n as i32])
        .addmm(&arr_f32(&a, &[m as i32, k as i32]), &arr_f32(&b, &[k as i32, n as i32]), 1.0, 1.0)
        .unwrap();
    let want: Vec<f32> = (0..m * n).map(|i| bias[i % n] + ab[i]).collect();
    check_array(&out, &[m as i32, n as i32], &want, matmul_tol(k), "addmm broadcast bias");
    // bf16.
    let (cb, cr) = arr_bf16(&c, &[m as i32, n as i32]);
    let (xa, ar) = arr_bf16(&a, &[m as i32, k as i32]);
    let (xb, br) = arr_bf16(&b, &[k as i32, n as i32]);
    let out = cb.addmm(&xa, &xb, alpha, beta).unwrap();
    assert_eq!(out.dtype(), Dtype::BF16);
    let abr = matmul_ref(&ar, &br, m, k, n);
    let want: Vec<f32> = cr.iter().zip(&abr).map(|(&c, &p)| beta * c + alpha * p).collect();
    check_array(&out, &[m as i32, n as i32], &want, Tol { atol: 2e-2, rtol: 1e-2 }, "addmm bf16");
}

#[test]
fn matmul_shape_mismatch_is_mlx_error() {
    init();
    let a = arr_f32(&[1.0, 2.0, 3.0], &[1, 3]);
    let b = arr_f32(&[0.0; 8], &[4, 2]);
    match a.matmul(&b) {
        Err(Error::Mlx(msg)) => {
            assert!(msg.contains("[matmul]"), "message should be MLX's own: {msg}");
            assert!(msg.contains("(1,3)") && msg.contains("(4,2)"), "message should name the shapes: {msg}");
        }
        other => panic!("expected an MLX error, got {other:?}"),
    }
    // The error does not poison later calls on this thread.
    let ok = a.matmul(&arr_f32(&[1.0, 1.0, 1.0], &[3, 1])).unwrap();
    assert_eq!(ok.to_vec::<f32>().unwrap(), vec![6.0]);
    // addmm reports its own shape errors too.
    let r = arr_f32(&[0.0; 4], &[2, 2]).addmm(&a, &b, 1.0, 1.0);
    assert!(matches!(r, Err(Error::Mlx(_))), "{r:?}");
}

/// Row-dependent magnitudes so that scales vary between groups and rows.
fn weights(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut g = Lcg::new(seed);
    (0..rows * cols)
        .map(|i| {
            let row_scale = 0.2 + (i / cols) as f32 * 0.3;
            g.range(-1.0, 1.0) * row_scale + if (i / 16) % 3 == 0 { 0.25 } else { 0.0 }
        })
        .collect()
}

struct Quantized {
    wq: Array,
    scales: Array,
    biases: Array,
    /// The decoded weights, `scale * q + bias`, from the packed bits.
    decoded: Vec<f32>,
    scales_v: Vec<f32>,
}

/// Quantizes `w [rows, cols]` (f32) and decodes the result by hand; checks shapes, dtypes,
/// code range, agreement with MLX's dequantize and the quantization error.
fn quantize_and_check(w: &[f32], rows: usize, cols: usize, group: usize, bits: usize) -> Quantized {
    let what = format!("bits {bits} group {group}");
    let (wq, scales, biases) = quantize(&arr_f32(w, &[rows as i32, cols as i32]), group as i32, bits as i32).unwrap();
    assert_eq!(wq.dtype(), Dtype::U32, "{what}: wq dtype");
    assert_eq!(wq.shape(), vec![rows as i32, (cols * bits / 32) as i32], "{what}: wq shape");
    assert_eq!(scales.dtype(), Dtype::F32, "{what}");
    assert_eq!(biases.dtype(), Dtype::F32, "{what}");
    assert_eq!(scales.shape(), vec![rows as i32, (cols / group) as i32], "{what}: scales shape");
    assert_eq!(biases.shape(), scales.shape(), "{what}: biases shape");

    let codes = unpack_codes(&wq.to_vec::<u32>().unwrap(), rows, cols, bits);
    assert!(codes.iter().all(|&c| c < (1 << bits)));
    // The codes use the whole range (each group maps its min and max to the ends).
    assert!(codes.contains(&0) && codes.contains(&((1 << bits) - 1)), "{what}: codes span 0..{}", (1 << bits) - 1);
    let s = scales.to_vec::<f32>().unwrap();
    let b = biases.to_vec::<f32>().unwrap();
    let decoded = dequantize_ref(&codes, &s, &b, rows, cols, group);

    // MLX's dequantize agrees with the hand decoding.
    let deq = dequantize(&wq, &scales, Some(&biases), group as i32, bits as i32).unwrap();
    assert_eq!(deq.dtype(), Dtype::F32);
    check_array(
        &deq,
        &[rows as i32, cols as i32],
        &decoded,
        Tol { atol: 1e-6, rtol: 1e-6 },
        &format!("{what}: dequantize"),
    );

    // Every weight is within one quantization step of its original (MLX's documented bound),
    // and on average within half a step.
    let gpr = cols / group;
    let mut sum_err_steps = 0f64;
    for i in 0..rows * cols {
        let step = s[(i / cols) * gpr + (i % cols) / group].abs();
        let err = (decoded[i] - w[i]).abs();
        assert!(err <= step * 1.0001 + 1e-6, "{what}: weight {i} = {} decoded as {} (step {step})", w[i], decoded[i]);
        sum_err_steps += (err / step.max(1e-12)) as f64;
    }
    let mean = sum_err_steps / (rows * cols) as f64;
    assert!(mean <= 0.3, "{what}: mean error {mean} steps");
    Quantized { wq, scales, biases, decoded, scales_v: s }
}

#[test]
fn quantize_layout_dequantize_and_quantized_matmul_f32() {
    init();
    let (rows, cols, m) = (8usize, 256usize, 3usize);
    for bits in [2usize, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            let what = format!("bits {bits} group {group}");
            let w = weights(1000 + bits as u64 * 10 + group as u64, rows, cols);
            let q = quantize_and_check(&w, rows, cols, group, bits);
            assert!(q.scales_v.iter().all(|s| s.is_finite() && *s != 0.0));

            // x [M, K] @ W^T with W [N, K] -> [M, N], against the hand-decoded weights.
            let x = rand_vec(2000 + bits as u64 + group as u64, m * cols);
            let out = quantized_matmul(
                &arr_f32(&x, &[m as i32, cols as i32]),
                &q.wq,
                &q.scales,
                Some(&q.biases),
                true,
                group as i32,
                bits as i32,
            )
            .unwrap();
            assert_eq!(out.dtype(), Dtype::F32);
            let want = matmul_ref(&x, &transpose2(&q.decoded, rows, cols), m, cols, rows);
            check_array(&out, &[m as i32, rows as i32], &want, matmul_tol(cols), &format!("{what}: quantized_matmul"));
        }
    }
}

#[test]
fn quantized_matmul_batched_and_untransposed() {
    init();
    let (rows, cols, group, bits) = (16usize, 128usize, 64usize, 4usize);
    let w = weights(77, rows, cols);
    let q = quantize_and_check(&w, rows, cols, group, bits);
    // Batched activations [2, 3, K].
    let x = rand_vec(78, 2 * 3 * cols);
    let out = quantized_matmul(
        &arr_f32(&x, &[2, 3, cols as i32]),
        &q.wq,
        &q.scales,
        Some(&q.biases),
        true,
        group as i32,
        bits as i32,
    )
    .unwrap();
    let want = matmul_ref(&x, &transpose2(&q.decoded, rows, cols), 6, cols, rows);
    check_array(&out, &[2, 3, rows as i32], &want, matmul_tol(cols), "batched quantized_matmul");

    // transpose = false: W is [K, N] quantized along N, and the product is x @ W.
    let x = rand_vec(79, 3 * rows);
    let out = quantized_matmul(
        &arr_f32(&x, &[3, rows as i32]),
        &q.wq,
        &q.scales,
        Some(&q.biases),
        false,
        group as i32,
        bits as i32,
    )
    .unwrap();
    let want = matmul_ref(&x, &q.decoded, 3, rows, cols);
    check_array(&out, &[3, cols as i32], &want, matmul_tol(rows), "quantized_matmul transpose=false");

    // A K that does not match the weights is an MLX error.
    let bad = arr_f32(&vec![0.0; 3 * 100], &[3, 100]);
    let r = quantized_matmul(&bad, &q.wq, &q.scales, Some(&q.biases), true, group as i32, bits as i32);
    assert!(matches!(r, Err(Error::Mlx(_))), "{r:?}");
}

#[test]
fn quantize_rejects_bad_groups() {
    init();
    let w = arr_f32(&vec![0.5; 4 * 96], &[4, 96]);
    // 96 is not a multiple of 64.
    assert!(matches!(quantize(&w, 64, 4), Err(Error::Mlx(_))));
    // Unsupported bit width.
    assert!(matches!(quantize(&arr_f32(&vec![0.5; 4 * 128], &[4, 128]), 64, 7), Err(Error::Mlx(_))));
}

#[test]
fn quantized_matmul_bf16_activations_runs() {
    // MLX's CPU kernel for bf16 activations is known to be inaccurate (see
    // shared/reference/mlx-from-pypi.md), so only the shape, dtype and finiteness are checked.
    init();
    let (rows, cols, group, bits) = (8usize, 128usize, 64usize, 4usize);
    let (w, _) = arr_bf16(&weights(90, rows, cols), &[rows as i32, cols as i32]);
    let (wq, scales, biases) = quantize(&w, group as i32, bits as i32).unwrap();
    assert_eq!(scales.dtype(), Dtype::BF16);
    let (x, _) = arr_bf16(&rand_vec(91, 2 * cols), &[2, cols as i32]);
    let out = quantized_matmul(&x, &wq, &scales, Some(&biases), true, group as i32, bits as i32).unwrap();
    assert_eq!(out.shape(), vec![2, rows as i32]);
    assert_eq!(out.dtype(), Dtype::BF16);
    assert!(read_f32(&out).iter().all(|v| v.is_finite()));
}
