//! A llama model as a hand-written GGUF v3 file (llama.cpp tensor names, metadata, Q/K rows
//! permuted the way llama.cpp's converter does, a byte-level `gpt2` tokenizer in the metadata)
//! must compute the same logits as the equivalent Hugging Face folder: this checks the engine's
//! structural GGUF loading (`model/gguf.rs`) and the llama plugin's GGUF hook, renaming and
//! un-permutation, and Llama 3.1's `rope_freqs.weight`.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod gguf_writer;
mod measured;
mod tokenizer_fixtures;

use std::path::Path;

use common_models::*;
use gguf_writer::{write_gguf_file, F32Tensor};
use mlx_engine::api::io::MetaValue;
use mlx_engine::api::Array;
use mlx_engine::generate::GenerateRequest;
use mlx_engine::model::{DtypeChoice, Source};

/// Hugging Face name -> llama.cpp name (written out here independently of the engine's map).
fn gguf_name(hf: &str) -> String {
    let (stem, suffix) = hf.rsplit_once('.').expect("dotted name");
    let mapped = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.").expect("layer tensor");
            let (layer, part) = rest.split_once('.').expect("layer.part");
            let part = match part {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                other => panic!("no llama.cpp name for {other}"),
            };
            format!("blk.{layer}.{part}")
        }
    };
    format!("{mapped}.{suffix}")
}

