//! The gemma3 vision add-on against mlx-vlm, on the tiny random Gemma 3 VLM that
//! `scripts/goldens/tiny_models.py` writes (goldens: `make goldens-vlm`,
//! `scripts/goldens/record_vlm.py`). In f32 on the CPU: each image's projected features, and
//! greedy decoding from the merged prompt embeddings for two prompts (one with two images), token
//! for token, under the text parity rules (identical until a first divergence, which must be a
//! near-tie; logprobs within the f32 bound).

mod measured;
mod tiny_vlm;
#[path = "tiny_vlm/parity.rs"]
mod vlm_parity;

use std::path::Path;

use mlx_engine::api::{Array, DynVision};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::vision::PreprocessorConfig;
use serde_json::Value;
use tiny_vlm::{floats, golden, image_of, load, tiny_vlm};
use vlm_parity::{check_prompts, decode, merged, FEATURES};

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
    check_prompts("tiny-gemma3-vlm", &m, vision.addon.as_ref(), &feats, &g);
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
