//! Every `UnaryOp` and `BinaryOp`, `where_`, broadcasting, the std operator impls and scalar
//! ops, in f32 and bf16 against naive Rust references.

mod common;

use common::*;
use mlx_engine::api::ops_table::{BinaryOp, UnaryOp};
use mlx_engine::api::{where_, Array, Dtype};

/// Data in the op's domain, the reference and the f32 tolerance.
struct UnaryCase {
    op: UnaryOp,
    lo: f32,
    hi: f32,
    f: fn(f64) -> f64,
    tol: Tol,
}

fn unary_cases() -> Vec<UnaryCase> {
    let t = F32_TOL;
    let loose = Tol { atol: 2e-6, rtol: 2e-5 };
    vec![
        UnaryCase { op: UnaryOp::Neg, lo: -3.0, hi: 3.0, f: |x| -x, tol: t },
        UnaryCase { op: UnaryOp::Exp, lo: -5.0, hi: 5.0, f: f64::exp, tol: loose },
        UnaryCase { op: UnaryOp::Log, lo: 0.01, hi: 10.0, f: f64::ln, tol: loose },
        UnaryCase { op: UnaryOp::Sqrt, lo: 0.0, hi: 9.0, f: f64::sqrt, tol: t },
        UnaryCase { op: UnaryOp::Rsqrt, lo: 0.05, hi: 9.0, f: |x| 1.0 / x.sqrt(), tol: loose },
        UnaryCase { op: UnaryOp::Tanh, lo: -4.0, hi: 4.0, f: f64::tanh, tol: loose },
        UnaryCase { op: UnaryOp::Erf, lo: -2.5, hi: 2.5, f: erf_ref, tol: loose },
        UnaryCase { op: UnaryOp::Sigmoid, lo: -8.0, hi: 8.0, f: |x| 1.0 / (1.0 + (-x).exp()), tol: loose },
        UnaryCase { op: UnaryOp::Abs, lo: -3.0, hi: 3.0, f: f64::abs, tol: t },
        UnaryCase { op: UnaryOp::Square, lo: -3.0, hi: 3.0, f: |x| x * x, tol: t },
        UnaryCase { op: UnaryOp::Sin, lo: -6.0, hi: 6.0, f: f64::sin, tol: loose },
        UnaryCase { op: UnaryOp::Cos, lo: -6.0, hi: 6.0, f: f64::cos, tol: loose },
        UnaryCase { op: UnaryOp::Floor, lo: -5.0, hi: 5.0, f: f64::floor, tol: t },
        UnaryCase { op: UnaryOp::Ceil, lo: -5.0, hi: 5.0, f: f64::ceil, tol: t },
        UnaryCase { op: UnaryOp::Contiguous, lo: -3.0, hi: 3.0, f: |x| x, tol: t },
        UnaryCase { op: UnaryOp::Log1p, lo: -0.9, hi: 5.0, f: f64::ln_1p, tol: loose },
        UnaryCase {
            op: UnaryOp::Sign,
            lo: -3.0,
            hi: 3.0,
            f: |x| {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            },
            tol: t,
        },
        UnaryCase { op: UnaryOp::Round, lo: -5.0, hi: 5.0, f: f64::round_ties_even, tol: t },
        UnaryCase { op: UnaryOp::StopGradient, lo: -3.0, hi: 3.0, f: |x| x, tol: t },
        UnaryCase { op: UnaryOp::Reciprocal, lo: 0.1, hi: 4.0, f: |x| 1.0 / x, tol: t },
        UnaryCase { op: UnaryOp::Erfinv, lo: -0.99, hi: 0.99, f: erfinv_ref, tol: Tol { atol: 1e-5, rtol: 1e-4 } },
    ]
}

/// Inputs for a unary case: random values plus exact special points in the domain.
fn unary_inputs(case: &UnaryCase, seed: u64) -> Vec<f32> {
    let mut v = Lcg::new(seed).vec(61, case.lo, case.hi);
    let specials: &[f32] = match case.op {
        UnaryOp::Round => &[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5],
        UnaryOp::Floor | UnaryOp::Ceil => &[-2.0, -1.5, 0.0, 1.0, 1.5],
        UnaryOp::Sign | UnaryOp::Abs | UnaryOp::Neg => &[0.0, -1.0, 1.0],
        UnaryOp::Sqrt => &[0.0, 4.0],
        UnaryOp::Log => &[1.0],
        _ => &[],
    };
    v.extend_from_slice(specials);
    v
}