/// llama.cpp's Q/K permutation of a `[rows, cols]` matrix: each head's rows, viewed as
/// `[2, half]`, are stored as `[half, 2]` (`reshape(n_head, 2, half, cols).swapaxes(1, 2)`).
fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let (src, dst) = (h * hd + i * half + j, h * hd + j * 2 + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn scalar_f32(v: f32) -> MetaValue {
    MetaValue::Array(Array::from_slice(&[v], &[]).expect("scalar"))
}

fn scalar_u32(v: u32) -> MetaValue {
    MetaValue::Array(tokenizer_fixtures::scalar_u32(v))
}

/// The GGUF metadata of a tiny llama with the byte-level tokenizer.
fn metadata() -> Vec<(String, MetaValue)> {
    let mut meta = vec![
        ("general.architecture".to_string(), MetaValue::String("llama".into())),
        ("general.name".to_string(), MetaValue::String("tiny random llama".into())),
        ("llama.context_length".to_string(), scalar_u32(MAX_POS as u32)),
        ("llama.embedding_length".to_string(), scalar_u32(HIDDEN as u32)),
        ("llama.block_count".to_string(), scalar_u32(LAYERS as u32)),
        ("llama.feed_forward_length".to_string(), scalar_u32(INTERMEDIATE as u32)),
        ("llama.attention.head_count".to_string(), scalar_u32(HEADS as u32)),
        ("llama.attention.head_count_kv".to_string(), scalar_u32(KV_HEADS as u32)),
        ("llama.rope.freq_base".to_string(), scalar_f32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".to_string(), scalar_f32(RMS_EPS as f32)),
    ];
    meta.extend(tokenizer_fixtures::bl_gguf_meta("gpt2"));
    meta
}

/// Writes `model` as a GGUF file; `permute` false writes Q/K rows as they are (to show that
/// the permutation matters).
fn write_gguf(model: &TinyModel, path: &Path, permute: bool) {
    write_gguf_with(model, path, permute, &metadata(), Vec::new());
}

fn write_gguf_with(model: &TinyModel, path: &Path, permute: bool, meta: &[(String, MetaValue)], extra: Vec<F32Tensor>) {
    let tensors: Vec<F32Tensor> = model
        .weights
        .iter()
        .map(|(name, a)| {
            let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
            let mut data = a.to_vec_f32().expect("read weight");
            let heads = if name.contains("self_attn.q_proj") {
                Some(HEADS as usize)
            } else if name.contains("self_attn.k_proj") {
                Some(KV_HEADS as usize)
            } else {
                None
            };
            if let (Some(h), true) = (heads, permute) {
                data = permute_rows(&data, shape[0], shape[1], h);
            }
            F32Tensor { name: gguf_name(name), shape, data }
        })
        .chain(extra)
        .collect();
    write_gguf_file(path, meta, &tensors);
}

/// llama.cpp's `rope_freqs.weight` for mlx-lm's llama3 rule: per pair, the factor its
/// wavelength is multiplied by (computed here independently of the plugin-api's llama3 code).
fn llama3_freq_factors(dims: usize, base: f64, factor: f64, low: f64, high: f64, old_ctx: f64) -> Vec<f32> {
    (0..dims / 2)
        .map(|i| {
            let wavelen = 2.0 * std::f64::consts::PI * base.powf((2 * i) as f64 / dims as f64);
            let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
            let f = if wavelen > low_wl {
                factor
            } else if wavelen > high_wl {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            } else {
                1.0
            };
            f as f32
        })
        .collect()
}

#[test]
fn permutation_helper_is_llama_cpps() {
    // One head of 4 rows (half = 2), one column: rows [r0 r1 | r2 r3] -> [r0 r2 r1 r3].
    assert_eq!(permute_rows(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1), vec![0.0, 2.0, 1.0, 3.0]);
    // Two heads, two columns.
    let data: Vec<f32> = (0..16).map(|x| x as f32).collect();
    let want = [0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.];
    assert_eq!(permute_rows(&data, 8, 2, 2), want);
}

#[test]
fn gguf_llama_matches_the_hf_folder() {
    for arch in [Arch::Llama, Arch::LlamaUntied] {
        let model = TinyModel::new(arch, 41);
        let hf = model.write_temp();
        let gdir = tempfile::tempdir().expect("tempdir");
        let gguf = gdir.path().join("tiny-llama-f32.gguf");
        write_gguf(&model, &gguf, true);

        let g = load(&gguf, DtypeChoice::F32);
        assert_eq!(g.model_type, "llama");
        assert!(matches!(g.source, Source::Gguf { .. }));
        assert_eq!(g.context_length, Some(MAX_POS));
        assert_eq!(g.text_config["tie_word_embeddings"], serde_json::json!(arch != Arch::LlamaUntied));
        assert_eq!(g.text_config["num_key_value_heads"], serde_json::json!(KV_HEADS));
        assert_eq!(g.num_parameters, model.weights.iter().map(|(_, a)| a.size()).sum::<usize>());
        let h = load(hf.path(), DtypeChoice::F32);

        let tokens = prompt(12, Tok::ByteLevel, 6);
        let (gl, hl) = (full_forward(&g, &tokens), full_forward(&h, &tokens));
        assert_eq!(gl.shape(), vec![1, 12, model.vocab()]);
        let diff = max_abs_diff(&gl, &hl);
        measured::check("gguf/vs-hf-folder", diff, measured::SAME_COMPUTATION, format_args!("{arch:?}"));
        // Cached decode through the GGUF model too.
        let inc = chunked_forward(&g, &tokens, &[5, 1, 1, 1, 1, 1, 1, 1]);
        measured::check(
            "gguf/cached-vs-full",
            max_abs_diff(&inc, &hl),
            measured::CACHED_VS_FULL,
            format_args!("{arch:?}"),
        );

        // Control: Q/K rows written without llama.cpp's permutation come out wrong, so the
        // agreement above depends on the plugin undoing it.
        let raw = gdir.path().join("unpermuted.gguf");
        write_gguf(&model, &raw, false);
        let wrong = full_forward(&load(&raw, DtypeChoice::F32), &tokens);
        let off = max_abs_diff(&wrong, &hl);
        assert!(off > 1e-3, "{arch:?}: unpermuted Q/K rows gave the same logits ({off})");
    }
}

#[test]
fn gguf_model_generates_like_the_hf_folder() {
    let model = TinyModel::new(Arch::LlamaUntied, 43);
    let hf = model.write_temp();
    // A folder holding only the .gguf file loads too.
    let gdir = tempfile::tempdir().expect("tempdir");
    write_gguf(&model, &gdir.path().join("model.gguf"), true);

    let gkit = load_kit(gdir.path());
    assert_eq!(gkit.info().model_type, "llama");
    assert_eq!(gkit.info().context_length, Some(MAX_POS));
    assert_eq!(gkit.tokenizer().bos_token_id(), Some(1), "BOS from tokenizer.ggml.bos_token_id");
    assert!(gkit.tokenizer().is_eos(2), "EOS from tokenizer.ggml.eos_token_id");
    assert_eq!(
        gkit.tokenize("hello world").expect("encode"),
        vec![tokenizer_fixtures::BL_HELLO, tokenizer_fixtures::BL_SPACE_WORLD]
    );
    let hkit = load_kit(hf.path());

    let req = GenerateRequest {
        prompt_tokens: prompt(7, Tok::ByteLevel, 8),
        max_tokens: Some(10),
        ignore_eos: true,
        ..Default::default()
    };
    let ids = |kit: &mlx_engine::ModelKit| -> Vec<u32> {
        let mut out = Vec::new();
        for r in kit.generate(req.clone()).expect("start") {
            out.extend(r.expect("result").tokens.iter().map(|t| t.id));
        }
        out
    };
    let (g, h) = (ids(&gkit), ids(&hkit));
    assert_eq!(g.len(), 10);
    assert_eq!(g, h, "greedy tokens of the GGUF and HF models");

    // Two .gguf files and no config.json: the folder is ambiguous.
    write_gguf(&model, &gdir.path().join("other.gguf"), true);
    let msg = try_load(gdir.path(), DtypeChoice::F32).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(msg, format!("{}: 2 .gguf files and no config.json: pass the file to load", gdir.path().display()));
}

#[test]
fn llama_3_1_gguf_with_rope_freqs_matches_the_llama3_rope_scaling_folder() {
    let model = TinyModel::new(Arch::Llama3Rope, 47);
    let hf = model.write_temp();
    let dims = Arch::Llama3Rope.head_dim() as usize;
    let factors = llama3_freq_factors(dims, 500000.0, 8.0, 1.0, 4.0, 16.0);
    // Both scaled bands of the rule occur at this size (full factor and smoothed).
    assert!(factors.contains(&8.0) && factors.iter().any(|&f| f > 1.0 && f < 8.0), "{factors:?}");
    let mut meta = metadata();
    meta.retain(|(k, _)| k != "llama.rope.freq_base");
    meta.push(("llama.rope.freq_base".to_string(), scalar_f32(500000.0)));
    let gdir = tempfile::tempdir().expect("tempdir");
    let gguf = gdir.path().join("llama31.gguf");
    let freqs = F32Tensor { name: "rope_freqs.weight".into(), shape: vec![dims / 2], data: factors };
    write_gguf_with(&model, &gguf, true, &meta, vec![freqs]);

    let g = load(&gguf, DtypeChoice::F32);
    assert!(g.text_config.get("rope_scaling").is_none(), "{}", g.text_config);
    // Positions past the original context (16), where the scaling matters.
    let tokens = prompt(40, Tok::ByteLevel, 9);
    let h = load(hf.path(), DtypeChoice::F32);
    let diff = max_abs_diff(&full_forward(&g, &tokens), &full_forward(&h, &tokens));
    assert!(diff < 1e-4, "GGUF with rope_freqs differs from the llama3-scaled folder by {diff}");

    // Control: the same file without rope_freqs is plain RoPE, which differs.
    let plain = gdir.path().join("plain.gguf");
    write_gguf_with(&model, &plain, true, &meta, Vec::new());
    let off = max_abs_diff(&full_forward(&load(&plain, DtypeChoice::F32), &tokens), &full_forward(&h, &tokens));
    assert!(off > 1e-3, "rope_freqs made no difference ({off})");
}

/// The shipped SmolLM2 Q4_1 file mixes widths (Q8_0 embedding, Q4_1 layers): each layer must
/// get its own width, whatever the plugin renames its tensors to.
#[test]
fn smollm2_q4_1_gguf_with_mixed_widths_answers() {
    let file = measured::models_dir().join("smollm2-135m-instruct/gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !measured::have_models("smollm2_q4_1_gguf_with_mixed_widths_answers", &[&file]) {
        return;
    }
    let kit = load_kit(&file);
    let messages =
        [mlx_engine::tokenizer::ChatMessage::new("user", "What is the capital of France? Answer in one sentence.")];
    let prompt_tokens = kit.tokenize_chat(&messages, None, &Default::default()).unwrap();
    let req = GenerateRequest { prompt_tokens, max_tokens: Some(12), ..Default::default() };
    let text: String = kit.generate(req).unwrap().map(|r| r.unwrap().text).collect();
    assert!(text.contains("Paris"), "{text}");
}

/// A head count of 0 used to divide by zero when un-permuting Q/K rows.
#[test]
fn a_gguf_head_count_of_zero_names_the_key() {
    let tiny = TinyModel::new(Arch::Llama, 9);
    let dir = tempfile::tempdir().unwrap();
    for key in ["llama.attention.head_count", "llama.attention.head_count_kv"] {
        let meta: Vec<(String, MetaValue)> =
            metadata().into_iter().map(|(k, v)| if k == key { (k, scalar_u32(0)) } else { (k, v) }).collect();
        let path = dir.path().join("zero.gguf");
        write_gguf_with(&tiny, &path, true, &meta, Vec::new());
        let err = try_load(&path, DtypeChoice::F32).err().expect("refused").to_string();
        assert!(err.contains(&format!("GGUF key `{key}` must be at least 1, got 0")), "{err}");
        assert!(err.contains("zero.gguf"), "names the file: {err}");
    }
}
