//! Construction, read-back, conversion and evaluation of arrays.

mod common;

use common::*;
use mlx_engine::api::{async_eval, eval, Array, Dtype, Error};

#[test]
fn from_slice_round_trips_every_element_type() {
    init();
    let f = [1.5f32, -2.25, 0.0, f32::MAX, f32::MIN_POSITIVE, -0.0];
    let a = Array::from_slice(&f, &[2, 3]).unwrap();
    assert_eq!(a.dtype(), Dtype::F32);
    let back = a.to_vec::<f32>().unwrap();
    assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), f.iter().map(|x| x.to_bits()).collect::<Vec<_>>());

    let i = [i32::MIN, -1, 0, 1, i32::MAX, 42];
    let a = Array::from_slice(&i, &[3, 2]).unwrap();
    assert_eq!(a.dtype(), Dtype::I32);
    assert_eq!(a.to_vec::<i32>().unwrap(), i);

    let u = [0u32, 1, u32::MAX, 0x8000_0000];
    let a = Array::from_slice(&u, &[4]).unwrap();
    assert_eq!(a.dtype(), Dtype::U32);
    assert_eq!(a.to_vec::<u32>().unwrap(), u);

    let b = [true, false, false, true, true];
    let a = Array::from_slice(&b, &[5]).unwrap();
    assert_eq!(a.dtype(), Dtype::Bool);
    assert_eq!(a.to_vec::<bool>().unwrap(), b);

    let u8s = [0u8, 1, 127, 128, 255];
    let a = Array::from_slice(&u8s, &[5]).unwrap();
    assert_eq!(a.dtype(), Dtype::U8);
    assert_eq!(a.to_vec::<u8>().unwrap(), u8s);

    let i64s = [i64::MIN, -3, 0, i64::MAX];
    let a = Array::from_slice(&i64s, &[2, 2]).unwrap();
    assert_eq!(a.dtype(), Dtype::I64);
    assert_eq!(a.to_vec::<i64>().unwrap(), i64s);

    let f64s = [1.0e300f64, -1.0e-300, 0.1];
    let a = Array::from_slice(&f64s, &[3]).unwrap();
    assert_eq!(a.dtype(), Dtype::F64);
    assert_eq!(a.to_vec::<f64>().unwrap(), f64s);
}

#[test]
fn bf16_bit_patterns_round_trip_and_convert_exactly() {
    init();
    // 1, -2, +inf, -inf, smallest subnormal, largest finite, -0, 0.1 (rounded), quiet NaN.
    let bits: [u16; 9] = [0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x7F7F, 0x8000, 0x3DCD, 0x7FC0];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let a = Array::from_bytes(&bytes, &[3, 3], Dtype::BF16).unwrap();
    assert_eq!(a.dtype(), Dtype::BF16);
    assert_eq!(a.shape(), vec![3, 3]);
    assert_eq!(a.nbytes(), 18);
    assert_eq!(a.to_bytes().unwrap(), bytes, "bf16 bytes must round-trip unchanged");

    // Widening to f32 is exact: the bf16 bits become the high half of the f32.
    let f = a.astype(Dtype::F32).unwrap().to_vec::<f32>().unwrap();
    for (k, (&b, &x)) in bits.iter().zip(&f).enumerate() {
        let want = bf16_bits_to_f32(b);
        if want.is_nan() {
            assert!(x.is_nan(), "element {k}: NaN expected, got {x}");
        } else {
            assert_eq!(x.to_bits(), want.to_bits(), "element {k}: bf16 {b:#06x} -> {x}, expected {want}");
        }
    }
    assert!(a.isnan().unwrap().to_vec::<bool>().unwrap()[8]);
}

