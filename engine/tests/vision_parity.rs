//! The gemma3 vision add-on against mlx-vlm, on the tiny random Gemma 3 VLM that
//! `scripts/goldens/tiny_models.py` writes (goldens: `make goldens-vlm`,
//! `scripts/goldens/record_vlm.py`). In f32 on the CPU: each image's projected features, and
//! greedy decoding from the merged prompt embeddings for two prompts (one with two images), token
//! for token, under the text parity rules (identical until a first divergence, which must be a
//! near-tie; logprobs within the f32 bound).

mod measured;
mod tiny_vlm;

use std::path::Path;

use mlx_engine::api::{Array, DynModel, DynVision, Input};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::model::LoadedModel;
use mlx_engine::vision::PreprocessorConfig;
use serde_json::Value;
use tiny_vlm::{floats, golden, image_of, load, tiny_vlm, u32s};

/// Text parity's f32 bounds (engine/tests/parity.rs): logprob, near-tie margin.
const LOGPROB: f32 = 1.5e-4;
const TIE_MARGIN: f32 = 1e-3;
/// Projected features of an image vs mlx-vlm's, `max |diff|` (the bound).
const FEATURES: f32 = 1e-4;
/// At least this many agreed greedy steps per prompt.
const MIN_STEPS: usize = 16;

/// Each golden image through the checkpoint's preprocessing and the add-on's `encode`.
fn features(dir: &Path, vision: &dyn DynVision, g: &Value) -> Vec<Array> {
    let pre = PreprocessorConfig::load(dir).unwrap().expect("preprocessor_config.json");
    g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rows| {
            let img = image_of(rows);
            vision.encode(&pre.preprocess(&img).unwrap().to_array().unwrap()).unwrap()
        })
        .collect()
}

/// Greedy decoding from the merged embeddings of `ids`: tokens, logprobs, top-2 gaps.
fn decode(model: &dyn DynModel, cache: &mut KvCache, merged: &Array, steps: usize) -> Vec<(u32, f32)> {
    let last = |logits: Array| {
        let l = logits.dim(1).unwrap();
        let v = logits.slice_axis(1, l - 1, l).unwrap().reshape(&[-1]).unwrap().log_softmax(-1).unwrap();
        v.to_vec_f32().unwrap()
    };
    let mut lp = last(model.forward(Input::Embeddings(merged), cache).unwrap());
    let mut out = Vec::new();
    for _ in 0..steps {
        let (t, &p) = lp.iter().enumerate().fold((0, &f32::NEG_INFINITY), |b, (i, x)| if x > b.1 { (i, x) } else { b });
        out.push((t as u32, p));
        let ids = Array::from_slice(&[t as i32], &[1, 1]).unwrap();
        lp = last(model.forward(Input::Tokens(&ids), cache).unwrap());
    }
    out
}

/// The merged prompt embeddings of golden prompt `p`.
fn merged(m: &LoadedModel, vision: &dyn DynVision, feats: &[Array], p: &Value) -> Array {
    let ids: Vec<i32> = u32s(&p["ids"]).into_iter().map(|t| t as i32).collect();
    let ids = Array::from_slice(&ids, &[1, ids.len() as i32]).unwrap();
    let order: Vec<Array> = u32s(&p["images"]).into_iter().map(|i| feats[i as usize].clone()).collect();
    let text = m.model.embed_tokens(&ids).unwrap();
    vision.merge(&ids, &text, &order, m.model.embeddings_scale().unwrap()).unwrap()
}

/// Compares a run with the golden prompt under the text parity rules; returns the agreed steps.
fn agree(what: &str, got: &[(u32, f32)], p: &Value) -> usize {
    let (want, lps, gaps) = (u32s(&p["tokens"]), floats(&p["logprobs"]), floats(&p["top2_gaps"]));
    for (i, &(t, lp)) in got.iter().enumerate() {
        if t != want[i] {
            assert!(gaps[i] <= TIE_MARGIN, "{what}: step {i}: {t} instead of mlx-vlm's {} (gap {})", want[i], gaps[i]);
            return i;
        }
        measured::check("tiny-gemma3-vlm/logprob", (lp - lps[i]).abs(), LOGPROB, format!("{what} step {i}"));
    }
    got.len()
}

#[test]
fn tiny_gemma3_vlm_matches_mlx_vlm_features_and_greedy_tokens() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let m = load(&dir);
    let vision = m.vision.as_ref().expect("a vision add-on").as_ref().unwrap();
    let feats = features(&dir, vision.addon.as_ref(), &g);
    for (i, (f, want)) in feats.iter().zip(g["features"].as_array().unwrap()).enumerate() {
        let want = floats(want);
        let got = f.to_vec_f32().unwrap();
        assert_eq!(got.len(), want.len(), "image {i}: features {:?}", f.shape());
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        measured::check("tiny-gemma3-vlm/features", d, FEATURES, format!("image {i}"));
    }
    for (k, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        let emb = merged(&m, vision.addon.as_ref(), &feats, p);
        let mut cache = KvCache::new(m.model.cache_layout());
        let got = decode(m.model.as_ref(), &mut cache, &emb, u32s(&p["tokens"]).len());
        let n = agree(&format!("prompt {k}"), &got, p);
        assert!(n >= MIN_STEPS, "prompt {k}: only {n} steps agree with mlx-vlm");
    }
}

/// KV-cache quantization and the rotating cache with images: mlx-engine refuses both for vision
/// models; here they run, within the text path's tolerances of the dense result.
#[test]
fn a_vision_prompt_runs_with_a_quantized_or_rotating_kv_cache() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let m = load(&dir);
    let vision = m.vision.as_ref().unwrap().as_ref().unwrap();
    let feats = features(&dir, vision.addon.as_ref(), &g);
    let p = &g["prompts"][1];
    let emb = merged(&m, vision.addon.as_ref(), &feats, p);
    let dense = decode(m.model.as_ref(), &mut KvCache::new(m.model.cache_layout()), &emb, 8);
    for (what, config) in [
        ("kv8", CacheConfig { kv_bits: Some(8), kv_group_size: 32, ..Default::default() }),
        ("rotating 64", CacheConfig { max_kv_size: Some(64), ..Default::default() }),
    ] {
        let mut cache = KvCache::with_config(m.model.cache_layout(), &config).unwrap();
        let got = decode(m.model.as_ref(), &mut cache, &emb, 8);
        if what == "kv8" {
            assert!(cache.is_quantized(), "the cache quantized");
        }
        // The 8-bit bound is the text path's kv8 logprob bound (parity.rs, KV8). The sliding
        // layers (window 8) rotate through the image spans in every run; `max_kv_size` bounds
        // the full layers too, and one larger than prompt + decode must change nothing.
        let bound = if what == "kv8" { 0.3 } else { measured::SAME_COMPUTATION };
        for (i, ((t, lp), (td, lpd))) in got.iter().zip(&dense).enumerate() {
            assert_eq!(t, td, "{what}: step {i}");
            measured::check(
                &format!("tiny-gemma3-vlm/{what}-vs-dense-logprob"),
                (lp - lpd).abs(),
                bound,
                format!("{what} step {i}"),
            );
        }
    }
}
