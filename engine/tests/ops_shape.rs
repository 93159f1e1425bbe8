//! Shape and indexing ops: reshape, transpose, swapaxes, expand_dims, squeeze, broadcast_to,
//! concatenate, split, strided slices, slice_update, take, take_along_axis, put_along_axis.

mod common;

use common::*;
use mlx_engine::api::{concatenate, Array, Dtype, Error};

/// `0, 1, 2, ...` as f32 with the given shape, so every value names its flat index.
fn iota(shape: &[i32]) -> (Array, Vec<f32>) {
    let v: Vec<f32> = (0..numel(shape)).map(|i| i as f32).collect();
    (arr_f32(&v, shape), v)
}

/// Naive axis permutation: output axis `i` is input axis `axes[i]`.
fn permute_ref(x: &[f32], shape: &[i32], axes: &[usize]) -> (Vec<f32>, Vec<i32>) {
    let out_shape: Vec<i32> = axes.iter().map(|&a| shape[a]).collect();
    let ist = strides_of(&ushape(shape));
    let ou = ushape(&out_shape);
    let v = (0..x.len())
        .map(|flat| {
            let idx = unravel(flat, &ou);
            x[axes.iter().enumerate().map(|(i, &a)| idx[i] * ist[a]).sum::<usize>()]
        })
        .collect();
    (v, out_shape)
}

/// Naive strided slice with positive strides.
fn slice_ref(x: &[f32], shape: &[i32], start: &[i32], stop: &[i32], strides: &[i32]) -> (Vec<f32>, Vec<i32>) {
    let out_shape: Vec<i32> =
        (0..shape.len()).map(|i| ((stop[i] - start[i]).max(0) + strides[i] - 1) / strides[i]).collect();
    let ist = strides_of(&ushape(shape));
    let ou = ushape(&out_shape);
    let v = (0..numel(&out_shape))
        .map(|flat| {
            let idx = unravel(flat, &ou);
            x[(0..shape.len()).map(|i| (start[i] as usize + idx[i] * strides[i] as usize) * ist[i]).sum::<usize>()]
        })
        .collect();
    (v, out_shape)
}

#[test]
fn reshape_keeps_row_major_order() {
    let (a, v) = iota(&[2, 3, 4]);
    let r = a.reshape(&[4, 6]).unwrap();
    assert_eq!(r.shape(), vec![4, 6]);
    assert_eq!(r.to_vec::<f32>().unwrap(), v);
    let r = a.reshape(&[-1, 8]).unwrap();
    assert_eq!(r.shape(), vec![3, 8]);
    assert_eq!(r.to_vec::<f32>().unwrap(), v);
    let r = a.reshape(&[24]).unwrap();
    assert_eq!(r.shape(), vec![24]);
    // Reshaping a transposed view reads it in its logical order.
    let t = a.transpose(&[2, 0, 1]).unwrap().reshape(&[24]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), permute_ref(&v, &[2, 3, 4], &[2, 0, 1]).0);
}

#[test]
fn bad_reshape_is_an_mlx_error() {
    let (a, _) = iota(&[2, 3]);
    match a.reshape(&[4, 2]) {
        Err(Error::Mlx(msg)) => assert!(msg.contains("[reshape]"), "{msg}"),
        other => panic!("expected MLX's reshape error, got {other:?}"),
    }
    assert!(matches!(a.reshape(&[-1, -1]), Err(Error::Mlx(_))));
    assert!(matches!(a.reshape(&[-1, 4]), Err(Error::Mlx(_))));
}

