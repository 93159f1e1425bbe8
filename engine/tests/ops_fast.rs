//! Fused kernels of `mlx::core::fast`: rms_norm, layer_norm, rope and scaled dot-product
//! attention, in f32 and bf16, against naive references.

mod common;

use common::*;
use mlx_engine::api::fast::{layer_norm, rms_norm, rope, scaled_dot_product_attention, AttnMask, RopeFreqs};
use mlx_engine::api::{Dtype, Error};

const DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::BF16];

fn tol(dtype: Dtype) -> Tol {
    match dtype {
        Dtype::F32 => Tol { atol: 2e-5, rtol: 2e-5 },
        _ => Tol { atol: 2e-2, rtol: 2e-2 },
    }
}

#[test]
fn rms_norm_with_and_without_weight() {
    init();
    let shape = [2, 3, 16];
    let d = 16;
    let x = Lcg::new(1).vec(numel(&shape), -2.0, 2.0);
    let w = Lcg::new(2).vec(d, 0.5, 1.5);
    for dtype in DTYPES {
        let (xa, xr) = arr_of(&x, &shape, dtype);
        let (wa, wr) = arr_of(&w, &[d as i32], dtype);
        for eps in [1e-5f32, 0.5] {
            let out = rms_norm(&xa, Some(&wa), eps).unwrap();
            assert_eq!(out.dtype(), dtype);
            check_array(
                &out,
                &shape,
                &rms_norm_ref(&xr, d, Some(&wr), eps),
                tol(dtype),
                &format!("rms_norm {dtype} eps {eps}"),
            );
            let out = rms_norm(&xa, None, eps).unwrap();
            check_array(
                &out,
                &shape,
                &rms_norm_ref(&xr, d, None, eps),
                tol(dtype),
                &format!("rms_norm no weight {dtype} eps {eps}"),
            );
        }
    }
    // A weight of the wrong size is MLX's error.
    let bad = arr_f32(&[1.0; 8], &[8]);
    assert!(matches!(rms_norm(&arr_f32(&x, &shape), Some(&bad), 1e-5), Err(Error::Mlx(_))));
}

#[test]
fn layer_norm_with_optional_affine() {
    init();
    let shape = [3, 4, 12];
    let d = 12;
    let x = Lcg::new(3).vec(numel(&shape), -3.0, 3.0);
    let w = Lcg::new(4).vec(d, 0.5, 1.5);
    let b = Lcg::new(5).vec(d, -0.5, 0.5);
    for dtype in DTYPES {
        let (xa, xr) = arr_of(&x, &shape, dtype);
        let (wa, wr) = arr_of(&w, &[d as i32], dtype);
        let (ba, br) = arr_of(&b, &[d as i32], dtype);
        for (use_w, use_b) in [(true, true), (true, false), (false, true), (false, false)] {
            let out = layer_norm(&xa, use_w.then_some(&wa), use_b.then_some(&ba), 1e-5).unwrap();
            assert_eq!(out.dtype(), dtype);
            let want = layer_norm_ref(&xr, d, use_w.then_some(&wr[..]), use_b.then_some(&br[..]), 1e-5);
            check_array(&out, &shape, &want, tol(dtype), &format!("layer_norm {dtype} weight {use_w} bias {use_b}"));
        }
    }
}