#[test]
fn unary_ops_f32() {
    init();
    for (k, case) in unary_cases().iter().enumerate() {
        let x = unary_inputs(case, 100 + k as u64);
        let shape = [x.len() as i32];
        let a = arr_f32(&x, &shape);
        let out = a.unary(case.op).unwrap();
        assert_eq!(out.dtype(), Dtype::F32, "{:?}", case.op);
        let want: Vec<f32> = x.iter().map(|&v| (case.f)(v as f64) as f32).collect();
        check_array(&out, &shape, &want, case.tol, &format!("{:?} f32", case.op));
    }
}

#[test]
fn unary_ops_bf16() {
    init();
    for (k, case) in unary_cases().iter().enumerate() {
        let x = unary_inputs(case, 200 + k as u64);
        let shape = [x.len() as i32];
        let (a, xr) = arr_bf16(&x, &shape);
        let out = a.unary(case.op).unwrap();
        assert_eq!(out.dtype(), Dtype::BF16, "{:?}", case.op);
        // Reference from the bf16-rounded inputs, computed in f64; the output is one bf16
        // rounding away (relative 2^-9), a bit more for ops MLX evaluates in bf16 steps.
        let want: Vec<f32> = xr.iter().map(|&v| (case.f)(v as f64) as f32).collect();
        let tol = if case.op == UnaryOp::Erfinv { Tol { atol: 2e-2, rtol: 2e-2 } } else { BF16_TOL };
        check_array(&out, &shape, &want, tol, &format!("{:?} bf16", case.op));
    }
}

#[test]
fn unary_methods_match_codes() {
    init();
    let x = [0.3f32, -1.2, 2.5];
    let a = arr_f32(&x, &[3]);
    type M = fn(&Array) -> mlx_engine::api::Result<Array>;
    let pairs: Vec<(M, UnaryOp)> = vec![
        (Array::neg, UnaryOp::Neg),
        (Array::exp, UnaryOp::Exp),
        (Array::abs, UnaryOp::Abs),
        (Array::tanh, UnaryOp::Tanh),
        (Array::erf, UnaryOp::Erf),
        (Array::sigmoid, UnaryOp::Sigmoid),
        (Array::square, UnaryOp::Square),
        (Array::sin, UnaryOp::Sin),
        (Array::cos, UnaryOp::Cos),
        (Array::floor, UnaryOp::Floor),
        (Array::ceil, UnaryOp::Ceil),
        (Array::sign, UnaryOp::Sign),
        (Array::round, UnaryOp::Round),
        (Array::contiguous, UnaryOp::Contiguous),
        (Array::stop_gradient, UnaryOp::StopGradient),
        (Array::reciprocal, UnaryOp::Reciprocal),
    ];
    for (m, op) in pairs {
        assert_eq!(m(&a).unwrap().to_vec::<f32>().unwrap(), a.unary(op).unwrap().to_vec::<f32>().unwrap(), "{op:?}");
    }
    let p = arr_f32(&[0.5, 2.0], &[2]);
    assert_close(&p.log().unwrap().to_vec::<f32>().unwrap(), &[0.5f32.ln(), 2f32.ln()], F32_TOL, "log");
    assert_close(&p.sqrt().unwrap().to_vec::<f32>().unwrap(), &[0.5f32.sqrt(), 2f32.sqrt()], F32_TOL, "sqrt");
    assert_close(
        &p.rsqrt().unwrap().to_vec::<f32>().unwrap(),
        &[1.0 / 0.5f32.sqrt(), 1.0 / 2f32.sqrt()],
        F32_TOL,
        "rsqrt",
    );
    assert_close(&p.log1p().unwrap().to_vec::<f32>().unwrap(), &[1.5f32.ln(), 3f32.ln()], F32_TOL, "log1p");
    let e = arr_f32(&[0.0, 0.5], &[2]).erfinv().unwrap().to_vec::<f32>().unwrap();
    assert_close(&e, &[0.0, erfinv_ref(0.5) as f32], F32_TOL, "erfinv");
}