#[test]
fn transpose_t_swapaxes() {
    let shape = [2, 3, 4];
    let (a, v) = iota(&shape);
    for axes in [[0usize, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]] {
        let ax: Vec<i32> = axes.iter().map(|&x| x as i32).collect();
        let out = a.transpose(&ax).unwrap();
        let (want, ws) = permute_ref(&v, &shape, &axes);
        assert_eq!(out.shape(), ws);
        assert_eq!(out.to_vec::<f32>().unwrap(), want, "transpose {axes:?}");
    }
    // Negative axes.
    let out = a.transpose(&[-1, 0, 1]).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), permute_ref(&v, &shape, &[2, 0, 1]).0);
    // Empty axes reverse, like t().
    let rev = permute_ref(&v, &shape, &[2, 1, 0]);
    let out = a.transpose(&[]).unwrap();
    assert_eq!((out.shape(), out.to_vec::<f32>().unwrap()), (rev.1.clone(), rev.0.clone()));
    let out = a.t().unwrap();
    assert_eq!((out.shape(), out.to_vec::<f32>().unwrap()), (rev.1, rev.0));
    let (m, mv) = iota(&[3, 5]);
    assert_eq!(m.t().unwrap().to_vec::<f32>().unwrap(), transpose2(&mv, 3, 5));
    // swapaxes.
    let out = a.swapaxes(0, 2).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), permute_ref(&v, &shape, &[2, 1, 0]).0);
    let out = a.swapaxes(-1, 1).unwrap();
    assert_eq!(out.shape(), vec![2, 4, 3]);
    assert_eq!(out.to_vec::<f32>().unwrap(), permute_ref(&v, &shape, &[0, 2, 1]).0);
    // Errors.
    assert!(matches!(a.transpose(&[0, 1]), Err(Error::Mlx(_))));
    assert!(matches!(a.transpose(&[0, 0, 1]), Err(Error::Mlx(_))));
    assert!(matches!(a.swapaxes(0, 3), Err(Error::Mlx(_))));
}

#[test]
fn expand_dims_and_squeeze() {
    let (a, v) = iota(&[2, 3]);
    let e = a.expand_dims(&[0]).unwrap();
    assert_eq!(e.shape(), vec![1, 2, 3]);
    let e = a.expand_dims(&[0, 3]).unwrap();
    assert_eq!(e.shape(), vec![1, 2, 3, 1]);
    assert_eq!(e.to_vec::<f32>().unwrap(), v);
    let e = a.expand_dims(&[-1]).unwrap();
    assert_eq!(e.shape(), vec![2, 3, 1]);

    let (b, bv) = iota(&[1, 2, 1, 3, 1]);
    let s = b.squeeze(&[]).unwrap();
    assert_eq!(s.shape(), vec![2, 3]);
    assert_eq!(s.to_vec::<f32>().unwrap(), bv);
    assert_eq!(b.squeeze(&[2]).unwrap().shape(), vec![1, 2, 3, 1]);
    assert_eq!(b.squeeze(&[0, -1]).unwrap().shape(), vec![2, 1, 3]);
    // Squeezing an axis that is not of size 1 is MLX's error.
    assert!(matches!(b.squeeze(&[1]), Err(Error::Mlx(_))));
}

#[test]
fn broadcast_to_repeats() {
    let (a, _) = iota(&[3]);
    let b = a.broadcast_to(&[2, 3]).unwrap();
    assert_eq!(b.shape(), vec![2, 3]);
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    let (c, _) = iota(&[2, 1]);
    let d = c.broadcast_to(&[2, 2, 3]).unwrap();
    assert_eq!(d.to_vec::<f32>().unwrap(), vec![0., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1.]);
    assert!(matches!(a.broadcast_to(&[2, 4]), Err(Error::Mlx(_))));
}

#[test]
fn concatenate_along_axes() {
    let (a, av) = iota(&[2, 3]);
    let bv: Vec<f32> = (100..106).map(|i| i as f32).collect();
    let b = arr_f32(&bv, &[2, 3]);
    let c0 = concatenate(&[&a, &b], 0).unwrap();
    assert_eq!(c0.shape(), vec![4, 3]);
    assert_eq!(c0.to_vec::<f32>().unwrap(), [av.clone(), bv.clone()].concat());
    let c1 = concatenate(&[&a, &b, &a], -1).unwrap();
    assert_eq!(c1.shape(), vec![2, 9]);
    let want: Vec<f32> =
        (0..2).flat_map(|r| [&av[r * 3..r * 3 + 3], &bv[r * 3..r * 3 + 3], &av[r * 3..r * 3 + 3]].concat()).collect();
    assert_eq!(c1.to_vec::<f32>().unwrap(), want);
    // bf16 keeps its dtype and bits.
    let (x, xr) = arr_bf16(&[0.1, 0.2], &[2]);
    let (y, yr) = arr_bf16(&[0.3], &[1]);
    let xy = concatenate(&[&x, &y], 0).unwrap();
    assert_eq!(xy.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&xy), [xr, yr].concat());
    // Mismatched shapes.
    let (d, _) = iota(&[2, 2]);
    assert!(matches!(concatenate(&[&a, &d], 0), Err(Error::Mlx(_))));
}