#[test]
fn rope_with_base_all_variants() {
    init();
    let shape = [1, 2, 5, 16];
    let x = Lcg::new(6).vec(numel(&shape), -1.0, 1.0);
    for dtype in DTYPES {
        let (xa, xr) = arr_of(&x, &shape, dtype);
        for traditional in [false, true] {
            for dims in [16usize, 8] {
                for offset in [0i32, 7] {
                    for (base, scale) in [(10000.0f32, 1.0f32), (500.0, 0.5)] {
                        let out = rope(&xa, dims as i32, traditional, RopeFreqs::Base(base), scale, offset).unwrap();
                        assert_eq!(out.dtype(), dtype);
                        let want = rope_ref(
                            &xr,
                            &shape,
                            dims,
                            traditional,
                            &rope_inv_freq(base as f64, dims),
                            scale as f64,
                            offset as i64,
                        );
                        check_array(
                            &out,
                            &shape,
                            &want,
                            tol(dtype),
                            &format!("rope {dtype} traditional {traditional} dims {dims} offset {offset} base {base} scale {scale}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rope_with_explicit_freqs() {
    // MLX's `freqs` are the periods of the rotations (like `base^(2i/dims)`, which positions are
    // divided by), not inverse frequencies: `base` and `freqs = base^(2i/dims)` agree.
    init();
    let shape = [2, 6, 8];
    let dims = 8usize;
    let x = Lcg::new(7).vec(numel(&shape), -1.0, 1.0);
    // Llama-3-style: a few periods stretched.
    let mut periods: Vec<f32> = (0..dims / 2).map(|i| 10000f32.powf(2.0 * i as f32 / dims as f32)).collect();
    periods[3] *= 8.0;
    periods[2] *= 2.5;
    for dtype in DTYPES {
        let (xa, xr) = arr_of(&x, &shape, dtype);
        let fa = arr_f32(&periods, &[(dims / 2) as i32]);
        let inv: Vec<f64> = periods.iter().map(|&p| 1.0 / p as f64).collect();
        for traditional in [false, true] {
            for offset in [0, 5] {
                let out = rope(&xa, dims as i32, traditional, RopeFreqs::Freqs(&fa), 1.0, offset).unwrap();
                assert_eq!(out.dtype(), dtype);
                let want = rope_ref(&xr, &shape, dims, traditional, &inv, 1.0, offset as i64);
                check_array(
                    &out,
                    &shape,
                    &want,
                    tol(dtype),
                    &format!("rope freqs {dtype} traditional {traditional} offset {offset}"),
                );
            }
        }
    }
    // Plain periods reproduce the base form.
    let xa = arr_f32(&x, &shape);
    let plain: Vec<f32> = (0..dims / 2).map(|i| 10000f32.powf(2.0 * i as f32 / dims as f32)).collect();
    let a = rope(&xa, dims as i32, false, RopeFreqs::Freqs(&arr_f32(&plain, &[4])), 1.0, 3).unwrap();
    let b = rope(&xa, dims as i32, false, RopeFreqs::Base(10000.0), 1.0, 3).unwrap();
    assert_close(
        &a.to_vec::<f32>().unwrap(),
        &b.to_vec::<f32>().unwrap(),
        Tol { atol: 1e-5, rtol: 1e-5 },
        "freqs vs base",
    );
    // Freqs of the wrong length are MLX's error.
    let bad = arr_f32(&[1.0; 3], &[3]);
    assert!(matches!(rope(&xa, dims as i32, false, RopeFreqs::Freqs(&bad), 1.0, 0), Err(Error::Mlx(_))));
}

/// Runs every mask kind for one head layout and dtype.
#[allow(clippy::too_many_arguments)]
fn check_sdpa(dtype: Dtype, b: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, seed: u64) {
    let mut g = Lcg::new(seed);
    let q = g.vec(b * hq * lq * d, -1.5, 1.5);
    let k = g.vec(b * hkv * lk * d, -1.5, 1.5);
    let v = g.vec(b * hkv * lk * d, -1.0, 1.0);
    let (qa, qr) = arr_of(&q, &[b as i32, hq as i32, lq as i32, d as i32], dtype);
    let (ka, kr) = arr_of(&k, &[b as i32, hkv as i32, lk as i32, d as i32], dtype);
    let (va, vr) = arr_of(&v, &[b as i32, hkv as i32, lk as i32, d as i32], dtype);
    let scale = 1.0 / (d as f32).sqrt();
    let out_shape = [b as i32, hq as i32, lq as i32, d as i32];
    let what = format!("sdpa {dtype} B{b} Hq{hq} Hkv{hkv} Lq{lq} Lk{lk}");

    let out = scaled_dot_product_attention(&qa, &ka, &va, scale, AttnMask::None).unwrap();
    assert_eq!(out.dtype(), dtype);
    check_array(
        &out,
        &out_shape,
        &sdpa_ref(&qr, &kr, &vr, b, hq, hkv, lq, lk, d, scale, &RefMask::None),
        tol(dtype),
        &format!("{what} no mask"),
    );

    let out = scaled_dot_product_attention(&qa, &ka, &va, scale, AttnMask::Causal).unwrap();
    check_array(
        &out,
        &out_shape,
        &sdpa_ref(&qr, &kr, &vr, b, hq, hkv, lq, lk, d, scale, &RefMask::Causal),
        tol(dtype),
        &format!("{what} causal"),
    );

    // A boolean mask with at least one visible key per query.
    let bm: Vec<bool> = (0..lq * lk).map(|i| i % lk == 0 || g.below(3) != 0).collect();
    let out =
        scaled_dot_product_attention(&qa, &ka, &va, scale, AttnMask::Array(&arr_bool(&bm, &[lq as i32, lk as i32])))
            .unwrap();
    check_array(
        &out,
        &out_shape,
        &sdpa_ref(&qr, &kr, &vr, b, hq, hkv, lq, lk, d, scale, &RefMask::Bool(&bm)),
        tol(dtype),
        &format!("{what} bool mask"),
    );

    // An additive mask of the queries' dtype.
    let am = g.vec(lq * lk, -3.0, 1.0);
    let (ama, amr) = arr_of(&am, &[lq as i32, lk as i32], dtype);
    let out = scaled_dot_product_attention(&qa, &ka, &va, scale, AttnMask::Array(&ama)).unwrap();
    check_array(
        &out,
        &out_shape,
        &sdpa_ref(&qr, &kr, &vr, b, hq, hkv, lq, lk, d, scale, &RefMask::Additive(&amr)),
        tol(dtype),
        &format!("{what} additive mask"),
    );
}

#[test]
fn sdpa_multi_head() {
    init();
    for dtype in DTYPES {
        // Prefill (Lq == Lk), a chunk after a cache (Lq < Lk) and one decode step.
        check_sdpa(dtype, 2, 2, 2, 5, 5, 8, 10);
        check_sdpa(dtype, 1, 2, 2, 3, 7, 8, 11);
        check_sdpa(dtype, 2, 2, 2, 1, 6, 16, 12);
    }
}

#[test]
fn sdpa_grouped_query_heads() {
    init();
    for dtype in DTYPES {
        check_sdpa(dtype, 1, 4, 2, 4, 6, 8, 20);
        check_sdpa(dtype, 2, 6, 1, 3, 3, 8, 21);
        check_sdpa(dtype, 1, 8, 2, 1, 9, 16, 22);
    }
}

#[test]
fn sdpa_causal_is_aligned_to_the_end_of_the_keys() {
    // With Lq = 1 the single query is the newest position and sees every key, so causal equals
    // no mask; with Lq = Lk the first query sees only the first key.
    init();
    let (b, h, lk, d) = (1usize, 1usize, 4usize, 4usize);
    let k = rand_vec(30, b * h * lk * d);
    let v = rand_vec(31, b * h * lk * d);
    let ka = arr_f32(&k, &[1, 1, lk as i32, d as i32]);
    let va = arr_f32(&v, &[1, 1, lk as i32, d as i32]);
    let q1 = arr_f32(&rand_vec(32, d), &[1, 1, 1, d as i32]);
    let c = scaled_dot_product_attention(&q1, &ka, &va, 0.5, AttnMask::Causal).unwrap();
    let n = scaled_dot_product_attention(&q1, &ka, &va, 0.5, AttnMask::None).unwrap();
    assert_close(&c.to_vec::<f32>().unwrap(), &n.to_vec::<f32>().unwrap(), F32_TOL, "decode step: causal == none");
    let q4 = arr_f32(&rand_vec(33, lk * d), &[1, 1, lk as i32, d as i32]);
    let c = scaled_dot_product_attention(&q4, &ka, &va, 0.5, AttnMask::Causal).unwrap().to_vec::<f32>().unwrap();
    assert_close(&c[..d], &v[..d], F32_TOL, "first query sees only the first value");
}

#[test]
fn sdpa_shape_errors() {
    init();
    let q = arr_f32(&[0.0; 2 * 3 * 8], &[1, 2, 3, 8]);
    let k = arr_f32(&[0.0; 3 * 4 * 8], &[1, 3, 4, 8]);
    // 2 query heads cannot share 3 kv heads.
    assert!(matches!(scaled_dot_product_attention(&q, &k, &k, 1.0, AttnMask::None), Err(Error::Mlx(_))));
    // Head dims differ.
    let k2 = arr_f32(&[0.0; 2 * 4 * 4], &[1, 2, 4, 4]);
    assert!(matches!(scaled_dot_product_attention(&q, &k2, &k2, 1.0, AttnMask::None), Err(Error::Mlx(_))));
}