#[test]
fn logical_not_and_isnan() {
    init();
    let b = arr_bool(&[true, false, true], &[3]);
    let n = b.logical_not().unwrap();
    assert_eq!(n.dtype(), Dtype::Bool);
    assert_eq!(n.to_vec::<bool>().unwrap(), vec![false, true, false]);
    // On numbers: "is zero".
    let f = arr_f32(&[0.0, 2.0, -1.0], &[3]);
    assert_eq!(f.logical_not().unwrap().to_vec::<bool>().unwrap(), vec![true, false, false]);

    let x = arr_f32(&[1.0, f32::NAN, f32::INFINITY, -0.0], &[4]);
    let m = x.isnan().unwrap();
    assert_eq!(m.dtype(), Dtype::Bool);
    assert_eq!(m.to_vec::<bool>().unwrap(), vec![false, true, false, false]);
    let (y, _) = arr_bf16(&[f32::NAN, 1.0], &[2]);
    assert_eq!(y.isnan().unwrap().to_vec::<bool>().unwrap(), vec![true, false]);
}

fn floor_div(a: f64, b: f64) -> f64 {
    (a / b).floor()
}

/// Python-style remainder: the result has the sign of the divisor.
fn py_rem(a: f64, b: f64) -> f64 {
    let r = a % b;
    if r != 0.0 && (r < 0.0) != (b < 0.0) {
        r + b
    } else {
        r
    }
}

struct BinaryCase {
    op: BinaryOp,
    /// Domains of the two inputs.
    a: (f32, f32),
    b: (f32, f32),
    f: fn(f64, f64) -> f64,
}

fn arith_cases() -> Vec<BinaryCase> {
    vec![
        BinaryCase { op: BinaryOp::Add, a: (-3.0, 3.0), b: (-3.0, 3.0), f: |a, b| a + b },
        BinaryCase { op: BinaryOp::Subtract, a: (-3.0, 3.0), b: (-3.0, 3.0), f: |a, b| a - b },
        BinaryCase { op: BinaryOp::Multiply, a: (-3.0, 3.0), b: (-3.0, 3.0), f: |a, b| a * b },
        BinaryCase { op: BinaryOp::Divide, a: (-3.0, 3.0), b: (0.5, 3.0), f: |a, b| a / b },
        BinaryCase { op: BinaryOp::Maximum, a: (-3.0, 3.0), b: (-3.0, 3.0), f: f64::max },
        BinaryCase { op: BinaryOp::Minimum, a: (-3.0, 3.0), b: (-3.0, 3.0), f: f64::min },
        BinaryCase { op: BinaryOp::Power, a: (0.1, 3.0), b: (-2.0, 2.0), f: f64::powf },
        BinaryCase { op: BinaryOp::FloorDivide, a: (-6.0, 6.0), b: (0.7, 2.0), f: floor_div },
        BinaryCase { op: BinaryOp::Remainder, a: (-6.0, 6.0), b: (0.7, 2.0), f: py_rem },
    ]
}

const ASHAPE: [i32; 3] = [2, 3, 1];
const BSHAPE: [i32; 2] = [1, 4];

#[test]
fn binary_arithmetic_f32_with_broadcasting() {
    init();
    for (k, case) in arith_cases().iter().enumerate() {
        let mut g = Lcg::new(300 + k as u64);
        let x = g.vec(numel(&ASHAPE), case.a.0, case.a.1);
        let mut y = g.vec(numel(&BSHAPE), case.b.0, case.b.1);
        if case.op == BinaryOp::Remainder {
            y[0] = -y[0]; // a negative divisor too
        }
        let a = arr_f32(&x, &ASHAPE);
        let b = arr_f32(&y, &BSHAPE);
        let out = a.binary(case.op, &b).unwrap();
        let (want, shape) = broadcast_binary(&x, &ASHAPE, &y, &BSHAPE, |p, q| (case.f)(p as f64, q as f64) as f32);
        assert_eq!(shape, vec![2, 3, 4]);
        let tol = if case.op == BinaryOp::Power { Tol { atol: 1e-5, rtol: 3e-5 } } else { F32_TOL };
        check_array(&out, &shape, &want, tol, &format!("{:?} f32", case.op));
    }
}