#[test]
fn f32_to_bf16_conversion_rounds_to_nearest_even() {
    init();
    let eps = 2f32.powi(-8); // half a bf16 ulp at 1.0
    let vals = [
        1.0 + eps,           // tie -> even (1.0)
        1.0 + 3.0 * eps,     // tie -> even (1 + 2^-6)
        1.0 + eps * 1.01,    // above the tie -> up
        -(1.0 + eps * 0.99), // below the tie -> down (in magnitude)
        3.3333,
        -1234.567,
        1e-30,
    ];
    let a = arr_f32(&vals, &[vals.len() as i32]).astype(Dtype::BF16).unwrap();
    assert_eq!(a.dtype(), Dtype::BF16);
    let got: Vec<u16> = a.to_bytes().unwrap().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let want: Vec<u16> = vals.iter().map(|&v| f32_to_bf16_bits(v)).collect();
    assert_eq!(got, want, "f32 -> bf16 rounding");
    assert_eq!(got[0], 0x3F80);
    assert_eq!(got[1], 0x3F82);
    assert_eq!(got[2], 0x3F81);
}

#[test]
fn f16_bit_patterns_round_trip_and_convert() {
    init();
    // 1, -2, +inf, smallest subnormal, 65504, 0.5, -0.
    let bits: [u16; 7] = [0x3C00, 0xC000, 0x7C00, 0x0001, 0x7BFF, 0x3800, 0x8000];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let a = Array::from_bytes(&bytes, &[7], Dtype::F16).unwrap();
    assert_eq!(a.dtype(), Dtype::F16);
    assert_eq!(a.to_bytes().unwrap(), bytes);
    let f = a.astype(Dtype::F32).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = bits.iter().map(|&b| f16_bits_to_f32(b)).collect();
    assert_eq!(f, want);
    assert_eq!(f[3], 2f32.powi(-24));
    assert_eq!(f[4], 65504.0);

    // f32 -> f16 rounding matches round-to-nearest-even.
    let vals = [0.1f32, -3.3333, 1000.3, 6.1e-5, 1.0 + 2f32.powi(-11)];
    let h = arr_f32(&vals, &[5]).astype(Dtype::F16).unwrap();
    let got: Vec<u16> = h.to_bytes().unwrap().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let want: Vec<u16> = vals.iter().map(|&v| f32_to_f16_bits(v)).collect();
    assert_eq!(got, want);
    assert_eq!(got[4], 0x3C00, "a tie rounds to even");
}

#[test]
fn construction_rejects_wrong_lengths() {
    init();
    let r = Array::from_slice(&[1.0f32, 2.0, 3.0], &[2, 2]);
    assert!(matches!(r, Err(Error::Array(_))), "{r:?}");
    let r = Array::from_bytes(&[0u8; 5], &[2], Dtype::F32);
    assert!(matches!(r, Err(Error::Array(_))), "{r:?}");
    let r = Array::from_slice(&[1.0f32], &[-1]);
    assert!(r.is_err());
}

#[test]
fn full_zeros_ones_scalar() {
    init();
    let a = Array::full(&[2, 3], 7.5, Dtype::F32).unwrap();
    assert_eq!(a.shape(), vec![2, 3]);
    assert_eq!(a.to_vec::<f32>().unwrap(), vec![7.5; 6]);

    let a = Array::full(&[4], -3.0, Dtype::I32).unwrap();
    assert_eq!(a.to_vec::<i32>().unwrap(), vec![-3; 4]);

    let a = Array::full(&[3], 0.1, Dtype::BF16).unwrap();
    assert_eq!(a.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&a), vec![round_bf16(0.1); 3]);

    let z = Array::zeros(&[2, 2], Dtype::F32).unwrap();
    assert_eq!(z.to_vec::<f32>().unwrap(), vec![0.0; 4]);
    let o = Array::ones(&[3], Dtype::U32).unwrap();
    assert_eq!(o.to_vec::<u32>().unwrap(), vec![1; 3]);
    let o = Array::ones(&[2], Dtype::Bool).unwrap();
    assert_eq!(o.to_vec::<bool>().unwrap(), vec![true; 2]);

    let s = Array::scalar(2.5, Dtype::F32).unwrap();
    assert_eq!(s.ndim(), 0);
    assert_eq!(s.shape(), Vec::<i32>::new());
    assert_eq!(s.size(), 1);
    assert_eq!(s.item::<f32>().unwrap(), 2.5);

    // Empty arrays.
    let e = Array::zeros(&[0, 3], Dtype::F32).unwrap();
    assert_eq!(e.size(), 0);
    assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
}

