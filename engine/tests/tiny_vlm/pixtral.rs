//! The tiny Pixtral and Mistral 3 VLMs, written by the tests themselves (no Python, no torch):
//! the weights from the same generator as `scripts/goldens/tiny_models.py` (splitmix64 over a
//! counter seeded by the tensor name, uniform, in f64 then rounded to f32), every other file
//! from the golden that `scripts/goldens/record_vlm_pixtral.py` recorded from the script's
//! output. The safetensors bytes must hash to the golden's sha256: the two writers agree bit for
//! bit, so the goldens apply to this folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::root;

const SEED: u64 = 20261126;
const EMBED_STD: f64 = 0.1;
const FINAL_NORM_GAIN: f64 = 4.0;
const DOWN_STD: f64 = 0.3;

pub fn golden(name: &str) -> Value {
    let path = root().join(format!("tests/goldens/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `tiny_models.uniform`: mean `mean`, standard deviation `std`.
fn uniform(name: &str, shape: &[usize], std: f64, mean: f64) -> (Vec<usize>, Vec<f32>) {
    let seed = SEED ^ fnv1a64(name);
    let n: usize = shape.iter().product();
    let values = (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let u = (z >> 11) as f64 * 2f64.powi(-53);
            (mean + std * 3f64.sqrt() * (2.0 * u - 1.0)) as f32
        })
        .collect();
    (shape.to_vec(), values)
}

pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn n(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("config field {key}")) as usize
}

/// `tiny_models.mistral_text_weights`.
fn text_weights(w: &mut Tensors, c: &Value, tag: &str) {
    let (h, i, d) = (n(c, "hidden_size"), n(c, "intermediate_size"), n(c, "head_dim"));
    let (nq, nkv, vocab) = (n(c, "num_attention_heads"), n(c, "num_key_value_heads"), n(c, "vocab_size"));
    let t = "language_model.";
    let mut put = |name: String, seed: String, shape: &[usize], std: f64, mean: f64| {
        w.insert(name, uniform(&seed, shape, std, mean));
    };
    put(format!("{t}model.embed_tokens.weight"), format!("{tag}embed"), &[vocab, h], EMBED_STD, 0.0);
    put(format!("{t}model.norm.weight"), format!("{tag}norm"), &[h], 0.3, FINAL_NORM_GAIN);
    put(format!("{t}lm_head.weight"), format!("{tag}lm_head"), &[vocab, h], EMBED_STD, 0.0);
    for l in 0..n(c, "num_hidden_layers") {
        let p = format!("{t}model.layers.{l}.");
        put(format!("{p}input_layernorm.weight"), format!("{p}in_norm"), &[h], 0.1, 1.0);
        put(format!("{p}post_attention_layernorm.weight"), format!("{p}post_norm"), &[h], 0.1, 1.0);
        for (nm, shape) in [("q", [nq * d, h]), ("k", [nkv * d, h]), ("v", [nkv * d, h]), ("o", [h, nq * d])] {
            put(format!("{p}self_attn.{nm}_proj.weight"), format!("{p}{nm}"), &shape, 0.1, 0.0);
        }
        put(format!("{p}mlp.gate_proj.weight"), format!("{p}gate"), &[i, h], 0.1, 0.0);
        put(format!("{p}mlp.up_proj.weight"), format!("{p}up"), &[i, h], 0.1, 0.0);
        put(format!("{p}mlp.down_proj.weight"), format!("{p}down"), &[h, i], DOWN_STD, 0.0);
    }
}

/// `tiny_models.pixtral_tower_weights`.
fn tower_weights(w: &mut Tensors, v: &Value, tag: &str) {
    let (d, f, p, ch) = (n(v, "hidden_size"), n(v, "intermediate_size"), n(v, "patch_size"), n(v, "num_channels"));
    let t = "vision_tower.";
    let mut put = |name: String, seed: String, shape: &[usize], std: f64, mean: f64| {
        w.insert(name, uniform(&seed, shape, std, mean));
    };
    put(format!("{t}patch_conv.weight"), format!("{tag}patch"), &[d, ch, p, p], 0.05, 0.0);
    put(format!("{t}ln_pre.weight"), format!("{tag}ln_pre"), &[d], 0.1, 1.0);
    for l in 0..n(v, "num_hidden_layers") {
        let q = format!("{t}transformer.layers.{l}.");
        put(format!("{q}attention_norm.weight"), format!("{q}attn_norm"), &[d], 0.1, 1.0);
        put(format!("{q}ffn_norm.weight"), format!("{q}ffn_norm"), &[d], 0.1, 1.0);
        for nm in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            put(format!("{q}attention.{nm}.weight"), format!("{q}{nm}"), &[d, d], 0.2, 0.0);
        }
        put(format!("{q}feed_forward.gate_proj.weight"), format!("{q}gate"), &[f, d], 0.2, 0.0);
        put(format!("{q}feed_forward.up_proj.weight"), format!("{q}up"), &[f, d], 0.2, 0.0);
        put(format!("{q}feed_forward.down_proj.weight"), format!("{q}down"), &[d, f], 0.2, 0.0);
    }
}

