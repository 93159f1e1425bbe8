//! The tiny llava checkpoints written by the tests themselves, in Rust, without Python or torch:
//! the text files (config.json, tokenizer, image-processor settings) as recorded in the golden
//! by `scripts/goldens/record_vlm_llava.py`, and the weights by the recipe of
//! `tiny_models.py::llava_weights` with its `portable_normal` generator, reproduced bit for bit
//! here. The caller checks the written model.safetensors against the golden's sha256, so a
//! drift between the two writers fails loudly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::Value;

/// `tiny_models.py`'s SEED.
const SEED: u64 = 20261126;
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// CRC-32 (IEEE, as Python's `zlib.crc32`), bitwise: the tensor names are short.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `tiny_models.py::portable_normal`: splitmix64 from `(SEED << 32) | crc32(name)`, 12 uniforms
/// summed in order per value, `(sum - 6) * std + mean` in f64, rounded to f32.
fn portable_normal(name: &str, count: usize, std: f64, mean: f64) -> Vec<f32> {
    let seed = (SEED << 32) | u64::from(crc32(name.as_bytes()));
    let mut i: u64 = 0;
    let mut uniform = || {
        i += 1;
        let mut z = seed.wrapping_add(i.wrapping_mul(MIX));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * 2f64.powi(-53)
    };
    (0..count)
        .map(|_| {
            let mut acc = uniform();
            for _ in 1..12 {
                acc += uniform();
            }
            ((acc - 6.0) * std + mean) as f32
        })
        .collect()
}

/// The checkpoint's tensors: name -> (shape, values).
type Tensors = Vec<(String, (Vec<usize>, Vec<f32>))>;

fn put(w: &mut Tensors, name: String, seed: &str, shape: &[usize], std: f64, mean: f64) {
    let n = shape.iter().product();
    w.push((name, (shape.to_vec(), portable_normal(seed, n, std, mean))));
}

fn int(c: &Value, key: &str) -> usize {
    c[key].as_u64().unwrap_or_else(|| panic!("`{key}` in {c}")) as usize
}

/// `llama_weights` (+ `qwen2_weights`' q/k/v biases) under `language_model.`.
fn text_weights(w: &mut Tensors, c: &Value) {
    let (h, i, d) = (int(c, "hidden_size"), int(c, "intermediate_size"), int(c, "head_dim"));
    let (nq, nkv, v) = (int(c, "num_attention_heads"), int(c, "num_key_value_heads"), int(c, "vocab_size"));
    let lm = |n: &str| format!("language_model.{n}");
    put(w, lm("model.embed_tokens.weight"), "embed", &[v, h], 0.1, 0.0);
    put(w, lm("model.norm.weight"), "norm", &[h], 0.3, 4.0);
    for l in 0..int(c, "num_hidden_layers") {
        let p = format!("model.layers.{l}.");
        let mut layer = |name: &str, seed: &str, shape: &[usize], std: f64, mean: f64| {
            put(w, lm(&format!("{p}{name}")), &format!("{p}{seed}"), shape, std, mean)
        };
        layer("input_layernorm.weight", "in_norm", &[h], 0.1, 1.0);
        layer("post_attention_layernorm.weight", "post_norm", &[h], 0.1, 1.0);
        layer("self_attn.q_proj.weight", "q", &[nq * d, h], 0.1, 0.0);
        layer("self_attn.k_proj.weight", "k", &[nkv * d, h], 0.1, 0.0);
        layer("self_attn.v_proj.weight", "v", &[nkv * d, h], 0.1, 0.0);
        layer("self_attn.o_proj.weight", "o", &[h, nq * d], 0.1, 0.0);
        layer("mlp.gate_proj.weight", "gate", &[i, h], 0.1, 0.0);
        layer("mlp.up_proj.weight", "up", &[i, h], 0.1, 0.0);
        layer("mlp.down_proj.weight", "down", &[h, i], 0.3, 0.0);
    }
    if c["model_type"] == "qwen2" {
        for l in 0..int(c, "num_hidden_layers") {
            let p = format!("model.layers.{l}.self_attn.");
            for (name, rows) in [("q", nq * d), ("k", nkv * d), ("v", nkv * d)] {
                put(w, lm(&format!("{p}{name}_proj.bias")), &format!("q2.{p}{name}_b"), &[rows], 0.1, 0.0);
            }
        }
    }
}