#[test]
fn binary_arithmetic_bf16_with_broadcasting() {
    init();
    for (k, case) in arith_cases().iter().enumerate() {
        let mut g = Lcg::new(400 + k as u64);
        let x = g.vec(numel(&ASHAPE), case.a.0, case.a.1);
        let y = g.vec(numel(&BSHAPE), case.b.0, case.b.1);
        let (a, xr) = arr_bf16(&x, &ASHAPE);
        let (b, yr) = arr_bf16(&y, &BSHAPE);
        let out = a.binary(case.op, &b).unwrap();
        assert_eq!(out.dtype(), Dtype::BF16);
        let (want, shape) = broadcast_binary(&xr, &ASHAPE, &yr, &BSHAPE, |p, q| (case.f)(p as f64, q as f64) as f32);
        // Floor division and remainder in bf16 can flip by one step where the exact quotient
        // lies within a bf16 ulp of an integer, so check them through the identity
        // a = b * (a // b) + a % b, and require most elements to match the direct reference.
        match case.op {
            BinaryOp::FloorDivide | BinaryOp::Remainder => {
                let fd = read_f32(&a.floor_divide(&b).unwrap());
                let rm = read_f32(&a.remainder(&b).unwrap());
                let ys: Vec<f32> = broadcast_binary(&xr, &ASHAPE, &yr, &BSHAPE, |_, q| q).0;
                let xs: Vec<f32> = broadcast_binary(&xr, &ASHAPE, &yr, &BSHAPE, |p, _| p).0;
                for i in 0..xs.len() {
                    let back = ys[i] * fd[i] + rm[i];
                    assert!(
                        (back - xs[i]).abs() <= 0.05,
                        "{:?} bf16 identity at {i}: {} * {} + {} != {}",
                        case.op,
                        ys[i],
                        fd[i],
                        rm[i],
                        xs[i]
                    );
                    assert!(rm[i] >= -0.02 && rm[i] < ys[i] + 0.02, "remainder {} not in [0, {})", rm[i], ys[i]);
                    assert_eq!(fd[i], fd[i].floor(), "floor_divide gives integers");
                }
                // Most elements still match the direct reference.
                let direct =
                    want.iter().zip(read_f32(&out)).filter(|(w, g)| (*w - g).abs() <= 0.02 + 0.02 * w.abs()).count();
                assert!(direct * 10 >= want.len() * 9, "{:?}: only {direct} of {} match", case.op, want.len());
            }
            _ => check_array(&out, &shape, &want, BF16_TOL, &format!("{:?} bf16", case.op)),
        }
    }
}

#[test]
fn binary_methods_match_codes() {
    init();
    let a = arr_f32(&[1.0, -2.0, 3.5], &[3]);
    let b = arr_f32(&[2.0, 2.0, -1.5], &[3]);
    type M = fn(&Array, &Array) -> mlx_engine::api::Result<Array>;
    let pairs: Vec<(M, BinaryOp)> = vec![
        (Array::add, BinaryOp::Add),
        (Array::subtract, BinaryOp::Subtract),
        (Array::multiply, BinaryOp::Multiply),
        (Array::divide, BinaryOp::Divide),
        (Array::maximum, BinaryOp::Maximum),
        (Array::minimum, BinaryOp::Minimum),
        (Array::floor_divide, BinaryOp::FloorDivide),
        (Array::remainder, BinaryOp::Remainder),
    ];
    for (m, op) in pairs {
        assert_eq!(
            m(&a, &b).unwrap().to_vec::<f32>().unwrap(),
            a.binary(op, &b).unwrap().to_vec::<f32>().unwrap(),
            "{op:?}"
        );
    }
    assert_eq!(a.add(&b).unwrap().to_vec::<f32>().unwrap(), vec![3.0, 0.0, 2.0]);
    assert_eq!(a.subtract(&b).unwrap().to_vec::<f32>().unwrap(), vec![-1.0, -4.0, 5.0]);
    assert_eq!(a.multiply(&b).unwrap().to_vec::<f32>().unwrap(), vec![2.0, -4.0, -5.25]);
    assert_eq!(a.divide(&b).unwrap().to_vec::<f32>().unwrap(), vec![0.5, -1.0, 3.5 / -1.5]);
    assert_eq!(a.maximum(&b).unwrap().to_vec::<f32>().unwrap(), vec![2.0, 2.0, 3.5]);
    assert_eq!(a.minimum(&b).unwrap().to_vec::<f32>().unwrap(), vec![1.0, -2.0, -1.5]);
    assert_eq!(a.floor_divide(&b).unwrap().to_vec::<f32>().unwrap(), vec![0.0, -1.0, -3.0]);
    assert_eq!(a.remainder(&b).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 0.0, -1.0]);
    let p = arr_f32(&[2.0, 9.0], &[2]).power(&arr_f32(&[3.0, 0.5], &[2])).unwrap();
    assert_close(&p.to_vec::<f32>().unwrap(), &[8.0, 3.0], F32_TOL, "power");
}

