//! The tiny VLMs of `scripts/goldens/tiny_models.py` and their mlx-vlm goldens, for the vision
//! suites: the llava checkpoints written in Rust ([`llava`], [`tiny_model`]), the Pixtral and
//! Mistral 3 ones also written from Rust ([`pixtral`]), and the Gemma 3 one written by the script
//! into a folder (checked against the golden's sha256), with the script's word-level tokenizer
//! (`<i>` is token `i`; the image tokens under their Gemma 3 names) and chat template.
#![allow(dead_code)]

pub mod llava;
pub mod pixtral;

use std::path::{Path, PathBuf};

use mlx_engine::model::{load_with, DtypeChoice, LoadedModel};
use mlx_engine::plugin_host::{HostOptions, PluginHost};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn golden() -> Value {
    let path = root().join("tests/goldens/tiny-gemma3-vlm.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|x| x.as_array().cloned().unwrap_or_else(|| vec![x.clone()]))
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The tiny VLM, written by the project script into a folder of its own, checked to be the
/// checkpoint the goldens were recorded on.
pub fn tiny_vlm(g: &Value) -> tempfile::TempDir {
    let tmp = tempfile::TempDir::new().unwrap();
    let status = std::process::Command::new(root().join(".venv/bin/python"))
        .arg(root().join("scripts/goldens/tiny_models.py"))
        .arg(tmp.path())
        .stdout(std::process::Stdio::null())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "could not run scripts/goldens/tiny_models.py (run `make setup`)");
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let sha = hex(&Sha256::digest(std::fs::read(dir.join("model.safetensors")).unwrap()));
    assert_eq!(
        sha,
        g["safetensors_sha256"].as_str().unwrap(),
        "the tiny VLM is not the one the goldens were recorded on"
    );
    assert!(dir.join("tokenizer.json").exists() && dir.join("tokenizer_config.json").exists());
    tmp
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn load(dir: &Path) -> LoadedModel {
    let host = PluginHost::new(&HostOptions::standard(vec![], None)).unwrap();
    load_with(dir, &host, DtypeChoice::F32, mlx_engine::api::runtime::Device::Cpu).unwrap()
}

/// A golden image (rows of `[r, g, b]`).
pub fn image_of(rows: &Value) -> image::RgbImage {
    let bytes: Vec<u8> = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().flat_map(|px| u32s(px).into_iter().map(|c| c as u8)))
        .collect();
    image::RgbImage::from_raw(32, 32, bytes).unwrap()
}

/// The golden of one tiny llava checkpoint (`tests/goldens/<name>.json`, written by
/// `scripts/goldens/record_vlm_llava.py`).
pub fn llava_golden(name: &str) -> Value {
    let path = root().join(format!("tests/goldens/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A tiny llava checkpoint of golden `g` written by the tests in Rust ([`llava`]), checked to be
/// byte for byte the one `tiny_models.py` wrote when the golden was recorded. Returns the
/// temporary folder and the model's path in it.
pub fn tiny_model(name: &str, g: &Value) -> (tempfile::TempDir, PathBuf) {
    assert_eq!(g["model"], name);
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = llava::write(g, tmp.path());
    let sha = hex(&Sha256::digest(std::fs::read(dir.join("model.safetensors")).unwrap()));
    assert_eq!(sha, g["safetensors_sha256"].as_str().unwrap(), "{name}: the Rust writer and tiny_models.py disagree");
    (tmp, dir)
}

/// A golden image of any size (rows of `[r, g, b]`).
pub fn image_rows(rows: &Value) -> image::RgbImage {
    let rows = rows.as_array().unwrap();
    let (h, w) = (rows.len() as u32, rows[0].as_array().unwrap().len() as u32);
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().flat_map(|px| u32s(px).into_iter().map(|c| c as u8)))
        .collect();
    image::RgbImage::from_raw(w, h, bytes).unwrap()
}

/// Nested JSON numbers, flattened in order.
pub fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}
