//! Reductions, softmax / logsumexp / log_softmax, arg reductions, sorting, partitions, top-k
//! and cumulative sums.

mod common;

use common::*;
use mlx_engine::api::ops_table::ReduceOp;
use mlx_engine::api::{Array, Dtype, Error};

const SHAPE: [i32; 3] = [2, 3, 4];

fn axes_cases() -> Vec<Vec<i32>> {
    vec![vec![], vec![0], vec![1], vec![2], vec![-1], vec![0, 2], vec![1, 2], vec![0, 1, 2]]
}

fn sum64(l: &[f32]) -> f32 {
    l.iter().map(|&v| v as f64).sum::<f64>() as f32
}

#[test]
fn sum_max_min_mean_prod_over_axes() {
    init();
    let x = Lcg::new(1).vec(numel(&SHAPE), 0.5, 1.5);
    type R = fn(&[f32]) -> f32;
    let ops: [(ReduceOp, R); 5] = [
        (ReduceOp::Sum, sum64),
        (ReduceOp::Max, |l| l.iter().cloned().fold(f32::NEG_INFINITY, f32::max)),
        (ReduceOp::Min, |l| l.iter().cloned().fold(f32::INFINITY, f32::min)),
        (ReduceOp::Mean, |l| (l.iter().map(|&v| v as f64).sum::<f64>() / l.len() as f64) as f32),
        (ReduceOp::Prod, |l| l.iter().map(|&v| v as f64).product::<f64>() as f32),
    ];
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &SHAPE, dtype);
        for (op, f) in ops {
            for axes in axes_cases() {
                for keepdims in [false, true] {
                    let out = a.reduce(op, &axes, keepdims).unwrap();
                    assert_eq!(out.dtype(), dtype, "{op:?}");
                    let (want, ws) = reduce_ref(&xr, &SHAPE, &axes, keepdims, f);
                    let tol = if dtype == Dtype::F32 {
                        Tol { atol: 1e-5, rtol: 2e-6 * 24.0 }
                    } else {
                        Tol { atol: 2e-2, rtol: 2e-2 }
                    };
                    check_array(&out, &ws, &want, tol, &format!("{op:?} {dtype} axes {axes:?} keepdims {keepdims}"));
                }
            }
        }
    }
    // The named wrappers.
    let a = arr_f32(&x, &SHAPE);
    for (m, op) in [
        (Array::sum as fn(&Array, &[i32], bool) -> mlx_engine::api::Result<Array>, ReduceOp::Sum),
        (Array::max, ReduceOp::Max),
        (Array::min, ReduceOp::Min),
        (Array::mean, ReduceOp::Mean),
    ] {
        assert_eq!(
            m(&a, &[1], true).unwrap().to_vec::<f32>().unwrap(),
            a.reduce(op, &[1], true).unwrap().to_vec::<f32>().unwrap()
        );
    }
}

#[test]
fn integer_sum_and_max() {
    init();
    let a = arr_i32(&[1, -2, 3, 4, 5, -6], &[2, 3]);
    let s = a.sum(&[1], false).unwrap();
    assert_eq!(s.to_vec::<i32>().unwrap(), vec![2, 3]);
    assert_eq!(a.max(&[], false).unwrap().item::<i32>().unwrap(), 5);
    assert_eq!(a.min(&[0], true).unwrap().shape(), vec![1, 3]);
    assert_eq!(a.min(&[0], true).unwrap().to_vec::<i32>().unwrap(), vec![1, -2, -6]);
    assert_eq!(a.reduce(ReduceOp::Prod, &[0], false).unwrap().to_vec::<i32>().unwrap(), vec![4, -10, -18]);
}