#[test]
fn integer_arithmetic() {
    init();
    let a = arr_i32(&[7, -7, 7, -7, 0, 12], &[6]);
    let b = arr_i32(&[2, 2, -2, -2, 5, 4], &[6]);
    assert_eq!(a.add(&b).unwrap().to_vec::<i32>().unwrap(), vec![9, -5, 5, -9, 5, 16]);
    assert_eq!(a.multiply(&b).unwrap().to_vec::<i32>().unwrap(), vec![14, -14, -14, 14, 0, 48]);
    // Floor division and remainder follow Python (floor, sign of the divisor).
    let fd = a.floor_divide(&b).unwrap();
    assert_eq!(fd.dtype(), Dtype::I32);
    assert_eq!(fd.to_vec::<i32>().unwrap(), vec![3, -4, -4, 3, 0, 3]);
    assert_eq!(a.remainder(&b).unwrap().to_vec::<i32>().unwrap(), vec![1, 1, -1, -1, 0, 0]);
    assert_eq!(a.maximum(&b).unwrap().to_vec::<i32>().unwrap(), vec![7, 2, 7, -2, 5, 12]);
    assert_eq!(a.abs().unwrap().to_vec::<i32>().unwrap(), vec![7, 7, 7, 7, 0, 12]);
    assert_eq!(a.neg().unwrap().to_vec::<i32>().unwrap(), vec![-7, 7, -7, 7, 0, -12]);
    assert_eq!(a.sign().unwrap().to_vec::<i32>().unwrap(), vec![1, -1, 1, -1, 0, 1]);
    // True division of integers gives floats.
    let d = a.divide(&b).unwrap();
    assert_eq!(d.dtype(), Dtype::F32);
    assert_eq!(d.to_vec::<f32>().unwrap(), vec![3.5, -3.5, -3.5, 3.5, 0.0, 3.0]);
}

#[test]
fn comparisons_with_broadcasting() {
    init();
    let mut g = Lcg::new(7);
    // Values on a coarse grid so that equality happens.
    let x: Vec<f32> = (0..numel(&ASHAPE)).map(|_| g.below(4) as f32 - 1.5).collect();
    let y: Vec<f32> = (0..numel(&BSHAPE)).map(|_| g.below(4) as f32 - 1.5).collect();
    type Cmp = fn(f32, f32) -> bool;
    let cmps: [(BinaryOp, Cmp); 6] = [
        (BinaryOp::Equal, |a, b| a == b),
        (BinaryOp::NotEqual, |a, b| a != b),
        (BinaryOp::Less, |a, b| a < b),
        (BinaryOp::LessEqual, |a, b| a <= b),
        (BinaryOp::Greater, |a, b| a > b),
        (BinaryOp::GreaterEqual, |a, b| a >= b),
    ];
    for dtype in [Dtype::F32, Dtype::BF16] {
        let (a, xr) = arr_of(&x, &ASHAPE, dtype);
        let (b, yr) = arr_of(&y, &BSHAPE, dtype);
        for (op, f) in cmps {
            let out = a.binary(op, &b).unwrap();
            assert_eq!(out.dtype(), Dtype::Bool, "{op:?}");
            assert_eq!(out.shape(), vec![2, 3, 4]);
            let (want, _) = broadcast_binary(&xr, &ASHAPE, &yr, &BSHAPE, f);
            assert_eq!(out.to_vec::<bool>().unwrap(), want, "{op:?} {dtype}");
        }
    }
    // The named methods.
    let a = arr_f32(&[1.0, 2.0, 3.0], &[3]);
    let b = arr_f32(&[2.0], &[1]);
    assert_eq!(a.equal(&b).unwrap().to_vec::<bool>().unwrap(), vec![false, true, false]);
    assert_eq!(a.not_equal(&b).unwrap().to_vec::<bool>().unwrap(), vec![true, false, true]);
    assert_eq!(a.less(&b).unwrap().to_vec::<bool>().unwrap(), vec![true, false, false]);
    assert_eq!(a.less_equal(&b).unwrap().to_vec::<bool>().unwrap(), vec![true, true, false]);
    assert_eq!(a.greater(&b).unwrap().to_vec::<bool>().unwrap(), vec![false, false, true]);
    assert_eq!(a.greater_equal(&b).unwrap().to_vec::<bool>().unwrap(), vec![false, true, true]);
    // NaN compares unequal to everything.
    let n = arr_f32(&[f32::NAN], &[1]);
    assert_eq!(n.equal(&n).unwrap().to_vec::<bool>().unwrap(), vec![false]);
    assert_eq!(n.not_equal(&n).unwrap().to_vec::<bool>().unwrap(), vec![true]);
}

