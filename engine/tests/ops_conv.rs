//! 2-D convolution (NHWC input, `[C_out, KH, KW, C_in / groups]` weight) and 1-D convolution
//! (NLC input, `[C_out, K, C_in / groups]` weight) against a naive reference, with strides,
//! padding, dilation and groups.

mod common;

use common::*;
use mlx_engine::api::{Dtype, Error};

struct Case {
    x: [usize; 4],
    w: [usize; 4],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
}

fn run(case: &Case, dtype: Dtype, seed: u64) {
    let xs: Vec<i32> = case.x.iter().map(|&d| d as i32).collect();
    let ws: Vec<i32> = case.w.iter().map(|&d| d as i32).collect();
    let (xa, xr) = arr_of(&rand_vec(seed, numel(&xs)), &xs, dtype);
    let (wa, wr) = arr_of(&rand_vec(seed + 1, numel(&ws)), &ws, dtype);
    let i2 = |v: [usize; 2]| [v[0] as i32, v[1] as i32];
    let out = xa.conv2d(&wa, i2(case.stride), i2(case.pad), i2(case.dil), case.groups as i32).unwrap();
    assert_eq!(out.dtype(), dtype);
    let (want, os) = conv2d_ref(&xr, case.x, &wr, case.w, case.stride, case.pad, case.dil, case.groups);
    let k = case.w[1] * case.w[2] * case.w[3];
    let tol =
        if dtype == Dtype::F32 { Tol { atol: 2e-6 * k as f32, rtol: 1e-5 } } else { Tol { atol: 3e-2, rtol: 1e-2 } };
    let what = format!(
        "conv2d {dtype} x {:?} w {:?} stride {:?} pad {:?} dilation {:?} groups {}",
        case.x, case.w, case.stride, case.pad, case.dil, case.groups
    );
    check_array(&out, &os.map(|d| d as i32), &want, tol, &what);
}

fn cases() -> Vec<Case> {
    vec![
        Case { x: [2, 7, 8, 4], w: [6, 3, 3, 4], stride: [1, 1], pad: [0, 0], dil: [1, 1], groups: 1 },
        Case { x: [2, 7, 8, 4], w: [6, 3, 3, 4], stride: [1, 1], pad: [1, 1], dil: [1, 1], groups: 1 },
        Case { x: [1, 9, 8, 3], w: [5, 3, 2, 3], stride: [2, 3], pad: [1, 2], dil: [1, 1], groups: 1 },
        Case { x: [1, 9, 9, 2], w: [4, 3, 3, 2], stride: [1, 1], pad: [2, 1], dil: [2, 3], groups: 1 },
        Case { x: [2, 6, 6, 4], w: [6, 3, 3, 2], stride: [1, 2], pad: [1, 1], dil: [1, 1], groups: 2 },
        // Depthwise: one input channel per group.
        Case { x: [1, 6, 5, 4], w: [8, 3, 3, 1], stride: [1, 1], pad: [1, 1], dil: [1, 1], groups: 4 },
        // 1x1 (a per-pixel matmul) and a patch embedding (kernel == stride).
        Case { x: [1, 4, 4, 5], w: [3, 1, 1, 5], stride: [1, 1], pad: [0, 0], dil: [1, 1], groups: 1 },
        Case { x: [1, 8, 8, 3], w: [4, 4, 4, 3], stride: [4, 4], pad: [0, 0], dil: [1, 1], groups: 1 },
    ]
}

#[test]
fn conv2d_f32() {
    init();
    for (i, c) in cases().iter().enumerate() {
        run(c, Dtype::F32, 100 + 10 * i as u64);
    }
}

#[test]
fn conv2d_bf16() {
    init();
    for (i, c) in cases().iter().enumerate() {
        run(c, Dtype::BF16, 200 + 10 * i as u64);
    }
}

