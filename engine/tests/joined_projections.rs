//! q|k|v and gate|up joined into one matmul each (what the GPU does by default, forced here on
//! the CPU with `MLX_ENGINE_JOIN_PROJECTIONS=always`) compute what the separate projections
//! compute: every architecture variant, dense and quantized, one full forward and a cached
//! incremental one. One test, so nothing else in this binary sees the variable change.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod measured;
mod tokenizer_fixtures;

use common_models::*;
use mlx_engine::model::DtypeChoice;

const VAR: &str = "MLX_ENGINE_JOIN_PROJECTIONS";

/// The full forward and a 5-then-1-by-1 cached forward of one prompt.
fn logits(dir: &std::path::Path, tokens: &[u32]) -> (mlx_engine::api::Array, mlx_engine::api::Array) {
    let m = load(dir, DtypeChoice::F32);
    let chunks: Vec<usize> = std::iter::once(5).chain(std::iter::repeat_n(1, tokens.len() - 5)).collect();
    (full_forward(&m, tokens), chunked_forward(&m, tokens, &chunks))
}

#[test]
fn joined_projections_compute_what_separate_ones_do() {
    let mut models = Vec::new();
    for arch in ALL_ARCHS {
        let model = TinyModel::new(arch, 23);
        let (quantized, _) = model.quantized(32, 4, &[]);
        models.push((format!("{arch:?}"), model.write_temp(), model.tok));
        models.push((format!("{arch:?} 4-bit"), quantized.write_temp(), model.tok));
    }
    let prompts: Vec<Vec<u32>> = models.iter().map(|(_, _, tok)| prompt(12, *tok, 5)).collect();

    std::env::set_var(VAR, "never");
    let apart: Vec<_> = models.iter().zip(&prompts).map(|((_, dir, _), p)| logits(dir.path(), p)).collect();
    std::env::set_var(VAR, "always");
    for (((what, dir, _), p), (full_apart, cached_apart)) in models.iter().zip(&prompts).zip(&apart) {
        let (full, cached) = logits(dir.path(), p);
        measured::check("joined/full-vs-apart", max_abs_diff(&full, full_apart), measured::JOINED_VS_APART, what);
        measured::check("joined/cached-vs-apart", max_abs_diff(&cached, cached_apart), measured::JOINED_VS_APART, what);
    }

    // The plugins read the variable (so `always` above did reach them), and a bad value fails
    // the load naming it.
    std::env::set_var(VAR, "sometimes");
    let err = try_load(models[0].1.path(), DtypeChoice::F32).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains(VAR) && err.contains("sometimes") && err.contains("always"), "{err}");
    std::env::remove_var(VAR);
}
