//! Conformance of every architecture variant on tiny random folders written by the test:
//! logits shape and dtype in f32 and bf16, cached incremental decode equal to one full forward
//! (gemma3's ring buffer included), quantized checkpoints (with a per-layer override) equal to
//! their dequantized dense twins, and quantization metadata that does not match the tensors
//! rejected with an error naming the layer.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod measured;
mod tokenizer_fixtures;

use common_models::*;
use mlx_engine::api::{Dtype, LayerCache};
use mlx_engine::model::DtypeChoice;

/// Shape, dtype and metadata of one load.
fn check_load(arch: Arch, dir: &std::path::Path, choice: DtypeChoice, dtype: Dtype) -> mlx_engine::api::Array {
    let m = load(dir, choice);
    assert_eq!(m.model_type, arch.model_type());
    assert_eq!(m.dtype, dtype, "{arch:?}: compute dtype");
    assert_eq!(m.context_length, Some(MAX_POS), "{arch:?}: context length from max_position_embeddings");
    let want_layout = if arch.is_gemma() {
        vec![LayerCache::SlidingWindow { window: WINDOW }, LayerCache::Full]
    } else {
        vec![LayerCache::Full; LAYERS]
    };
    assert_eq!(m.cache_layout, want_layout, "{arch:?}: cache layout");
    assert!(m.provider.contains("plugin"), "{arch:?}: provided by a workspace plugin, got {}", m.provider);
    let tok = arch.default_tok();
    let tokens = prompt(7, tok, 1);
    let logits = full_forward(&m, &tokens);
    assert_eq!(logits.shape(), vec![1, 7, tok.vocab()], "{arch:?} {dtype:?}: logits shape");
    assert_eq!(logits.dtype(), dtype, "{arch:?}: logits dtype");
    let values = logits.to_vec_f32().expect("read logits");
    assert!(values.iter().all(|x| x.is_finite()), "{arch:?} {dtype:?}: logits are finite");
    // Random weights give logits that vary across the vocabulary.
    let spread = values.iter().fold(f32::MIN, |a, &b| a.max(b)) - values.iter().fold(f32::MAX, |a, &b| a.min(b));
    assert!(spread > 0.1, "{arch:?} {dtype:?}: logits spread {spread}");
    logits
}