#[test]
fn conv2d_shape_errors() {
    init();
    let x = arr_f32(&[0.0; 2 * 5 * 5 * 4], &[2, 5, 5, 4]);
    // Weight channels do not match the input.
    let w = arr_f32(&[0.0; 3 * 3 * 3 * 3], &[3, 3, 3, 3]);
    assert!(matches!(x.conv2d(&w, [1, 1], [0, 0], [1, 1], 1), Err(Error::Mlx(_))));
    // Input of the wrong rank.
    let x3 = arr_f32(&[0.0; 5 * 5 * 4], &[5, 5, 4]);
    let w4 = arr_f32(&[0.0; 2 * 3 * 3 * 4], &[2, 3, 3, 4]);
    assert!(matches!(x3.conv2d(&w4, [1, 1], [0, 0], [1, 1], 1), Err(Error::Mlx(_))));
    // Kernel larger than the padded input.
    let big = arr_f32(&[0.0; 2 * 7 * 7 * 4], &[2, 7, 7, 4]);
    assert!(matches!(x.conv2d(&big, [1, 1], [0, 0], [1, 1], 1), Err(Error::Mlx(_))));
}

/// `(x [N, L, Cin], w [Cout, K, Cin/groups], stride, pad, dilation, groups)`.
type Case1 = ([usize; 3], [usize; 3], usize, usize, usize, usize);

#[test]
fn conv1d_f32_and_bf16() {
    init();
    let cases: [Case1; 5] = [
        ([2, 9, 4], [6, 3, 4], 1, 0, 1, 1),
        ([1, 10, 3], [5, 4, 3], 2, 1, 1, 1),
        ([1, 12, 2], [4, 3, 2], 1, 2, 3, 1),
        ([2, 8, 4], [6, 3, 2], 1, 1, 1, 2),
        // Depthwise, as in audio front ends.
        ([1, 7, 4], [4, 5, 1], 1, 2, 1, 4),
    ];
    for (i, &(x, w, stride, pad, dil, groups)) in cases.iter().enumerate() {
        for dtype in [Dtype::F32, Dtype::BF16] {
            let xs: Vec<i32> = x.iter().map(|&d| d as i32).collect();
            let ws: Vec<i32> = w.iter().map(|&d| d as i32).collect();
            let seed = 300 + 10 * i as u64;
            let (xa, xr) = arr_of(&rand_vec(seed, numel(&xs)), &xs, dtype);
            let (wa, wr) = arr_of(&rand_vec(seed + 1, numel(&ws)), &ws, dtype);
            let out = xa.conv1d(&wa, stride as i32, pad as i32, dil as i32, groups as i32).unwrap();
            assert_eq!(out.dtype(), dtype);
            // A 1-D convolution is the 2-D one over an image of height 1.
            let (want, os) = conv2d_ref(
                &xr,
                [x[0], 1, x[1], x[2]],
                &wr,
                [w[0], 1, w[1], w[2]],
                [1, stride],
                [0, pad],
                [1, dil],
                groups,
            );
            let tol = if dtype == Dtype::F32 { Tol { atol: 2e-5, rtol: 1e-5 } } else { Tol { atol: 3e-2, rtol: 1e-2 } };
            let what =
                format!("conv1d {dtype} x {x:?} w {w:?} stride {stride} pad {pad} dilation {dil} groups {groups}");
            check_array(&out, &[os[0] as i32, os[2] as i32, os[3] as i32], &want, tol, &what);
        }
    }
}

#[test]
fn conv1d_shape_errors() {
    init();
    let x = arr_f32(&[0.0; 2 * 6 * 4], &[2, 6, 4]);
    let w = arr_f32(&[0.0; 3 * 3 * 3], &[3, 3, 3]);
    assert_err_contains(x.conv1d(&w, 1, 0, 1, 1), "conv", "channel mismatch");
    let w2 = arr_f32(&[0.0; 3 * 3 * 4], &[3, 3, 4]);
    let x2 = arr_f32(&[0.0; 6 * 4], &[6, 4]);
    assert!(matches!(x2.conv1d(&w2, 1, 0, 1, 1), Err(Error::Mlx(_))), "rank-2 input must fail");
    // The process keeps working after the failures.
    assert_eq!(x.conv1d(&w2, 1, 0, 1, 1).unwrap().shape(), vec![2, 4, 3]);
}