#[test]
fn all_and_any() {
    init();
    let mut g = Lcg::new(2);
    let b: Vec<bool> = (0..numel(&SHAPE)).map(|_| g.below(4) != 0).collect();
    let a = arr_bool(&b, &SHAPE);
    for axes in axes_cases() {
        for keepdims in [false, true] {
            let all = a.reduce(ReduceOp::All, &axes, keepdims).unwrap();
            let any = a.reduce(ReduceOp::Any, &axes, keepdims).unwrap();
            assert_eq!(all.dtype(), Dtype::Bool);
            let (wa, ws) = reduce_ref(&b, &SHAPE, &axes, keepdims, |l| l.iter().all(|&v| v));
            let (wn, _) = reduce_ref(&b, &SHAPE, &axes, keepdims, |l| l.iter().any(|&v| v));
            assert_eq!(all.shape(), ws);
            assert_eq!(all.to_vec::<bool>().unwrap(), wa, "all {axes:?}");
            assert_eq!(any.to_vec::<bool>().unwrap(), wn, "any {axes:?}");
        }
    }
    // On numbers: nonzero is true.
    let f = arr_f32(&[0.0, 1.0, 0.0, 0.0, 2.0, 3.0], &[2, 3]);
    assert_eq!(f.reduce(ReduceOp::Any, &[1], false).unwrap().to_vec::<bool>().unwrap(), vec![true, true]);
    assert_eq!(f.reduce(ReduceOp::All, &[1], false).unwrap().to_vec::<bool>().unwrap(), vec![false, false]);
    assert_eq!(f.reduce(ReduceOp::All, &[0], false).unwrap().to_vec::<bool>().unwrap(), vec![false, true, false]);
}

#[test]
fn reduce_over_a_bad_axis_is_an_error() {
    init();
    let a = arr_f32(&[1.0; 6], &[2, 3]);
    assert!(matches!(a.sum(&[2], false), Err(Error::Mlx(_))));
    assert!(matches!(a.argmax(5, false), Err(Error::Mlx(_))));
}

#[test]
fn softmax_precise_and_not() {
    init();
    let shape = [3, 5, 7];
    let x = Lcg::new(3).vec(numel(&shape), -4.0, 4.0);
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &shape, dtype);
        for precise in [false, true] {
            for axis in [-1, 1, 0] {
                let out = a.softmax(&[axis], precise).unwrap();
                assert_eq!(out.dtype(), dtype);
                let want = softmax_ref(&xr, &shape, axis);
                let tol =
                    if dtype == Dtype::F32 { Tol { atol: 1e-6, rtol: 1e-5 } } else { Tol { atol: 5e-3, rtol: 2e-2 } };
                check_array(&out, &shape, &want, tol, &format!("softmax {dtype} axis {axis} precise {precise}"));
            }
        }
    }
    // Over two axes at once: each [5, 7] slab sums to one.
    let a = arr_f32(&x, &shape);
    let out = a.softmax(&[1, 2], false).unwrap().sum(&[1, 2], false).unwrap();
    assert_close(&out.to_vec::<f32>().unwrap(), &[1.0; 3], F32_TOL, "softmax over two axes sums to 1");
    // Empty axes: over everything.
    let out = a.softmax(&[], true).unwrap();
    let flat = softmax_lane(&x);
    check_array(&out, &shape, &flat, Tol { atol: 1e-7, rtol: 1e-5 }, "softmax over all axes");
    // Large logits stay finite (max subtraction).
    let big = arr_f32(&[1000.0, 1001.0, 999.0], &[3]).softmax(&[0], false).unwrap();
    assert_close(
        &big.to_vec::<f32>().unwrap(),
        &softmax_lane(&[1000.0, 1001.0, 999.0]),
        F32_TOL,
        "softmax of large logits",
    );
}

#[test]
fn logsumexp_and_log_softmax() {
    init();
    let shape = [4, 6];
    let x = Lcg::new(4).vec(numel(&shape), -10.0, 10.0);
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &shape, dtype);
        let tol = if dtype == Dtype::F32 { Tol { atol: 1e-5, rtol: 1e-5 } } else { Tol { atol: 5e-2, rtol: 1e-2 } };
        for keepdims in [false, true] {
            let out = a.logsumexp(&[1], keepdims).unwrap();
            let (want, ws) = reduce_ref(&xr, &shape, &[1], keepdims, logsumexp_lane);
            check_array(&out, &ws, &want, tol, &format!("logsumexp {dtype} keepdims {keepdims}"));
            let out = a.logsumexp(&[0], keepdims).unwrap();
            let (want, ws) = reduce_ref(&xr, &shape, &[0], keepdims, logsumexp_lane);
            check_array(&out, &ws, &want, tol, &format!("logsumexp axis 0 {dtype}"));
        }
        let all = a.logsumexp(&[], false).unwrap();
        check_array(&all, &[], &[logsumexp_lane(&xr)], tol, "logsumexp over all");

        let ls = a.log_softmax(-1).unwrap();
        let mut want = xr.clone();
        map_lanes(&mut want, &shape, -1, |l| {
            let z = logsumexp_lane(l);
            l.iter_mut().for_each(|v| *v -= z);
        });
        check_array(&ls, &shape, &want, tol, &format!("log_softmax {dtype}"));
    }
    // No overflow for huge values.
    let h = arr_f32(&[1000.0, 1000.0], &[2]).logsumexp(&[0], false).unwrap();
    assert_close(&h.to_vec::<f32>().unwrap(), &[1000.0 + 2f32.ln()], F32_TOL, "logsumexp of large values");
}