fn conformance(arch: Arch) {
    let model = TinyModel::new(arch, 7);
    let dir = model.write_temp();

    // f32 and bf16 loads; bf16 logits follow the f32 ones to bf16 precision.
    let f32_logits = check_load(arch, dir.path(), DtypeChoice::F32, Dtype::F32);
    let bf16_logits = check_load(arch, dir.path(), DtypeChoice::BF16, Dtype::BF16);
    let rel = rel_diff(&bf16_logits, &f32_logits);
    measured::ceiling("conformance/bf16-vs-f32-rel", rel, measured::BF16_VS_F32_REL, format_args!("{arch:?}"));

    // Cached incremental decode equals one full forward, at every position. Gemma's prompt is
    // longer than its window of 8, so the local layer's ring buffer wraps.
    let m = load(dir.path(), DtypeChoice::F32);
    let n = if arch.is_gemma() { 20 } else { 12 };
    let tokens = prompt(n, model.tok, 2);
    let full = full_forward(&m, &tokens);
    let mut schedules = vec![std::iter::once(5).chain(std::iter::repeat_n(1, n - 5)).collect::<Vec<_>>()];
    if arch.is_gemma() {
        // A chunk that overflows the window after a partial fill, then single tokens.
        schedules.push(vec![3, 9, 1, 1, 1, 1, 1, 1, 1, 1]);
        // Prefill longer than the window, then single tokens into the full ring.
        schedules.push(vec![11, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    }
    for chunks in &schedules {
        let inc = chunked_forward(&m, &tokens, chunks);
        assert_eq!(inc.shape(), full.shape());
        let all = max_abs_diff(&inc, &full);
        measured::check(
            "conformance/cached-vs-full",
            all,
            measured::CACHED_VS_FULL,
            format_args!("{arch:?} chunks {chunks:?}"),
        );
    }
}

#[test]
fn llama_conformance() {
    conformance(Arch::Llama);
}

#[test]
fn qwen2_conformance() {
    conformance(Arch::Qwen2);
}

#[test]
fn qwen3_conformance() {
    conformance(Arch::Qwen3);
}

#[test]
fn llama3_rope_scaling_conformance() {
    conformance(Arch::Llama3Rope);
}

#[test]
fn llama_untied_lm_head_conformance() {
    conformance(Arch::LlamaUntied);
}

#[test]
fn gemma3_conformance() {
    conformance(Arch::Gemma3);
}

/// Config-only differences must reach the computation: the same tensors under llama3 rope
/// scaling give the same logits at position 0 (no rotation yet) and different ones later; an
/// untied head that equals the embeddings gives the tied model's logits exactly.
#[test]
fn config_variants_change_what_they_should() {
    let plain = TinyModel::new(Arch::Llama, 11);
    let mut scaled = plain.clone();
    scaled.config = config_json(Arch::Llama3Rope, plain.tok);
    scaled.config["rope_theta"] = plain.config["rope_theta"].clone();
    let (d1, d2) = (plain.write_temp(), scaled.write_temp());
    let tokens = prompt(10, plain.tok, 3);
    let a = full_forward(&load(d1.path(), DtypeChoice::F32), &tokens);
    let b = full_forward(&load(d2.path(), DtypeChoice::F32), &tokens);
    let first = |x: &mlx_engine::api::Array| x.slice_axis(1, 0, 1).expect("slice");
    measured::check(
        "conformance/same-computation",
        max_abs_diff(&first(&a), &first(&b)),
        measured::SAME_COMPUTATION,
        "position 0 is not rotated",
    );
    let later = max_abs_diff(&last_position(&a), &last_position(&b));
    assert!(later > 1e-4, "llama3 rope scaling left position 9 unchanged ({later})");

    let mut untied = plain.clone();
    untied.config = config_json(Arch::LlamaUntied, plain.tok);
    untied.set("lm_head.weight", plain.get("model.embed_tokens.weight").clone());
    let d3 = untied.write_temp();
    let c = full_forward(&load(d3.path(), DtypeChoice::F32), &tokens);
    measured::check(
        "conformance/same-computation",
        max_abs_diff(&a, &c),
        measured::SAME_COMPUTATION,
        "an lm_head equal to the embeddings",
    );
    // A different head gives different logits (the head is really used).
    let other = TinyModel::new(Arch::LlamaUntied, 12);
    untied.set("lm_head.weight", other.get("lm_head.weight").clone());
    let d4 = untied.write_temp();
    let e = full_forward(&load(d4.path(), DtypeChoice::F32), &tokens);
    assert!(max_abs_diff(&a, &e) > 1e-3, "a different lm_head changes the logits");

    // gemma3's local layer really attends over a window of 8: widening it to the whole context
    // keeps positions 0..=7 (which see everything either way) and changes later ones.
    let gemma = TinyModel::new(Arch::Gemma3, 13);
    let mut wide = gemma.clone();
    wide.config["sliding_window"] = serde_json::json!(MAX_POS);
    let (g1, g2) = (gemma.write_temp(), wide.write_temp());
    let tokens = prompt(20, gemma.tok, 5);
    let (x, y) = (
        full_forward(&load(g1.path(), DtypeChoice::F32), &tokens),
        full_forward(&load(g2.path(), DtypeChoice::F32), &tokens),
    );
    let head = |a: &mlx_engine::api::Array| a.slice_axis(1, 0, WINDOW as i32).expect("slice");
    let inside = max_abs_diff(&head(&x), &head(&y));
    measured::check("conformance/same-computation", inside, measured::SAME_COMPUTATION, "positions inside the window");
    let tail = max_abs_diff(&last_position(&x), &last_position(&y));
    assert!(tail > 1e-4, "the window of 8 changes position 19 ({tail})");
}

/// Quantized load vs the dequantized dense twin (same effective weights), and vs the original
/// full-precision weights (quantization error only; `vs_original` is a ceiling on it: measured
/// 0.022 at 8 bits and 0.315 at 4, moving by < 1e-6 across BLAS kernels).
fn quantized_case(arch: Arch, group: i32, bits: i32, overrides: &[(&str, i32, i32)], vs_original: f32) {
    let model = TinyModel::new(arch, 21);
    let (quant, dense) = model.quantized(group, bits, overrides);
    let (qd, dd, od) = (quant.write_temp(), dense.write_temp(), model.write_temp());
    let tokens = prompt(9, model.tok, 4);
    let qm = load(qd.path(), DtypeChoice::F32);
    assert_eq!(qm.dtype, Dtype::F32);
    let q = full_forward(&qm, &tokens);
    assert_eq!(q.shape(), vec![1, 9, model.vocab()]);
    assert_eq!(q.dtype(), Dtype::F32);
    let d = full_forward(&load(dd.path(), DtypeChoice::F32), &tokens);
    let o = full_forward(&load(od.path(), DtypeChoice::F32), &tokens);
    let what = format!("{arch:?} {bits}-bit group {group} overrides {overrides:?}");
    measured::check(
        "conformance/quantized-vs-dequantized-rel",
        rel_diff(&q, &d),
        measured::QUANTIZED_VS_DEQUANTIZED_REL,
        &what,
    );
    let rel_o = rel_diff(&q, &o);
    measured::ceiling(&format!("conformance/quantized-{bits}bit-vs-original-rel"), rel_o, vs_original, &what);
    assert!(rel_o > 0.0, "{what}: quantization changed nothing?");
    // Cached decode works on the quantized model too.
    let inc = chunked_forward(&qm, &tokens, &[4, 1, 1, 1, 1, 1]);
    measured::check("conformance/quantized-cached-vs-full", max_abs_diff(&inc, &q), measured::CACHED_VS_FULL, &what);
}

#[test]
fn quantized_8bit_every_arch_matches_dequantized() {
    for arch in ALL_ARCHS {
        quantized_case(arch, 64, 8, &[], 0.1);
    }
}

#[test]
fn quantized_4bit_with_per_layer_override() {
    // Group 32 by default; one layer (and the embeddings) at 8 bits group 64. A loader that
    // ignored the overrides would reject these tensors' shapes.
    let overrides = [("model.layers.1.mlp.down_proj", 64, 8), ("model.embed_tokens", 64, 8)];
    quantized_case(Arch::Llama, 32, 4, &overrides, 0.5);
    let overrides = [("model.layers.0.self_attn.o_proj", 32, 8)];
    quantized_case(Arch::Gemma3, 64, 4, &overrides, 0.5);
    quantized_case(Arch::Qwen3, 64, 4, &[], 0.5);
}

#[test]
fn quantized_layer_whose_scales_do_not_match_is_an_error_naming_it() {
    let model = TinyModel::new(Arch::Llama, 31);
    let (mut quant, _) = model.quantized(64, 4, &[]);
    // Scales and biases of a group-32 quantization under a group-64 config.
    let (wq, scales, biases) =
        mlx_engine::api::quantize(model.get("model.layers.1.mlp.up_proj.weight"), 32, 4).expect("quantize");
    quant.set("model.layers.1.mlp.up_proj.weight", wq);
    quant.set("model.layers.1.mlp.up_proj.scales", scales);
    quant.set("model.layers.1.mlp.up_proj.biases", biases);
    let dir = quant.write_temp();
    let msg = match try_load(dir.path(), DtypeChoice::F32) {
        Ok(_) => panic!("mismatched scales loaded"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("`model.layers.1.mlp.up_proj`"), "names the layer: {msg}");
    assert!(msg.contains("do not match bits=4 group_size=64"), "says what does not match: {msg}");
    assert!(msg.contains("[128, 2]"), "shows the scales' shape: {msg}");

    // The same tensors with an override saying group 32 load fine.
    quant.config["quantization"]["model.layers.1.mlp.up_proj"] = serde_json::json!({"group_size": 32, "bits": 4});
    let dir = quant.write_temp();
    let m = load(dir.path(), DtypeChoice::F32);
    assert_eq!(full_forward(&m, &[5, 6, 7]).shape(), vec![1, 3, model.vocab()]);

    // Bits the config does not support, and quantized tensors without any quantization entry.
    quant.config["quantization"]["model.layers.1.mlp.up_proj"] = serde_json::json!({"group_size": 32, "bits": 7});
    let dir = quant.write_temp();
    let msg = try_load(dir.path(), DtypeChoice::F32).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("`model.layers.1.mlp.up_proj`: unsupported quantization bits=7 group_size=32"),
        "unsupported bits: {msg}"
    );
    quant.config.as_object_mut().expect("object").remove("quantization");
    let dir = quant.write_temp();
    let msg = try_load(dir.path(), DtypeChoice::F32).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("`model.embed_tokens` is quantized but config.json has no `quantization` entry"),
        "quantized tensors without config: {msg}"
    );
}

#[test]
fn quantization_under_both_of_mlx_lms_names_loads() {
    // mlx-lm's `convert -q` writes `quantization` and a copy as `quantization_config`.
    let model = TinyModel::new(Arch::Llama, 33);
    let (quant, _) = model.quantized(64, 4, &[]);
    let mut both = quant.clone();
    both.config["quantization_config"] = both.config["quantization"].clone();
    let (a, b) = (quant.write_temp(), both.write_temp());
    let tokens = prompt(5, model.tok, 2);
    let want = full_forward(&load(a.path(), DtypeChoice::F32), &tokens);
    let got = full_forward(&load(b.path(), DtypeChoice::F32), &tokens);
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}