#[test]
fn arange_integer_and_float() {
    init();
    let a = Array::arange(0.0, 5.0, 1.0, Dtype::I32).unwrap();
    assert_eq!(a.to_vec::<i32>().unwrap(), vec![0, 1, 2, 3, 4]);
    let a = Array::arange(10.0, 0.0, -3.0, Dtype::I32).unwrap();
    assert_eq!(a.to_vec::<i32>().unwrap(), vec![10, 7, 4, 1]);
    let a = Array::arange(0.0, 1.0, 0.25, Dtype::F32).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), vec![0.0, 0.25, 0.5, 0.75]);
    let a = Array::arange(-1.0, 1.0, 0.5, Dtype::BF16).unwrap();
    assert_eq!(a.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&a), vec![-1.0, -0.5, 0.0, 0.5]);
}

#[test]
fn astype_between_types() {
    init();
    let a = arr_f32(&[-2.7, -0.5, 0.0, 1.9, 300.0], &[5]);
    // float -> int truncates toward zero (C++ conversion).
    assert_eq!(a.astype(Dtype::I32).unwrap().to_vec::<i32>().unwrap(), vec![-2, 0, 0, 1, 300]);
    // float -> bool is "nonzero".
    assert_eq!(a.astype(Dtype::Bool).unwrap().to_vec::<bool>().unwrap(), vec![true, true, false, true, true]);
    let i = arr_i32(&[-5, 0, 7], &[3]);
    assert_eq!(i.astype(Dtype::F32).unwrap().to_vec::<f32>().unwrap(), vec![-5.0, 0.0, 7.0]);
    assert_eq!(i.astype(Dtype::I64).unwrap().to_vec::<i64>().unwrap(), vec![-5, 0, 7]);
    let b = arr_bool(&[true, false], &[2]);
    assert_eq!(b.astype(Dtype::F32).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 0.0]);
    // bf16 -> f32 -> bf16 keeps the value.
    let (x, xv) = arr_bf16(&[0.3, -7.125, 1e4], &[3]);
    let y = x.astype(Dtype::F32).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), xv);
    assert_eq!(y.astype(Dtype::BF16).unwrap().to_bytes().unwrap(), x.to_bytes().unwrap());
    // astype is lazy and keeps the shape.
    let m = arr_f32(&[1.0; 6], &[2, 3]).astype(Dtype::F16).unwrap();
    assert_eq!((m.shape(), m.dtype(), m.nbytes()), (vec![2, 3], Dtype::F16, 12));
}

#[test]
fn item_converts_and_checks_size() {
    init();
    let i = arr_i32(&[41], &[1, 1]);
    assert_eq!(i.item::<i32>().unwrap(), 41);
    assert_eq!(i.item::<f32>().unwrap(), 41.0);
    let f = Array::scalar(3.75, Dtype::F32).unwrap();
    assert_eq!(f.item::<i32>().unwrap(), 3);
    let (b, _) = arr_bf16(&[1.5], &[]);
    assert_eq!(b.item::<f32>().unwrap(), 1.5);
    let r = arr_f32(&[1.0, 2.0], &[2]).item::<f32>();
    assert!(matches!(r, Err(Error::Array(_))), "{r:?}");
}

