//! f32 GEMM throughput through the raw ops table: C = A @ B with square N x N matrices
//! (N = 2048, or the first argument). One warm-up, then the best of 5 timed runs, each
//! evaluated before the clock stops.
//!
//! `cargo run --release -p mlx-engine --example gemm_bench` (OpenBLAS linked), and with
//! `MLX_ENGINE_NO_OPENBLAS=1` to compare against the MLX wheel's reference BLAS.

use std::ffi::c_char;
use std::ptr;
use std::time::{Duration, Instant};

use mlx_engine::mlx::ffi::ops_table;
use mlx_engine_plugin_api::ops_table::{Handle, OpsTable, Status};
use mlx_engine_plugin_api::Dtype;

fn t() -> &'static OpsTable {
    ops_table()
}

fn check(st: Status, what: &str) {
    if st != 0 {
        let mut msg: *const c_char = ptr::null();
        let mut len = 0usize;
        // SAFETY: valid out pointers; the message is copied before any other shim call.
        unsafe { (t().last_error)(&mut msg, &mut len) };
        let text = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: the shim returns `len` readable bytes at `msg`.
            let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
            String::from_utf8_lossy(bytes).into_owned()
        };
        panic!("{what} failed: {text}");
    }
}

fn random_matrix(n: i32, seed: u64) -> Handle {
    let mut key = ptr::null_mut();
    // SAFETY: valid out pointer.
    check(unsafe { (t().random_key)(seed, &mut key) }, "random_key");
    let shape = [n, n];
    let mut out = ptr::null_mut();
    // SAFETY: shape of two values, live key, valid out pointer.
    let st = unsafe { (t().random_uniform)(shape.as_ptr(), 2, -1.0, 1.0, Dtype::F32 as u32, key, &mut out) };
    check(st, "random_uniform");
    // SAFETY: `out` and `key` are live handles we own; `out` is evaluated so it no longer needs
    // the key, which is freed once.
    unsafe {
        check((t().eval)(&out, 1), "eval");
        (t().array_free)(key);
    }
    out
}

fn time_matmul(a: Handle, b: Handle) -> Duration {
    let start = Instant::now();
    let mut c = ptr::null_mut();
    // SAFETY: live input handles, valid out pointer; `c` is evaluated then freed once.
    unsafe {
        check((t().matmul)(a, b, &mut c), "matmul");
        check((t().eval)(&c, 1), "eval");
    }
    let elapsed = start.elapsed();
    // SAFETY: `c` is an owned handle, freed once.
    unsafe { (t().array_free)(c) };
    elapsed
}

fn main() {
    let n: i32 = std::env::args().nth(1).map(|s| s.parse().expect("matrix size N")).unwrap_or(2048);
    let a = random_matrix(n, 1);
    let b = random_matrix(n, 2);

    let _ = time_matmul(a, b); // warm-up
    let best = (0..5).map(|_| time_matmul(a, b)).min().expect("five runs");

    let flops = 2.0 * f64::from(n).powi(3);
    let gflops = flops / best.as_secs_f64() / 1e9;
    // Set by the build script: "openblas", "mlx-wheel" or "accelerate".
    let blas = env!("MLX_ENGINE_BLAS");
    println!(
        "f32 matmul {n}x{n} @ {n}x{n}: best of 5 = {:.1} ms, {gflops:.1} GFLOP/s  [BLAS: {blas}]",
        best.as_secs_f64() * 1e3
    );

    // SAFETY: `a` and `b` are owned handles, freed once.
    unsafe {
        (t().array_free)(a);
        (t().array_free)(b);
    }
}
