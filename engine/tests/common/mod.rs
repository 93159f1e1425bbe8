//! Shared helpers of the op test suite: deterministic data, bf16/f16 bit conversions, array
//! construction and read-back, tolerance checks, and naive Rust reference implementations of
//! the ops under test.
//!
//! Every `ops_*.rs` test file includes this module with `mod common;`; not every file uses
//! every helper.
#![allow(dead_code)]

mod reference;

use mlx_engine::api::{Array, Dtype};
#[allow(unused_imports)] // Not every test file uses a reference.
pub use reference::*;

/// Makes sure the engine (and so its ops-table provider) is linked into the test binary.
pub fn init() {
    let _ = mlx_engine::mlx::ffi::ops_table();
}

// --- deterministic data ---------------------------------------------------------------------

/// A tiny 64-bit linear congruential generator (Knuth's MMIX constants); the top bits are used.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        let mut g = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
        g.next_u32();
        g
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() >> 7) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    /// Integer in `[0, n)`.
    pub fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}

/// `n` values uniform in `[-1, 1)` from `seed`.
pub fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    Lcg::new(seed).vec(n, -1.0, 1.0)
}

pub fn numel(shape: &[i32]) -> usize {
    shape.iter().map(|&d| d as usize).product()
}

// --- half-precision bit conversions ---------------------------------------------------------

/// f32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN).
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let rounding = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(rounding) >> 16) as u16
}

pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to the nearest bf16 value.
pub fn round_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

pub fn round_bf16_vec(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round_bf16(x)).collect()
}

/// IEEE half bits -> f32 (exact).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1F) as i32;
    let frac = (h & 0x3FF) as f32;
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// f32 -> IEEE half bits, round to nearest even, for values well inside the half range
/// (normals and subnormals; overflow goes to infinity).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7E00;
    }
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    let a = x.abs() as f64;
    if a == 0.0 {
        return sign;
    }
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    // Units of the last place: 2^-24 for subnormals, 2^(e-10) for normals.
    let e = a.log2().floor() as i32;
    let ulp_exp = if e < -14 { -24 } else { e - 10 };
    let q = (a / 2f64.powi(ulp_exp)).round_ties_even();
    // Reassemble through the exact value so carries into the exponent are handled.
    let v = q * 2f64.powi(ulp_exp);
    if v < 2f64.powi(-14) {
        return sign | q as u16;
    }
    let e2 = v.log2().floor() as i32;
    let frac = (v / 2f64.powi(e2) - 1.0) * 1024.0;
    sign | (((e2 + 15) as u16) << 10) | (frac.round() as u16)
}

// --- arrays in and out ----------------------------------------------------------------------

pub fn arr_f32(data: &[f32], shape: &[i32]) -> Array {
    init();
    Array::from_slice(data, shape).expect("from_slice f32")
}

pub fn arr_i32(data: &[i32], shape: &[i32]) -> Array {
    init();
    Array::from_slice(data, shape).expect("from_slice i32")
}

pub fn arr_u32(data: &[u32], shape: &[i32]) -> Array {
    init();
    Array::from_slice(data, shape).expect("from_slice u32")
}

pub fn arr_bool(data: &[bool], shape: &[i32]) -> Array {
    init();
    Array::from_slice(data, shape).expect("from_slice bool")
}

/// A bf16 array holding `data` rounded to bf16 (built from bit patterns, not through MLX's
/// conversion), and the rounded values as f32 for computing references.
pub fn arr_bf16(data: &[f32], shape: &[i32]) -> (Array, Vec<f32>) {
    init();
    let bytes: Vec<u8> = data.iter().flat_map(|&x| f32_to_bf16_bits(x).to_le_bytes()).collect();
    let a = Array::from_bytes(&bytes, shape, Dtype::BF16).expect("from_bytes bf16");
    (a, round_bf16_vec(data))
}

/// An array of `dtype` (F32 or BF16) from f32 data, and the values it really holds.
pub fn arr_of(data: &[f32], shape: &[i32], dtype: Dtype) -> (Array, Vec<f32>) {
    match dtype {
        Dtype::F32 => (arr_f32(data, shape), data.to_vec()),
        Dtype::BF16 => arr_bf16(data, shape),
        other => panic!("arr_of: unsupported dtype {other}"),
    }
}

/// Reads a float array (f32, f16 or bf16) as f32, decoding half types from their bits so the
/// check does not depend on MLX's own conversion.
pub fn read_f32(a: &Array) -> Vec<f32> {
    match a.dtype() {
        Dtype::F32 => a.to_vec::<f32>().expect("to_vec f32"),
        Dtype::BF16 => {
            let b = a.to_bytes().expect("to_bytes bf16");
            b.chunks_exact(2).map(|c| bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
        }
        Dtype::F16 => {
            let b = a.to_bytes().expect("to_bytes f16");
            b.chunks_exact(2).map(|c| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
        }
        other => {
            a.astype(Dtype::F32).expect("astype f32").to_vec::<f32>().unwrap_or_else(|e| panic!("read {other}: {e}"))
        }
    }
}

/// Tolerances for comparing an op's output of `dtype` against an f32 reference.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

pub const F32_TOL: Tol = Tol { atol: 1e-5, rtol: 1e-5 };
pub const BF16_TOL: Tol = Tol { atol: 1e-2, rtol: 1e-2 };

pub fn tol_for(dtype: Dtype) -> Tol {
    match dtype {
        Dtype::F32 => F32_TOL,
        Dtype::BF16 | Dtype::F16 => BF16_TOL,
        other => panic!("no tolerance for {other}"),
    }
}

/// Asserts `|actual - expected| <= atol + rtol * |expected|` everywhere (NaNs must match),
/// printing the worst element on failure.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: Tol, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    let mut worst: Option<(usize, f32)> = None;
    let mut n_bad = 0usize;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if e.is_nan() || a.is_nan() {
            if !(e.is_nan() && a.is_nan()) {
                n_bad += 1;
                if worst.is_none() {
                    worst = Some((i, f32::INFINITY));
                }
            }
            continue;
        }
        if a == e {
            continue;
        }
        let err = (a - e).abs();
        let allowed = tol.atol + tol.rtol * e.abs();
        let ratio = err / allowed;
        if ratio.is_nan() || ratio > 1.0 {
            n_bad += 1;
        }
        let better = match worst {
            None => true,
            Some((_, r)) => ratio > r,
        };
        if better {
            worst = Some((i, ratio));
        }
    }
    if n_bad > 0 {
        let (i, r) = worst.expect("a worst element when something failed");
        panic!(
            "{what}: {n_bad} of {} values out of tolerance (atol {}, rtol {}); worst at index {i}: \
             got {}, expected {} ({r:.2}x the allowed error)",
            actual.len(),
            tol.atol,
            tol.rtol,
            actual[i],
            expected[i]
        );
    }
}

/// Reads `a` (any float dtype) and compares it with `expected`.
pub fn check_array(a: &Array, shape: &[i32], expected: &[f32], tol: Tol, what: &str) {
    assert_eq!(a.shape(), shape, "{what}: shape");
    assert_close(&read_f32(a), expected, tol, what);
}

pub fn assert_err_contains<T: std::fmt::Debug>(r: mlx_engine::api::Result<T>, needle: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected an error containing {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{what}: error {msg:?} does not contain {needle:?}");
        }
    }
}