#[test]
fn accessors() {
    init();
    let a = Array::zeros(&[2, 3, 4], Dtype::BF16).unwrap();
    assert_eq!(a.ndim(), 3);
    assert_eq!(a.shape(), vec![2, 3, 4]);
    assert_eq!(a.size(), 24);
    assert_eq!(a.nbytes(), 48);
    assert_eq!(a.dtype(), Dtype::BF16);
    assert_eq!(a.dim(0).unwrap(), 2);
    assert_eq!(a.dim(-1).unwrap(), 4);
    assert_eq!(a.dim(-3).unwrap(), 2);
    assert!(a.dim(3).is_err());
    assert!(a.dim(-4).is_err());
    assert_eq!(format!("{a:?}"), "Array(shape=[2, 3, 4], dtype=bfloat16)");
    // Clones are handles to the same values.
    let c = arr_f32(&[1.0, 2.0], &[2]);
    let d = c.clone();
    drop(c);
    assert_eq!(d.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
}

#[test]
fn to_vec_with_wrong_type_is_an_error() {
    init();
    let a = arr_f32(&[1.0, 2.0], &[2]);
    match a.to_vec::<i32>() {
        Err(Error::Array(msg)) => {
            assert!(msg.contains("float32") && msg.contains("int32"), "{msg}");
        }
        other => panic!("expected an Array error, got {other:?}"),
    }
    let (b, _) = arr_bf16(&[1.0], &[1]);
    assert!(b.to_vec::<f32>().is_err(), "bf16 cannot be read as f32 without astype");
    assert_eq!(b.to_vec_f32().unwrap(), vec![1.0]);
}

#[test]
fn eval_and_async_eval() {
    init();
    let a = arr_f32(&[1.0, 2.0, 3.0], &[3]);
    let b = a.multiply(&a).unwrap();
    let c = b.add(&a).unwrap();
    eval(&[&b, &c]).unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![1.0, 4.0, 9.0]);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![2.0, 6.0, 12.0]);
    c.eval().unwrap();

    let d = c.exp().unwrap().log().unwrap();
    async_eval(&[&d]).unwrap();
    assert_close(&d.to_vec::<f32>().unwrap(), &[2.0, 6.0, 12.0], F32_TOL, "async_eval result");
    eval(&[]).unwrap();
}

#[test]
#[should_panic(expected = "worst at index 2")]
fn assert_close_reports_the_worst_element() {
    assert_close(&[1.0, 2.0, 3.5, 4.1], &[1.0, 2.0, 3.0, 4.0], Tol { atol: 1e-3, rtol: 1e-3 }, "self-check");
}

