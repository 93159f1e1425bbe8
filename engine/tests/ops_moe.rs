//! Mixture-of-experts matmuls: `gather_mm` and `gather_qmm` (affine-quantized experts) against
//! naive references that pick the operands by index and multiply.

mod common;

use common::*;
use mlx_engine::api::{gather_mm, gather_qmm, quantize, Dtype};

/// `out[i] = a[lhs[i]] @ b[rhs[i]]` for `a [Ba, M, K]`, `b [Bb, K, N]`.
fn gather_mm_ref(a: &[f32], b: &[f32], lhs: &[usize], rhs: &[usize], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    lhs.iter()
        .zip(rhs)
        .flat_map(|(&l, &r)| matmul_ref(&a[l * m * k..(l + 1) * m * k], &b[r * k * n..(r + 1) * k * n], m, k, n))
        .collect()
}

#[test]
fn gather_mm_picks_both_sides() {
    let (m, k, n) = (2, 5, 6);
    let a = rand_vec(1, 4 * m * k);
    let b = rand_vec(2, 3 * k * n);
    let (aa, ba) = (arr_f32(&a, &[4, m as i32, k as i32]), arr_f32(&b, &[3, k as i32, n as i32]));
    let lhs = [0u32, 1, 2, 3, 1];
    let rhs = [2u32, 0, 1, 1, 2];
    let (li, ri) = (arr_u32(&lhs, &[5]), arr_u32(&rhs, &[5]));
    let out = gather_mm(&aa, &ba, Some(&li), Some(&ri), false).unwrap();
    let to_us = |v: &[u32]| v.iter().map(|&i| i as usize).collect::<Vec<_>>();
    let want = gather_mm_ref(&a, &b, &to_us(&lhs), &to_us(&rhs), (m, k, n));
    check_array(&out, &[5, m as i32, n as i32], &want, F32_TOL, "gather_mm lhs+rhs");

    // Only the experts picked (the left side is every batch entry in order), sorted, as a MoE
    // layer does after sorting tokens by expert.
    let rhs = [0u32, 1, 1, 2];
    let out = gather_mm(&aa, &ba, None, Some(&arr_u32(&rhs, &[4])), true).unwrap();
    let want = gather_mm_ref(&a, &b, &[0, 1, 2, 3], &to_us(&rhs), (m, k, n));
    check_array(&out, &[4, m as i32, n as i32], &want, F32_TOL, "gather_mm sorted rhs");
}

#[test]
fn gather_mm_bad_index_is_an_error() {
    let a = arr_f32(&[0.0; 2 * 3], &[1, 2, 3]);
    let b = arr_f32(&[0.0; 3 * 4], &[1, 3, 4]);
    // Float indices are refused by MLX.
    let bad = arr_f32(&[0.0], &[1]);
    assert!(gather_mm(&a, &b, None, Some(&bad), false).is_err());
    // Mismatched inner dimensions.
    let b2 = arr_f32(&[0.0; 2 * 4], &[1, 2, 4]);
    assert!(gather_mm(&a, &b2, None, None, false).is_err());
    assert_eq!(gather_mm(&a, &b, None, Some(&arr_u32(&[0], &[1])), false).unwrap().shape(), vec![1, 2, 4]);
}

#[test]
fn gather_qmm_matches_dequantized_experts() {
    let (experts, nout, k, group, bits) = (3usize, 8usize, 64usize, 32usize, 4usize);
    let w = rand_vec(7, experts * nout * k);
    let (wq, scales, biases) =
        quantize(&arr_f32(&w, &[experts as i32, nout as i32, k as i32]), group as i32, bits as i32).unwrap();
    // The experts as the quantized weights really hold them, decoded by hand.
    let codes = unpack_codes(&wq.to_vec::<u32>().unwrap(), experts * nout, k, bits);
    let deq = dequantize_ref(
        &codes,
        &scales.to_vec::<f32>().unwrap(),
        &biases.to_vec::<f32>().unwrap(),
        experts * nout,
        k,
        group,
    );
    let tokens = 4usize;
    let x = rand_vec(8, tokens * k);
    let xa = arr_f32(&x, &[tokens as i32, 1, k as i32]);
    for (sorted, rhs) in [(false, [2u32, 0, 1, 2]), (true, [0u32, 0, 1, 2])] {
        let ri = arr_u32(&rhs, &[tokens as i32]);
        let out =
            gather_qmm(&xa, &wq, &scales, Some(&biases), None, Some(&ri), true, group as i32, bits as i32, sorted)
                .unwrap();
        // x @ w[e].T per token.
        let want: Vec<f32> = (0..tokens)
            .flat_map(|t| {
                let e = rhs[t] as usize;
                let wt = transpose2(&deq[e * nout * k..(e + 1) * nout * k], nout, k);
                matmul_ref(&x[t * k..(t + 1) * k], &wt, 1, k, nout)
            })
            .collect();
        let what = format!("gather_qmm sorted={sorted}");
        check_array(&out, &[tokens as i32, 1, nout as i32], &want, Tol { atol: 1e-4, rtol: 1e-4 }, &what);
        assert_eq!(out.dtype(), Dtype::F32);
    }
    // A group size the weights were not quantized with does not fit the scales.
    let ri = arr_u32(&[0, 1, 2, 0], &[4]);
    assert!(gather_qmm(&xa, &wq, &scales, Some(&biases), None, Some(&ri), true, 64, bits as i32, false).is_err());
}