#[test]
fn argmax_argmin() {
    init();
    let x = rand_vec(5, numel(&SHAPE));
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &SHAPE, dtype);
        for axis in [0, 1, 2, -1] {
            for keepdims in [false, true] {
                let am = a.argmax(axis, keepdims).unwrap();
                assert_eq!(am.dtype(), Dtype::U32, "argmax returns uint32");
                let an = a.argmin(axis, keepdims).unwrap();
                assert_eq!(an.dtype(), Dtype::U32);
                let pick = |better: fn(f32, f32) -> bool| {
                    move |l: &[f32]| {
                        let mut best = 0usize;
                        for (i, &v) in l.iter().enumerate() {
                            if better(v, l[best]) {
                                best = i;
                            }
                        }
                        best as u32
                    }
                };
                let (wmax, ws) = reduce_ref(&xr, &SHAPE, &[axis], keepdims, pick(|a, b| a > b));
                let (wmin, _) = reduce_ref(&xr, &SHAPE, &[axis], keepdims, pick(|a, b| a < b));
                assert_eq!(am.shape(), ws);
                assert_eq!(am.to_vec::<u32>().unwrap(), wmax, "argmax {dtype} axis {axis}");
                assert_eq!(an.to_vec::<u32>().unwrap(), wmin, "argmin {dtype} axis {axis}");
            }
        }
    }
    // Ties pick the first occurrence.
    let t = arr_f32(&[1.0, 3.0, 3.0, 0.0, 0.0], &[5]);
    assert_eq!(t.argmax(0, false).unwrap().item::<u32>().unwrap(), 1);
    assert_eq!(t.argmin(0, false).unwrap().item::<u32>().unwrap(), 3);
}

#[test]
fn sort_and_argsort() {
    init();
    let shape = [3, 9];
    let x = rand_vec(6, numel(&shape));
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &shape, dtype);
        for axis in [-1, 0] {
            let s = a.sort(axis).unwrap();
            assert_eq!(s.dtype(), dtype);
            let mut want = xr.clone();
            map_lanes(&mut want, &shape, axis, |l| l.sort_by(|p, q| p.partial_cmp(q).unwrap()));
            check_array(&s, &shape, &want, Tol { atol: 0.0, rtol: 0.0 }, &format!("sort {dtype} axis {axis}"));

            let idx = a.argsort(axis).unwrap();
            assert_eq!(idx.dtype(), Dtype::U32);
            assert_eq!(idx.shape(), shape.to_vec());
            // Gathering with the indices gives the sorted values.
            let g = a.take_along_axis(&idx, axis).unwrap();
            check_array(&g, &shape, &want, Tol { atol: 0.0, rtol: 0.0 }, &format!("argsort {dtype} axis {axis}"));
        }
    }
    // Integers, with duplicates.
    let i = arr_i32(&[5, -1, 3, 3, 0], &[5]);
    assert_eq!(i.sort(0).unwrap().to_vec::<i32>().unwrap(), vec![-1, 0, 3, 3, 5]);
    let order = i.argsort(0).unwrap().to_vec::<u32>().unwrap();
    assert_eq!(order[0], 1);
    assert_eq!(order[1], 4);
    assert_eq!(order[4], 0);
}

