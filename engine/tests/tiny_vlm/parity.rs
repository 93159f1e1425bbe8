//! The vision parity harness shared by the add-on and generic-fallback suites: greedy decoding
//! from merged prompt embeddings and its comparison with an mlx-vlm golden under the text parity
//! rules (identical until a first divergence, which must be a near-tie; logprobs within the f32
//! bound). Included by the suites that also include `measured`.
#![allow(dead_code)]

use mlx_engine::api::{Array, DynModel, DynVision, Input};
use mlx_engine::cache::KvCache;
use mlx_engine::model::LoadedModel;
use serde_json::Value;

use crate::measured;
use crate::tiny_vlm::{floats, u32s};

/// Text parity's f32 bounds (engine/tests/parity.rs): logprob, near-tie margin.
pub const LOGPROB: f32 = 1.5e-4;
pub const TIE_MARGIN: f32 = 1e-3;
/// Projected features of an image vs mlx-vlm's, `max |diff|` (the bound).
pub const FEATURES: f32 = 1e-4;
/// At least this many agreed greedy steps per prompt.
pub const MIN_STEPS: usize = 16;

/// Greedy decoding from the merged embeddings: tokens and logprobs.
pub fn decode(model: &dyn DynModel, cache: &mut KvCache, merged: &Array, steps: usize) -> Vec<(u32, f32)> {
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

/// The merged prompt embeddings of golden prompt `p` (`ids`, `images` in prompt order).
pub fn merged(m: &LoadedModel, vision: &dyn DynVision, feats: &[Array], p: &Value) -> Array {
    let ids: Vec<i32> = u32s(&p["ids"]).into_iter().map(|t| t as i32).collect();
    let ids = Array::from_slice(&ids, &[1, ids.len() as i32]).unwrap();
    let order: Vec<Array> = u32s(&p["images"]).into_iter().map(|i| feats[i as usize].clone()).collect();
    let text = m.model.embed_tokens(&ids).unwrap();
    vision.merge(&ids, &text, &order, m.model.embeddings_scale().unwrap()).unwrap()
}

/// Compares a run with the golden prompt; returns the agreed steps. `model` names the
/// measured quantity.
pub fn agree(model: &str, what: &str, got: &[(u32, f32)], p: &Value) -> usize {
    let (want, lps, gaps) = (u32s(&p["tokens"]), floats(&p["logprobs"]), floats(&p["top2_gaps"]));
    for (i, &(t, lp)) in got.iter().enumerate() {
        if t != want[i] {
            assert!(gaps[i] <= TIE_MARGIN, "{what}: step {i}: {t} instead of mlx-vlm's {} (gap {})", want[i], gaps[i]);
            return i;
        }
        measured::check(&format!("{model}/logprob"), (lp - lps[i]).abs(), LOGPROB, format!("{what} step {i}"));
    }
    got.len()
}

/// Every golden prompt decoded from its merged embeddings agrees for at least [`MIN_STEPS`].
pub fn check_prompts(model: &str, m: &LoadedModel, vision: &dyn DynVision, feats: &[Array], g: &Value) {
    for (k, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        let emb = merged(m, vision, feats, p);
        let mut cache = KvCache::new(m.model.cache_layout());
        let got = decode(m.model.as_ref(), &mut cache, &emb, u32s(&p["tokens"]).len());
        let n = agree(model, &format!("prompt {k}"), &got, p);
        assert!(n >= MIN_STEPS, "{model} prompt {k}: only {n} steps agree with mlx-vlm");
    }
}

/// `max |a - b|` over two equally long vectors.
pub fn max_diff(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, golden has {}", got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}