#[test]
fn logical_ops() {
    init();
    let a = arr_bool(&[true, true, false, false], &[2, 2]);
    let b = arr_bool(&[true, false], &[2]);
    let and = a.logical_and(&b).unwrap();
    assert_eq!(and.dtype(), Dtype::Bool);
    assert_eq!(and.to_vec::<bool>().unwrap(), vec![true, false, false, false]);
    assert_eq!(a.logical_or(&b).unwrap().to_vec::<bool>().unwrap(), vec![true, true, true, false]);
    assert_eq!(a.binary(BinaryOp::LogicalAnd, &b).unwrap().to_vec::<bool>().unwrap(), vec![true, false, false, false]);
    assert_eq!(a.binary(BinaryOp::LogicalOr, &b).unwrap().to_vec::<bool>().unwrap(), vec![true, true, true, false]);
    // Numbers count as true when nonzero.
    let x = arr_f32(&[0.0, 1.5, -2.0, 0.0], &[4]);
    let y = arr_f32(&[3.0, 0.0, 1.0, 0.0], &[4]);
    assert_eq!(x.logical_and(&y).unwrap().to_vec::<bool>().unwrap(), vec![false, false, true, false]);
    assert_eq!(x.logical_or(&y).unwrap().to_vec::<bool>().unwrap(), vec![true, true, true, false]);
}

#[test]
fn where_selects_with_broadcasting() {
    init();
    let cond = arr_bool(&[true, false, false, true, true, false], &[2, 3]);
    let a = arr_f32(&[10.0, 20.0, 30.0], &[3]);
    let b = Array::scalar(-1.0, Dtype::F32).unwrap();
    let out = where_(&cond, &a, &b).unwrap();
    assert_eq!(out.shape(), vec![2, 3]);
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![10.0, -1.0, -1.0, 10.0, 20.0, -1.0]);

    for dtype in [Dtype::F32, Dtype::BF16] {
        let x = rand_vec(11, 24);
        let y = rand_vec(12, 24);
        let (xa, xr) = arr_of(&x, &[2, 3, 4], dtype);
        let (ya, yr) = arr_of(&y, &[2, 3, 4], dtype);
        let c = xa.greater(&ya).unwrap();
        let out = where_(&c, &xa, &ya).unwrap();
        assert_eq!(out.dtype(), dtype);
        let want: Vec<f32> = xr.iter().zip(&yr).map(|(&p, &q)| p.max(q)).collect();
        check_array(&out, &[2, 3, 4], &want, Tol { atol: 0.0, rtol: 0.0 }, "where as max");
    }
    // A condition that does not broadcast is an MLX error.
    let bad = arr_bool(&[true, false], &[2]);
    assert!(where_(&bad, &a, &b).is_err());
}