#[test]
fn reference_helpers_self_check() {
    // The bit-level converters agree with known encodings.
    assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
    assert_eq!(f32_to_bf16_bits(-2.0), 0xC000);
    assert_eq!(f32_to_f16_bits(1.0), 0x3C00);
    assert_eq!(f32_to_f16_bits(65504.0), 0x7BFF);
    assert_eq!(f32_to_f16_bits(2f32.powi(-24)), 0x0001);
    assert!((erf_ref(1.0) - 0.842_700_792_949_714_9).abs() < 1e-12);
    assert!((erf_ref(-0.5) + 0.520_499_877_813_046_5).abs() < 1e-12);
    assert!((erfinv_ref(0.842_700_792_949_714_9) - 1.0).abs() < 1e-10);
    assert_eq!(matmul_ref(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], 2, 2, 2), vec![19.0, 22.0, 43.0, 50.0]);
    assert_eq!(cumsum_lane(&[1.0, 2.0, 3.0], true, false), vec![5.0, 3.0, 0.0]);
    // 4-bit codes 1..=8 packed lowest first in one word.
    assert_eq!(unpack_codes(&[0x8765_4321], 1, 8, 4), vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn every_dtype_code_round_trips_through_mlx() {
    init();
    // A wrong code in the shim's mapping would show up as a different dtype or byte size.
    for dt in Dtype::ALL {
        let z = Array::zeros(&[3], dt).unwrap();
        assert_eq!(z.dtype(), dt, "zeros of {dt}");
        let bytes = z.to_bytes().unwrap();
        assert_eq!(bytes.len(), 3 * dt.size_in_bytes(), "{dt}: MLX's item size");
        assert!(bytes.iter().all(|&b| b == 0), "{dt}: zeros are zero bytes");
        if dt != Dtype::Complex64 {
            let f = Array::full(&[2], 3.0, dt).unwrap();
            let want = if dt == Dtype::Bool { 1.0 } else { 3.0 };
            assert_eq!(f.astype(Dtype::F32).unwrap().to_vec::<f32>().unwrap(), vec![want; 2], "full of {dt}");
            assert_eq!(f.astype(dt).unwrap().dtype(), dt);
        }
    }
    // Types without a Rust Element impl go through raw bytes.
    let i16s: [i16; 3] = [-300, 0, 32767];
    let bytes: Vec<u8> = i16s.iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = Array::from_bytes(&bytes, &[3], Dtype::I16).unwrap();
    assert_eq!(a.astype(Dtype::I32).unwrap().to_vec::<i32>().unwrap(), vec![-300, 0, 32767]);
    let a = Array::from_bytes(&[0xFF, 0x01, 0x80], &[3], Dtype::I8).unwrap();
    assert_eq!(a.astype(Dtype::I32).unwrap().to_vec::<i32>().unwrap(), vec![-1, 1, -128]);
    let a = Array::from_bytes(&[0xFF, 0xFF, 0x02, 0x00], &[2], Dtype::U16).unwrap();
    assert_eq!(a.astype(Dtype::I32).unwrap().to_vec::<i32>().unwrap(), vec![65535, 2]);
    // Saturating scalar conversion for integer fills.
    assert_eq!(Array::full(&[1], 1e10, Dtype::I32).unwrap().to_vec::<i32>().unwrap(), vec![i32::MAX]);
    assert_eq!(Array::full(&[1], -5.0, Dtype::U32).unwrap().to_vec::<u32>().unwrap(), vec![0]);
}

#[test]
fn reading_strided_views() {
    init();
    let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let a = arr_f32(&v, &[3, 4]);
    // Transposed and sliced views are read in logical order.
    let t = a.t().unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), transpose2(&v, 3, 4));
    assert_eq!(t.contiguous().unwrap().to_vec::<f32>().unwrap(), transpose2(&v, 3, 4));
    let s = a.slice(&[0, 1], &[3, 4], &[2, 2]).unwrap();
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 9.0, 11.0]);
    let b = arr_f32(&[5.0], &[1]).broadcast_to(&[2, 2]).unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![5.0; 4]);
    assert_eq!(b.to_bytes().unwrap().len(), 16);
}

/// `to_f64_host` converts every real dtype on the host (used for GGUF metadata, where the CUDA
/// backend has no float64 to `astype` into).
#[test]
fn to_f64_host_reads_every_real_dtype() {
    let vals = [0.0f32, 1.5, -2.0, 1024.0];
    for dt in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        let a = Array::from_slice(&vals, &[4]).unwrap().astype(dt).unwrap();
        assert_eq!(a.to_f64_host().unwrap(), vec![0.0, 1.5, -2.0, 1024.0], "{dt}");
    }
    let ints = Array::from_slice(&[-3i32, 0, 7, 1 << 30], &[4]).unwrap();
    for dt in [Dtype::I32, Dtype::I64, Dtype::I16] {
        let want: Vec<f64> =
            if dt == Dtype::I16 { vec![-3.0, 0.0, 7.0, 0.0] } else { vec![-3.0, 0.0, 7.0, (1 << 30) as f64] };
        assert_eq!(ints.astype(dt).unwrap().to_f64_host().unwrap(), want, "{dt}");
    }
    let u = Array::from_slice(&[5u32, 4_000_000_000], &[2]).unwrap();
    assert_eq!(u.to_f64_host().unwrap(), vec![5.0, 4e9]);
    let b = Array::from_slice(&[true, false], &[2]).unwrap();
    assert_eq!(b.to_f64_host().unwrap(), vec![1.0, 0.0]);
    let half_small =
        Array::from_slice(&[6.1035156e-5f32 /* smallest normal f16 */, 5.9604645e-8 /* smallest subnormal */], &[2])
            .unwrap()
            .astype(Dtype::F16)
            .unwrap();
    assert_eq!(half_small.to_f64_host().unwrap(), vec![6.103515625e-5, 5.960464477539063e-8]);
}