#[test]
fn argpartition_partitions() {
    init();
    let shape = [4, 11];
    let x = rand_vec(7, numel(&shape));
    let a = arr_f32(&x, &shape);
    for kth in [0, 3, 5, 10] {
        let idx = a.argpartition(kth, -1).unwrap();
        assert_eq!(idx.dtype(), Dtype::U32);
        assert_eq!(idx.shape(), shape.to_vec());
        let iv = idx.to_vec::<u32>().unwrap();
        for (r, (row, lane_idx)) in lanes(&x, &shape, -1).iter().zip(iv.chunks(11)).enumerate() {
            // A permutation of the lane.
            let mut seen = lane_idx.to_vec();
            seen.sort();
            assert_eq!(seen, (0..11).collect::<Vec<u32>>(), "row {r}: not a permutation");
            let vals: Vec<f32> = lane_idx.iter().map(|&i| row[i as usize]).collect();
            let mut sorted = row.clone();
            sorted.sort_by(|p, q| p.partial_cmp(q).unwrap());
            let k = kth as usize;
            assert_eq!(vals[k], sorted[k], "row {r}: element {kth} is not in sorted position");
            assert!(vals[..k].iter().all(|&v| v <= vals[k]), "row {r}: a larger element before kth");
            assert!(vals[k + 1..].iter().all(|&v| v >= vals[k]), "row {r}: a smaller element after kth");
        }
    }
    // Along axis 0 too.
    let idx = a.argpartition(1, 0).unwrap();
    let g = a.take_along_axis(&idx, 0).unwrap().to_vec::<f32>().unwrap();
    for c in 0..11 {
        let col: Vec<f32> = (0..4).map(|r| x[r * 11 + c]).collect();
        let mut sorted = col.clone();
        sorted.sort_by(|p, q| p.partial_cmp(q).unwrap());
        assert_eq!(g[11 + c], sorted[1], "column {c}");
        assert!(g[c] <= g[11 + c]);
    }
}

#[test]
fn topk_as_sets() {
    init();
    let shape = [3, 10];
    let x = rand_vec(8, numel(&shape));
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &shape, dtype);
        for k in [1, 3, 10] {
            let t = a.topk(k, -1).unwrap();
            assert_eq!(t.shape(), vec![3, k]);
            assert_eq!(t.dtype(), dtype);
            let got = read_f32(&t);
            for (r, row) in lanes(&xr, &shape, -1).iter().enumerate() {
                let mut want = row.clone();
                want.sort_by(|p, q| q.partial_cmp(p).unwrap());
                want.truncate(k as usize);
                want.sort_by(|p, q| p.partial_cmp(q).unwrap());
                let mut g = got[r * k as usize..(r + 1) * k as usize].to_vec();
                g.sort_by(|p, q| p.partial_cmp(q).unwrap());
                assert_eq!(g, want, "topk {k} {dtype} row {r}");
            }
        }
    }
    // Along axis 0.
    let a = arr_f32(&x, &shape);
    let t = a.topk(2, 0).unwrap();
    assert_eq!(t.shape(), vec![2, 10]);
    let g = t.to_vec::<f32>().unwrap();
    for c in 0..10 {
        let mut col: Vec<f32> = (0..3).map(|r| x[r * 10 + c]).collect();
        col.sort_by(|p, q| q.partial_cmp(p).unwrap());
        let mut pair = [g[c], g[10 + c]];
        pair.sort_by(|p, q| q.partial_cmp(p).unwrap());
        assert_eq!(pair.to_vec(), col[..2].to_vec(), "column {c}");
    }
    assert!(matches!(a.topk(11, -1), Err(Error::Mlx(_))));
}

#[test]
fn cumsum_reverse_inclusive_combinations() {
    init();
    let shape = [3, 5, 4];
    let x = rand_vec(9, numel(&shape));
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &shape, dtype);
        for axis in [0, 1, -1] {
            for reverse in [false, true] {
                for inclusive in [true, false] {
                    let out = a.cumsum(axis, reverse, inclusive).unwrap();
                    assert_eq!(out.dtype(), dtype);
                    let mut want = xr.clone();
                    map_lanes(&mut want, &shape, axis, |l| *l = cumsum_lane(l, reverse, inclusive));
                    let tol = if dtype == Dtype::F32 {
                        Tol { atol: 1e-5, rtol: 1e-5 }
                    } else {
                        Tol { atol: 3e-2, rtol: 2e-2 }
                    };
                    check_array(
                        &out,
                        &shape,
                        &want,
                        tol,
                        &format!("cumsum {dtype} axis {axis} reverse {reverse} inclusive {inclusive}"),
                    );
                }
            }
        }
    }
    let i = arr_i32(&[1, 2, 3, 4], &[4]);
    assert_eq!(i.cumsum(0, false, true).unwrap().to_vec::<i32>().unwrap(), vec![1, 3, 6, 10]);
    assert_eq!(i.cumsum(0, false, false).unwrap().to_vec::<i32>().unwrap(), vec![0, 1, 3, 6]);
    assert_eq!(i.cumsum(0, true, true).unwrap().to_vec::<i32>().unwrap(), vec![10, 9, 7, 4]);
    assert_eq!(i.cumsum(0, true, false).unwrap().to_vec::<i32>().unwrap(), vec![9, 7, 4, 0]);
}
