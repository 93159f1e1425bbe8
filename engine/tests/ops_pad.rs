//! `pad` (constant and edge modes, any subset of axes) against a naive reference.

mod common;

use common::*;
use mlx_engine::api::ops_table::PadMode;
use mlx_engine::api::Dtype;

/// Naive padding: `widths` holds `(axis, before, after)`; `value` fills (constant mode) or the
/// nearest element is repeated (edge mode).
fn pad_ref(x: &[f32], shape: &[i32], widths: &[(i32, i32, i32)], edge: bool, value: f32) -> (Vec<f32>, Vec<i32>) {
    let mut lo = vec![0i32; shape.len()];
    let mut out_shape = shape.to_vec();
    for &(ax, b, a) in widths {
        let ax = if ax < 0 { ax + shape.len() as i32 } else { ax } as usize;
        lo[ax] = b;
        out_shape[ax] += b + a;
    }
    let ist = strides_of(&ushape(shape));
    let ou = ushape(&out_shape);
    let v = (0..numel(&out_shape))
        .map(|flat| {
            let idx = unravel(flat, &ou);
            let mut src = 0usize;
            for i in 0..shape.len() {
                let mut j = idx[i] as i32 - lo[i];
                if j < 0 || j >= shape[i] {
                    if !edge {
                        return value;
                    }
                    j = j.clamp(0, shape[i] - 1);
                }
                src += j as usize * ist[i];
            }
            x[src]
        })
        .collect();
    (v, out_shape)
}

/// A shape and its `(axis, low, high)` pad widths.
type PadCase<'a> = (&'a [i32], &'a [(i32, i32, i32)]);

#[test]
fn pad_constant_and_edge() {
    init();
    let cases: [PadCase; 4] = [
        (&[3, 4], &[(0, 1, 2), (1, 0, 3)]),
        (&[2, 3, 4], &[(1, 2, 0)]),
        // Negative axis: the last one (images: pad the width).
        (&[2, 2, 3], &[(-1, 1, 1)]),
        (&[1, 5, 5, 3], &[(1, 1, 1), (2, 2, 2)]),
    ];
    for (i, (shape, widths)) in cases.iter().enumerate() {
        for dtype in [Dtype::F32, Dtype::BF16] {
            let (x, xr) = arr_of(&rand_vec(40 + i as u64, numel(shape)), shape, dtype);
            let what = format!("pad {dtype} {shape:?} {widths:?}");
            let out = x.pad(widths, 0.5).unwrap();
            assert_eq!(out.dtype(), dtype, "{what}");
            let (want, os) = pad_ref(&xr, shape, widths, false, 0.5);
            check_array(&out, &os, &want, F32_TOL, &format!("{what} constant"));
            let out = x.pad_with(widths, PadMode::Edge, 0.0).unwrap();
            let (want, os) = pad_ref(&xr, shape, widths, true, 0.0);
            check_array(&out, &os, &want, F32_TOL, &format!("{what} edge"));
        }
    }
}

#[test]
fn pad_integer_arrays_keep_their_dtype() {
    let x = arr_i32(&[1, 2, 3], &[3]);
    let out = x.pad(&[(0, 2, 1)], -7.0).unwrap();
    assert_eq!(out.dtype(), Dtype::I32);
    assert_eq!(out.to_vec::<i32>().unwrap(), vec![-7, -7, 1, 2, 3, -7]);
}

#[test]
fn pad_bad_arguments_are_errors() {
    let x = arr_f32(&[0.0; 6], &[2, 3]);
    assert_err_contains(x.pad(&[(0, -1, 0)], 0.0), "must not be negative", "negative width");
    assert!(x.pad(&[(2, 1, 1)], 0.0).is_err(), "axis out of range must fail");
    // The process keeps working.
    assert_eq!(x.pad(&[(1, 1, 1)], 0.0).unwrap().shape(), vec![2, 5]);
}