#[test]
fn split_at_and_split_equal() {
    let (a, v) = iota(&[2, 6]);
    let parts = a.split_at(&[1, 4], 1).unwrap();
    assert_eq!(parts.len(), 3);
    let shapes: Vec<Vec<i32>> = parts.iter().map(Array::shape).collect();
    assert_eq!(shapes, vec![vec![2, 1], vec![2, 3], vec![2, 2]]);
    assert_eq!(parts[0].to_vec::<f32>().unwrap(), vec![0.0, 6.0]);
    assert_eq!(parts[1].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 7.0, 8.0, 9.0]);
    assert_eq!(parts[2].to_vec::<f32>().unwrap(), vec![4.0, 5.0, 10.0, 11.0]);

    let rows = a.split_at(&[1], 0).unwrap();
    assert_eq!(rows[0].to_vec::<f32>().unwrap(), v[..6].to_vec());
    assert_eq!(rows[1].to_vec::<f32>().unwrap(), v[6..].to_vec());

    let eq = a.split_equal(3, -1).unwrap();
    assert_eq!(eq.len(), 3);
    for (i, p) in eq.iter().enumerate() {
        assert_eq!(p.shape(), vec![2, 2]);
        let c = 2.0 * i as f32;
        assert_eq!(p.to_vec::<f32>().unwrap(), vec![c, c + 1.0, c + 6.0, c + 7.0]);
    }
    assert!(matches!(a.split_equal(4, 1), Err(Error::Array(_))));
    assert!(matches!(a.split_equal(0, 1), Err(Error::Array(_))));
    assert!(a.split_equal(2, 5).is_err());
}

#[test]
fn strided_slices() {
    let shape = [6, 5];
    let (a, v) = iota(&shape);
    for (start, stop, strides) in
        [([1, 0], [6, 5], [2, 2]), ([0, 1], [3, 5], [1, 3]), ([2, 4], [5, 5], [1, 1]), ([0, 0], [6, 5], [5, 4])]
    {
        let out = a.slice(&start, &stop, &strides).unwrap();
        let (want, ws) = slice_ref(&v, &shape, &start, &stop, &strides);
        assert_eq!(out.shape(), ws, "slice {start:?}..{stop:?} by {strides:?}");
        assert_eq!(out.to_vec::<f32>().unwrap(), want, "slice {start:?}..{stop:?} by {strides:?}");
    }
    // Out-of-range stops clamp to the axis, and negative starts count from the end.
    let out = a.slice(&[-2, 0], &[100, 2], &[1, 1]).unwrap();
    assert_eq!(out.shape(), vec![2, 2]);
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![20.0, 21.0, 25.0, 26.0]);
    // An empty range gives an empty axis.
    assert_eq!(a.slice(&[3, 0], &[3, 5], &[1, 1]).unwrap().shape(), vec![0, 5]);
    // The wrong number of start/stop/stride values is caught before MLX.
    assert!(matches!(a.slice(&[0], &[1], &[1]), Err(Error::Array(_))));
}

#[test]
fn negative_stride_slices_reverse() {
    // MLX supports negative strides (as NumPy's a[::-1]): start is clamped to n - 1 and the
    // stop is exclusive; a stop of -(n + 1) normalises to "before index 0".
    let (a, _) = iota(&[5]);
    let out = a.slice(&[4], &[-6], &[-1]).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![4.0, 3.0, 2.0, 1.0, 0.0]);
    let out = a.slice(&[4], &[0], &[-2]).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![4.0, 2.0]);
    let out = a.slice(&[3], &[-6], &[-2]).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![3.0, 1.0]);
    let (m, _) = iota(&[2, 3]);
    let out = m.slice(&[1, 2], &[-3, -4], &[-1, -1]).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
}

#[test]
fn slice_axis_selects_one_axis() {
    let (a, v) = iota(&[2, 4, 3]);
    let out = a.slice_axis(1, 1, 3).unwrap();
    assert_eq!(out.shape(), vec![2, 2, 3]);
    let want = slice_ref(&v, &[2, 4, 3], &[0, 1, 0], &[2, 3, 3], &[1, 1, 1]).0;
    assert_eq!(out.to_vec::<f32>().unwrap(), want);
    let out = a.slice_axis(-1, 2, 3).unwrap();
    assert_eq!(out.shape(), vec![2, 4, 1]);
    assert_eq!(out.to_vec::<f32>().unwrap(), (0..8).map(|i| (i * 3 + 2) as f32).collect::<Vec<_>>());
    assert!(matches!(a.slice_axis(3, 0, 1), Err(Error::Array(_))));
}