/// `tiny_models.pixtral_weights` / `mistral3_weights`, by the config's model type.
fn weights(c: &Value) -> Tensors {
    let (text, vision) = (&c["text_config"], &c["vision_config"]);
    let (h, d) = (n(text, "hidden_size"), n(vision, "hidden_size"));
    let mut w = Tensors::new();
    let m = "multi_modal_projector.";
    let put = |w: &mut Tensors, name: &str, seed: &str, shape: &[usize], std: f64, mean: f64| {
        w.insert(format!("{m}{name}"), uniform(seed, shape, std, mean));
    };
    match c["model_type"].as_str().unwrap() {
        "pixtral" => {
            text_weights(&mut w, text, "px.");
            tower_weights(&mut w, vision, "px.v.");
            put(&mut w, "linear_1.weight", "px.lin1", &[h, d], 0.2, 0.0);
            put(&mut w, "linear_1.bias", "px.lin1b", &[h], 0.05, 0.0);
            put(&mut w, "linear_2.weight", "px.lin2", &[h, h], 0.15, 0.0);
            put(&mut w, "linear_2.bias", "px.lin2b", &[h], 0.05, 0.0);
        }
        "mistral3" => {
            let s = n(c, "spatial_merge_size");
            text_weights(&mut w, text, "m3.");
            tower_weights(&mut w, vision, "m3.v.");
            put(&mut w, "norm.weight", "m3.norm", &[d], 0.1, 1.0);
            put(&mut w, "patch_merger.merging_layer.weight", "m3.merge", &[d, d * s * s], 0.1, 0.0);
            put(&mut w, "linear_1.weight", "m3.lin1", &[h, d], 0.2, 0.0);
            put(&mut w, "linear_2.weight", "m3.lin2", &[h, h], 0.15, 0.0);
        }
        other => panic!("no tiny writer for model type {other}"),
    }
    w
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the golden's checkpoint into `parent/<model>` and checks its weights' sha256.
pub fn write(parent: &Path, g: &Value) -> PathBuf {
    write_with(parent, g, None)
}

/// [`write`] with the tensors changed by `tweak` first (a bad checkpoint; no sha256 check).
pub fn write_tweaked(parent: &Path, g: &Value, tweak: &dyn Fn(&mut Tensors)) -> PathBuf {
    write_with(parent, g, Some(tweak))
}

fn write_with(parent: &Path, g: &Value, tweak: Option<&dyn Fn(&mut Tensors)>) -> PathBuf {
    let dir = parent.join(g["model"].as_str().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in g["files"].as_object().unwrap() {
        std::fs::write(dir.join(name), text.as_str().unwrap()).unwrap();
    }
    let config: Value = serde_json::from_str(g["files"]["config.json"].as_str().unwrap()).unwrap();
    let mut tensors = weights(&config);
    if let Some(tweak) = tweak {
        tweak(&mut tensors);
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        bytes.iter().map(|(k, s, b)| (k.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    assert!(
        tweak.is_some() || hex(&Sha256::digest(&out)) == g["safetensors_sha256"].as_str().unwrap(),
        "the Rust-written {} is not the checkpoint the goldens were recorded on (tiny_models.py changed?)",
        g["model"]
    );
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    dir
}

/// Golden image `i` (rows of `[r, g, b]`), any size.
pub fn image(g: &Value, i: usize) -> image::RgbImage {
    let rows = g["images"][i].as_array().unwrap();
    let (h, w) = (rows.len() as u32, rows[0].as_array().unwrap().len() as u32);
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().flat_map(|px| px.as_array().unwrap().iter()))
        .map(|c| c.as_u64().unwrap() as u8)
        .collect();
    image::RgbImage::from_raw(w, h, bytes).unwrap()
}
