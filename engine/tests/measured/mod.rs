//! The numeric comparisons of the model suites (parity, conformance, caches), each with its
//! bound, and the visible note a test prints when a real model is missing.
//!
//! Every comparison goes through `within`/`check` (a difference that should be rounding noise)
//! or `ceiling` (an intended approximation's error); when `MLX_ENGINE_SPREAD_LOG` names a file,
//! each appends `{"quantity", "kind", "value", "bound"}` as one JSON line. `scripts/blas-matrix.sh` runs the suites under each OpenBLAS kernel with that set and
//! prints the worst value of every quantity; the bounds are set from that table
//! (`docs/testing.md`).
//!
//! A test file includes it with `mod measured;`.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

// Bounds shared by the model suites, each at least 3x the worst value measured under every
// OpenBLAS kernel and the reference BLAS (`scripts/blas-matrix.sh`; docs/testing.md). They
// compare the tiny random models, whose logits stay within about 15 of 0, so absolute bounds
// work there.
/// bf16 vs f32 logits, `max |diff| / max |f32 logit|`: a ceiling on bf16's rounding (worst
/// 0.0221, moving by 6e-7 across kernels).
pub const BF16_VS_F32_REL: f32 = 0.08;
/// Cached incremental decode vs one full forward, `max |diff|` over all positions: the two
/// multiply matrices of other shapes, which BLAS sums in another order. Worst 1.7e-6: 6x.
pub const CACHED_VS_FULL: f32 = 1e-5;
/// Two routes to the same numbers (an untied head equal to the embeddings, positions a window
/// change cannot reach), `max |diff|`. Exactly 0 under every kernel; 1e-6 leaves room for a
/// BLAS that picks kernels by matrix address alignment.
pub const SAME_COMPUTATION: f32 = 1e-6;
/// Projections joined into one matmul (q|k|v, gate|up; the GPU's default) vs apart, `max
/// |diff|` of the logits: a matmul of more rows, which BLAS may block differently. Worst
/// 9.7e-7 (default and Haswell kernels): 10x.
pub const JOINED_VS_APART: f32 = 1e-5;
/// Quantized matmuls vs dense matmuls over the dequantized weights, relative. Worst 9.8e-7: 5x.
pub const QUANTIZED_VS_DEQUANTIZED_REL: f32 = 5e-6;

/// Records one measured difference from a reference that should agree up to rounding noise,
/// and tells whether it is within `bound` (set to at least 3x the worst measured).
pub fn within(quantity: &str, value: f32, bound: f32) -> bool {
    record(quantity, "noise", value, bound);
    value <= bound
}

/// Asserts `within`; `what` says where it was measured.
pub fn check(quantity: &str, value: f32, bound: f32, what: impl std::fmt::Display) {
    assert!(within(quantity, value, bound), "{what}: {quantity} is {value:e}, above its bound {bound:e}");
}

/// Asserts an intended approximation's error (bf16 vs f32, quantized vs dense) is at most
/// `bound`, recording it. Such an error is mostly the approximation's, so its bound is a ceiling
/// with room above the worst value for 3x the spread across BLAS kernels.
pub fn ceiling(quantity: &str, value: f32, bound: f32, what: impl std::fmt::Display) {
    record(quantity, "ceiling", value, bound);
    assert!(value <= bound, "{what}: {quantity} is {value:e}, above its ceiling {bound:e}");
}

/// Appends the measurement to the spread log, if one is asked for.
fn record(quantity: &str, kind: &str, value: f32, bound: f32) {
    let Ok(path) = std::env::var("MLX_ENGINE_SPREAD_LOG") else { return };
    let line =
        serde_json::json!({"quantity": quantity, "kind": kind, "value": value, "bound": bound}).to_string() + "\n";
    // One short O_APPEND write per line, so concurrent test threads and binaries don't interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("MLX_ENGINE_SPREAD_LOG={path}: {e}");
    }
}

/// Prints a line that a plain `cargo test` shows even for a passing test: libtest captures
/// `print!`/`eprint!` output, not writes to the process's stderr.
pub fn note(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The repository's `models/` folder (or `MLX_ENGINE_MODELS`), where `make models` puts the
/// real weights.
pub fn models_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    match std::env::var_os("MLX_ENGINE_MODELS") {
        Some(dir) => root.join(dir),
        None => root.join("models"),
    }
}

/// `true` if every one of `paths` exists. Otherwise the real-model check `test` is skipped
/// with a visible line, or fails when `MLX_ENGINE_REQUIRE_MODELS` is set (`make test`).
pub fn have_models(test: &str, paths: &[&Path]) -> bool {
    let Some(missing) = paths.iter().find(|p| !p.exists()) else { return true };
    assert!(
        std::env::var_os("MLX_ENGINE_REQUIRE_MODELS").is_none(),
        "{test}: {} is missing (run `make models`)",
        missing.display()
    );
    note(format_args!("SKIPPED {test}: {} is missing (run `make models`)", missing.display()));
    false
}
