//! MLX `compile` of a Rust closure through the ops table's C callback: results against a naive
//! reference, errors and panics of the closure coming back as errors, argument checks, and the
//! fused activations of `nn` running as fewer kernels (counted with `graph_primitives`).

mod common;

use common::*;
use mlx_engine::api::nn::Activation;
use mlx_engine::api::{graph_primitives, Array, Compiled, Error};

fn gelu_approx_ref(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())) as f32
}

fn silu_ref(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

#[test]
fn compiled_closure_matches_reference_for_several_shapes() {
    init();
    let f = Compiled::new(2, 2, false, |xs: &[Array]| Ok(vec![xs[0].add(&xs[1])?, xs[0].multiply(&xs[1])?.exp()?]))
        .unwrap();
    // A second shape retraces (not shapeless); both must be right.
    for (seed, shape) in [(1u64, vec![3, 4]), (2, vec![2, 5, 2])] {
        let (a, b) = (rand_vec(seed, numel(&shape)), rand_vec(seed + 50, numel(&shape)));
        let out = f.call(&[&arr_f32(&a, &shape), &arr_f32(&b, &shape)]).unwrap();
        assert_eq!(out.len(), 2);
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let e: Vec<f32> = a.iter().zip(&b).map(|(x, y)| ((*x as f64) * (*y as f64)).exp() as f32).collect();
        check_array(&out[0], &shape, &sum, F32_TOL, "compiled add");
        check_array(&out[1], &shape, &e, F32_TOL, "compiled exp(a*b)");
    }
}

#[test]
fn fused_activations_match_reference_and_run_as_one_kernel() {
    init();
    let shape = [2, 3, 16];
    let (g, u) = (rand_vec(11, numel(&shape)), rand_vec(12, numel(&shape)));
    let (ga, ua) = (arr_f32(&g, &shape), arr_f32(&u, &shape));
    for (act, f) in [(Activation::GeluApprox, gelu_approx_ref as fn(f32) -> f32), (Activation::Silu, silu_ref)] {
        let want: Vec<f32> = g.iter().zip(&u).map(|(x, y)| f(*x) * y).collect();
        // The first call traces; the constants it makes are evaluated with that first result,
        // so what a later step runs is the steady state.
        act.gate(&ga, &ua).unwrap().eval().unwrap();
        let fused = act.gate(&ga, &ua).unwrap();
        let unfused = act.gate_unfused(&ga, &ua).unwrap();
        let (nf, nu) = (graph_primitives(&[&fused]).unwrap(), graph_primitives(&[&unfused]).unwrap());
        // MLX fuses GELU-approx's chain into two kernels (it splits off x^2), SiLU-gate into one.
        assert!(nf <= 2, "{act:?}: the compiled gate runs {nf} kernels");
        assert!(nu >= 3 * nf, "{act:?}: the unfused gate runs {nu} kernels, the fused one {nf}");
        check_array(&fused, &shape, &want, Tol { atol: 2e-6, rtol: 1e-5 }, &format!("{act:?} fused"));
        check_array(&unfused, &shape, &want, Tol { atol: 2e-6, rtol: 1e-5 }, &format!("{act:?} unfused"));
        // Shapeless: a decode-shaped call reuses the trace and is still right.
        let (g1, u1) = (rand_vec(13, 16), rand_vec(14, 16));
        let out = act.gate(&arr_f32(&g1, &[1, 1, 16]), &arr_f32(&u1, &[1, 1, 16])).unwrap();
        let want1: Vec<f32> = g1.iter().zip(&u1).map(|(x, y)| f(*x) * y).collect();
        check_array(&out, &[1, 1, 16], &want1, Tol { atol: 2e-6, rtol: 1e-5 }, &format!("{act:?} decode shape"));
        // Evaluated arrays leave nothing to run.
        assert_eq!(graph_primitives(&[&out]).unwrap(), 0);
    }
}

#[test]
fn closure_errors_and_panics_come_back_as_errors() {
    init();
    let x = arr_f32(&[1.0, 2.0], &[2]);
    let failing = Compiled::new(1, 1, false, |xs: &[Array]| {
        if xs[0].shape() == vec![2] {
            Err(Error::Config("the closure refuses shape [2]".into()))
        } else {
            Ok(vec![xs[0].neg()?])
        }
    })
    .unwrap();
    assert_err_contains(failing.call(&[&x]), "the closure refuses shape [2]", "closure error");
    // A failed first trace leaves the function usable for other inputs.
    let y = arr_f32(&[1.0, 2.0, 3.0], &[3]);
    assert_eq!(failing.call(&[&y]).unwrap()[0].to_vec::<f32>().unwrap(), vec![-1.0, -2.0, -3.0]);

    let panicking = Compiled::new(1, 1, false, |_: &[Array]| -> mlx_engine::api::Result<Vec<Array>> {
        panic!("boom inside the compiled closure")
    })
    .unwrap();
    let err = panicking.call(&[&x]).unwrap_err().to_string();
    assert!(err.contains("panicked") && err.contains("boom inside the compiled closure"), "{err}");

    // Returning the wrong number of arrays is refused with both counts.
    let wrong = Compiled::new(1, 2, false, |xs: &[Array]| Ok(vec![xs[0].clone()])).unwrap();
    assert_err_contains(wrong.call(&[&x]), "returned 1 arrays, declared 2", "output count");
    // MLX refuses to evaluate inside a trace; that is the closure's error too.
    let evaluating =
        Compiled::new(1, 1, false, |xs: &[Array]| Ok(vec![Array::scalar(xs[0].item::<f32>()? as f64, xs[0].dtype())?]))
            .unwrap();
    assert!(evaluating.call(&[&x]).is_err());
    // The process and other compiled functions keep working.
    assert_eq!(failing.call(&[&arr_f32(&[5.0], &[1])]).unwrap()[0].to_vec::<f32>().unwrap(), vec![-5.0]);
}

#[test]
fn bad_arguments_are_errors() {
    init();
    let f = Compiled::new(2, 1, false, |xs: &[Array]| Ok(vec![xs[0].add(&xs[1])?])).unwrap();
    let x = arr_f32(&[1.0], &[1]);
    assert_err_contains(f.call(&[&x]), "takes 2 inputs, got 1", "input count");
    assert_err_contains(Compiled::new(1, 0, false, |_: &[Array]| Ok(vec![])), "n_outputs", "zero outputs");
    // Element-wise shapes that do not broadcast: MLX's own message.
    let y = arr_f32(&[1.0, 2.0, 3.0], &[3]);
    let z = arr_f32(&[1.0, 2.0], &[2]);
    assert!(f.call(&[&y, &z]).is_err());
}