#[test]
fn std_operator_impls_and_scalar_ops() {
    init();
    let x = [1.0f32, -2.0, 0.5, 4.0];
    let y = [0.5f32, 3.0, -1.0, 2.0];
    let a = arr_f32(&x, &[2, 2]);
    let b = arr_f32(&y, &[2, 2]);
    let zip = |f: fn(f32, f32) -> f32| -> Vec<f32> { x.iter().zip(&y).map(|(&p, &q)| f(p, q)).collect() };
    assert_eq!((&a + &b).unwrap().to_vec::<f32>().unwrap(), zip(|p, q| p + q));
    assert_eq!((&a - &b).unwrap().to_vec::<f32>().unwrap(), zip(|p, q| p - q));
    assert_eq!((&a * &b).unwrap().to_vec::<f32>().unwrap(), zip(|p, q| p * q));
    assert_eq!((&a / &b).unwrap().to_vec::<f32>().unwrap(), zip(|p, q| p / q));
    assert_eq!((-&a).unwrap().to_vec::<f32>().unwrap(), x.iter().map(|v| -v).collect::<Vec<_>>());

    let map = |f: fn(f32) -> f32| -> Vec<f32> { x.iter().map(|&p| f(p)).collect() };
    assert_eq!((&a + 1.5).unwrap().to_vec::<f32>().unwrap(), map(|p| p + 1.5));
    assert_eq!((&a - 1.5).unwrap().to_vec::<f32>().unwrap(), map(|p| p - 1.5));
    assert_eq!((&a * 3.0).unwrap().to_vec::<f32>().unwrap(), map(|p| p * 3.0));
    assert_eq!((&a / 4.0).unwrap().to_vec::<f32>().unwrap(), map(|p| p / 4.0));
    assert_eq!((1.5 + &a).unwrap().to_vec::<f32>().unwrap(), map(|p| 1.5 + p));
    assert_eq!((1.5 - &a).unwrap().to_vec::<f32>().unwrap(), map(|p| 1.5 - p));
    assert_eq!((3.0 * &a).unwrap().to_vec::<f32>().unwrap(), map(|p| 3.0 * p));
    assert_eq!((2.0 / &a).unwrap().to_vec::<f32>().unwrap(), map(|p| 2.0 / p));

    // Scalars take a float array's dtype, so bf16 stays bf16.
    let (h, hr) = arr_bf16(&x, &[4]);
    let out = (&h * 0.5).unwrap();
    assert_eq!(out.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&out), hr.iter().map(|v| v * 0.5).collect::<Vec<_>>());
    let out = (1.0 - &h).unwrap();
    assert_eq!(out.dtype(), Dtype::BF16);
    assert_eq!(read_f32(&out), hr.iter().map(|v| round_bf16(1.0 - v)).collect::<Vec<_>>());
    assert_eq!(h.scalar_like(2.0).unwrap().dtype(), Dtype::BF16);

    // With an integer array the scalar is f32 and the result promotes to f32.
    let i = arr_i32(&[1, 2, 3], &[3]);
    let out = (&i + 0.5).unwrap();
    assert_eq!(out.dtype(), Dtype::F32);
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![1.5, 2.5, 3.5]);

    // Shape mismatch surfaces as MLX's broadcast error.
    let c = arr_f32(&[1.0, 2.0, 3.0], &[3]);
    let r = &a + &c;
    assert!(r.is_err(), "adding [2,2] and [3] must fail");
}

#[test]
fn activation_helpers() {
    init();
    let x = Lcg::new(99).vec(40, -5.0, 5.0);
    let a = arr_f32(&x, &[40]);
    let silu: Vec<f32> = x.iter().map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32).collect();
    check_array(&a.silu().unwrap(), &[40], &silu, Tol { atol: 2e-6, rtol: 2e-5 }, "silu");
    let gelu: Vec<f32> = x.iter().map(|&v| (0.5 * v as f64 * (1.0 + erf_ref(v as f64 / 2f64.sqrt()))) as f32).collect();
    check_array(&a.gelu().unwrap(), &[40], &gelu, Tol { atol: 2e-6, rtol: 2e-5 }, "gelu");
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let approx: Vec<f32> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            (0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())) as f32
        })
        .collect();
    check_array(&a.gelu_approx().unwrap(), &[40], &approx, Tol { atol: 2e-6, rtol: 2e-5 }, "gelu_approx");

    let (h, hr) = arr_bf16(&x, &[40]);
    let silu_bf: Vec<f32> = hr.iter().map(|&v| (v as f64 / (1.0 + (-v as f64).exp())) as f32).collect();
    let out = h.silu().unwrap();
    assert_eq!(out.dtype(), Dtype::BF16);
    check_array(&out, &[40], &silu_bf, Tol { atol: 2e-2, rtol: 2e-2 }, "silu bf16");
}