#[test]
fn slice_update_replaces_a_region() {
    let shape = [4, 5];
    let (a, v) = iota(&shape);
    let upd: Vec<f32> = (0..4).map(|i| -1.0 - i as f32).collect();
    let out = a.slice_update(&arr_f32(&upd, &[2, 2]), &[1, 0], &[4, 5], &[2, 3]).unwrap();
    let mut want = v.clone();
    // Rows 1, 3 and columns 0, 3.
    for (k, (r, c)) in [(1, 0), (1, 3), (3, 0), (3, 3)].iter().enumerate() {
        want[r * 5 + c] = upd[k];
    }
    assert_eq!(out.to_vec::<f32>().unwrap(), want);
    // The source is unchanged (arrays are immutable).
    assert_eq!(a.to_vec::<f32>().unwrap(), v);
    // A contiguous block, with a broadcast update.
    let out = a.slice_update(&Array::scalar(9.0, Dtype::F32).unwrap(), &[0, 1], &[2, 3], &[1, 1]).unwrap();
    let mut want = v.clone();
    for (r, c) in [(0, 1), (0, 2), (1, 1), (1, 2)] {
        want[r * 5 + c] = 9.0;
    }
    assert_eq!(out.to_vec::<f32>().unwrap(), want);
    // An update of the wrong shape.
    assert!(matches!(a.slice_update(&arr_f32(&[1.0; 3], &[3]), &[0, 0], &[2, 2], &[1, 1]), Err(Error::Mlx(_))));
}

#[test]
fn take_along_an_axis() {
    let (a, v) = iota(&[4, 3]);
    let rows = a.take(&arr_i32(&[2, 0, 2], &[3]), 0).unwrap();
    assert_eq!(rows.shape(), vec![3, 3]);
    assert_eq!(rows.to_vec::<f32>().unwrap(), [&v[6..9], &v[0..3], &v[6..9]].concat());
    let cols = a.take(&arr_u32(&[1, 1, 0, 2], &[2, 2]), 1).unwrap();
    assert_eq!(cols.shape(), vec![4, 2, 2]);
    let want: Vec<f32> = (0..4).flat_map(|r| [1, 1, 0, 2].map(|c| v[r * 3 + c])).collect();
    assert_eq!(cols.to_vec::<f32>().unwrap(), want);
    // Embedding-style lookup in bf16.
    let table: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    let (t, tr) = arr_bf16(&table, &[4, 3]);
    let e = t.take(&arr_i32(&[3, 1], &[1, 2]), 0).unwrap();
    assert_eq!(e.shape(), vec![1, 2, 3]);
    assert_eq!(e.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&e), [&tr[9..12], &tr[3..6]].concat());
}

#[test]
fn take_along_axis_and_put_along_axis() {
    let shape = [3, 4];
    let x = rand_vec(5, 12);
    let a = arr_f32(&x, &shape);
    let idx = [3i32, 0, 1, 1, 2, 2, 0, 3, 3];
    let ia = arr_i32(&idx, &[3, 3]);
    let out = a.take_along_axis(&ia, 1).unwrap();
    assert_eq!(out.shape(), vec![3, 3]);
    let want: Vec<f32> = (0..9).map(|k| x[(k / 3) * 4 + idx[k] as usize]).collect();
    assert_eq!(out.to_vec::<f32>().unwrap(), want);

    // Along axis 0 with a broadcast index row.
    let i0 = arr_i32(&[2, 0, 1, 2], &[1, 4]);
    let out = a.take_along_axis(&i0, 0).unwrap();
    assert_eq!(out.shape(), vec![1, 4]);
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![x[8], x[1], x[6], x[11]]);

    // put_along_axis writes values at the indices, leaving the rest.
    let pidx = arr_i32(&[1, 3, 0], &[3, 1]);
    let vals = arr_f32(&[10.0, 20.0, 30.0], &[3, 1]);
    let out = a.put_along_axis(&pidx, &vals, 1).unwrap();
    let mut want = x.clone();
    want[1] = 10.0;
    want[4 + 3] = 20.0;
    want[8] = 30.0;
    assert_eq!(out.to_vec::<f32>().unwrap(), want);
    // Round trip: putting what take_along_axis read back gives the original.
    let back = a.put_along_axis(&ia, &a.take_along_axis(&ia, 1).unwrap(), 1).unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), x);
    // Index arrays of the wrong rank are MLX's error.
    assert!(matches!(a.take_along_axis(&arr_i32(&[0], &[1]), 1), Err(Error::Mlx(_))));
}