/// `tower_weights`: a CLIP or SigLIP tower under `vision_tower.vision_model.`.
fn tower_weights(w: &mut Tensors, v: &Value, tag: &str) {
    let clip = v["model_type"] == "clip_vision_model";
    let (d, f, p, ch) =
        (int(v, "hidden_size"), int(v, "intermediate_size"), int(v, "patch_size"), int(v, "num_channels"));
    let n = (int(v, "image_size") / p).pow(2) + usize::from(clip);
    let t = "vision_tower.vision_model.";
    let at = |w: &mut Tensors, name: &str, seed: &str, shape: &[usize], std: f64, mean: f64| {
        put(w, format!("{t}{name}"), &format!("{tag}{seed}"), shape, std, mean)
    };
    at(w, "embeddings.patch_embedding.weight", "patch", &[d, ch, p, p], 0.05, 0.0);
    at(w, "embeddings.position_embedding.weight", "pos", &[n, d], 0.3, 0.0);
    if clip {
        at(w, "embeddings.class_embedding", "cls", &[d], 0.5, 0.0);
        at(w, "pre_layrnorm.weight", "pre", &[d], 0.1, 1.0);
        at(w, "pre_layrnorm.bias", "preb", &[d], 0.1, 0.0);
    } else {
        at(w, "embeddings.patch_embedding.bias", "patch_b", &[d], 0.1, 0.0);
    }
    for l in 0..int(v, "num_hidden_layers") {
        let q = format!("encoder.layers.{l}.");
        // The Python seeds carry the full name (`{tag}{t}encoder.layers.{l}.{part}`).
        let layer = |w: &mut Tensors, name: &str, seed: &str, shape: &[usize], std: f64, mean: f64| {
            put(w, format!("{t}{q}{name}"), &format!("{tag}{t}{q}{seed}"), shape, std, mean)
        };
        for nm in ["layer_norm1", "layer_norm2"] {
            layer(w, &format!("{nm}.weight"), nm, &[d], 0.1, 1.0);
            layer(w, &format!("{nm}.bias"), &format!("{nm}b"), &[d], 0.1, 0.0);
        }
        for nm in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            layer(w, &format!("self_attn.{nm}.weight"), nm, &[d, d], 0.2, 0.0);
            layer(w, &format!("self_attn.{nm}.bias"), &format!("{nm}b"), &[d], 0.05, 0.0);
        }
        layer(w, "mlp.fc1.weight", "fc1", &[f, d], 0.2, 0.0);
        layer(w, "mlp.fc1.bias", "fc1b", &[f], 0.05, 0.0);
        layer(w, "mlp.fc2.weight", "fc2", &[d, f], 0.2, 0.0);
        layer(w, "mlp.fc2.bias", "fc2b", &[d], 0.05, 0.0);
    }
    at(w, "post_layernorm.weight", "post", &[d], 0.1, 1.0);
    at(w, "post_layernorm.bias", "postb", &[d], 0.1, 0.0);
}

/// `llava_weights` for a llava `config.json`.
fn llava_weights(c: &Value) -> Tensors {
    let text = &c["text_config"];
    let tag = if text["model_type"] == "llama" { "l." } else { "lq." };
    let mut w = Tensors::new();
    text_weights(&mut w, text);
    tower_weights(&mut w, &c["vision_config"], tag);
    let (dv, dt) = (int(&c["vision_config"], "hidden_size"), int(text, "hidden_size"));
    let mm = |n: &str| format!("multi_modal_projector.{n}");
    put(&mut w, mm("linear_1.weight"), &format!("{tag}mm1"), &[dt, dv], 0.2, 0.0);
    put(&mut w, mm("linear_1.bias"), &format!("{tag}mm1b"), &[dt], 0.05, 0.0);
    put(&mut w, mm("linear_2.weight"), &format!("{tag}mm2"), &[dt, dt], 0.1, 0.0);
    put(&mut w, mm("linear_2.bias"), &format!("{tag}mm2b"), &[dt], 0.05, 0.0);
    w
}

/// Writes the checkpoint of golden `g` into `dir/<name>` and returns that folder.
pub fn write(g: &Value, dir: &Path) -> PathBuf {
    let out = dir.join(g["model"].as_str().unwrap());
    std::fs::create_dir_all(&out).unwrap();
    let files = g["files"].as_object().expect("the golden's `files`");
    for (file, text) in files {
        std::fs::write(out.join(file), text.as_str().unwrap()).unwrap();
    }
    let config: Value = serde_json::from_str(files["config.json"].as_str().unwrap()).unwrap();
    let tensors = llava_weights(&config);
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, (shape, values))| (name, values.iter().flat_map(|x| x.to_le_bytes()).collect(), shape))
        .collect();
    let views = bytes.iter().map(|(name, data, shape)| {
        (name.clone(), TensorView::new(StDtype::F32, shape.clone(), data).expect("shape matches data"))
    });
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = safetensors::tensor::serialize(views, Some(meta)).unwrap();
    std::fs::write(out.join("model.safetensors"), file).unwrap();
    out
}
