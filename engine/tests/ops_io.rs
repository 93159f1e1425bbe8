//! Weight files: safetensors round trips with metadata and several dtypes, load errors that
//! name the path, and a hand-written GGUF v3 file read back through MLX's loader.

mod common;
mod gguf_writer;

use std::path::Path;

use common::*;
use gguf_writer::{GgufWriter, ALIGN, GGML_TYPE_F16, GGML_TYPE_F32};
use mlx_engine::api::io::{load_gguf, load_safetensors, save_safetensors, Loaded, MetaValue};
use mlx_engine::api::{Array, Dtype, Error};

fn find<'a>(l: &'a Loaded, name: &str) -> &'a Array {
    &l.arrays.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
}

fn meta<'a>(l: &'a Loaded, key: &str) -> &'a MetaValue {
    &l.metadata.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no metadata {key}")).1
}

fn sample_arrays() -> Vec<(&'static str, Array)> {
    init();
    let bf16_bits: [u16; 5] = [0x3F80, 0xC000, 0x7F80, 0x0001, 0x3DCD];
    let f16_bits: [u16; 4] = [0x3C00, 0xC000, 0x7BFF, 0x0001];
    let to_bytes = |b: &[u16]| b.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    vec![
        ("model.embed.weight", arr_f32(&rand_vec(1, 6), &[2, 3])),
        ("model.norm.weight", Array::from_bytes(&to_bytes(&bf16_bits), &[5], Dtype::BF16).unwrap()),
        ("half", Array::from_bytes(&to_bytes(&f16_bits), &[2, 2], Dtype::F16).unwrap()),
        ("ids", arr_i32(&[-7, 0, 2_000_000_000], &[3])),
        ("packed", arr_u32(&[0xDEAD_BEEF, 1], &[1, 2])),
        ("bytes", Array::from_slice(&[0u8, 1, 254, 255, 7], &[5]).unwrap()),
        ("flags", arr_bool(&[true, false, true], &[3])),
        ("big", Array::from_slice(&[i64::MIN, 5], &[2]).unwrap()),
        ("scalar", Array::scalar(0.25, Dtype::F32).unwrap()),
    ]
}

#[test]
fn safetensors_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.safetensors");
    let arrays = sample_arrays();
    let refs: Vec<(&str, &Array)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    save_safetensors(&path, &refs, &[("format", "mlx"), ("note", "héllo ✓ \"quoted\"")]).unwrap();
    assert!(path.metadata().unwrap().len() > 8);

    let loaded = load_safetensors(&path).unwrap();
    let mut names: Vec<&str> = arrays.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(loaded.arrays.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names, "tensors sorted by name");
    for (name, orig) in &arrays {
        let got = find(&loaded, name);
        assert_eq!(got.dtype(), orig.dtype(), "{name}: dtype");
        assert_eq!(got.shape(), orig.shape(), "{name}: shape");
        assert_eq!(got.to_bytes().unwrap(), orig.to_bytes().unwrap(), "{name}: bytes");
    }
    // Metadata, sorted by key.
    let keys: Vec<&str> = loaded.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["format", "note"]);
    match meta(&loaded, "note") {
        MetaValue::String(s) => assert_eq!(s, "héllo ✓ \"quoted\""),
        other => panic!("note: {other:?}"),
    }
    match meta(&loaded, "format") {
        MetaValue::String(s) => assert_eq!(s, "mlx"),
        other => panic!("format: {other:?}"),
    }
    // Loaded arrays are ordinary arrays.
    let w = find(&loaded, "model.embed.weight");
    let doubled = (w * 2.0).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(doubled, rand_vec(1, 6).iter().map(|v| v * 2.0).collect::<Vec<_>>());
}

#[test]
fn safetensors_without_metadata_and_strided_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    // A transposed view is written in its logical order.
    let mv: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let m = arr_f32(&mv, &[2, 3]);
    let t = m.t().unwrap();
    save_safetensors(&path, &[("t", &t)], &[]).unwrap();
    let loaded = load_safetensors(&path).unwrap();
    assert!(loaded.metadata.is_empty(), "no metadata was written: {:?}", loaded.metadata);
    let got = find(&loaded, "t");
    assert_eq!(got.shape(), vec![3, 2]);
    assert_eq!(got.to_vec::<f32>().unwrap(), transpose2(&mv, 2, 3));
}

fn assert_err_names_path(r: mlx_engine::api::Result<Loaded>, path: &Path, what: &str) {
    match r {
        Ok(l) => panic!("{what}: expected an error, loaded {} arrays", l.arrays.len()),
        Err(e) => {
            assert!(matches!(e, Error::Mlx(_)), "{what}: {e:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "{what}: error {msg:?} does not name {}",
                path.display()
            );
        }
    }
}

#[test]
fn load_errors_name_the_path() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    assert_err_names_path(load_safetensors(&missing), &missing, "missing safetensors");
    let missing_gguf = dir.path().join("missing.gguf");
    assert_err_names_path(load_gguf(&missing_gguf), &missing_gguf, "missing gguf");

    // Not a safetensors file at all.
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file, just text").unwrap();
    assert_err_names_path(load_safetensors(&garbage), &garbage, "garbage safetensors");

    // Shorter than the 8-byte header length.
    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, [1u8, 2, 3]).unwrap();
    assert_err_names_path(load_safetensors(&tiny), &tiny, "3-byte safetensors");

    // A valid file cut inside its JSON header.
    let good = dir.path().join("good.safetensors");
    let arrays = sample_arrays();
    let refs: Vec<(&str, &Array)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    save_safetensors(&good, &refs, &[("k", "v")]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = dir.path().join("cut_header.safetensors");
    std::fs::write(&cut, &bytes[..8 + header_len / 2]).unwrap();
    assert_err_names_path(load_safetensors(&cut), &cut, "safetensors cut in its header");

    // Not a GGUF file.
    let bad_gguf = dir.path().join("bad.gguf");
    std::fs::write(&bad_gguf, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert_err_names_path(load_gguf(&bad_gguf), &bad_gguf, "truncated gguf");
    let not_gguf = dir.path().join("text.gguf");
    std::fs::write(&not_gguf, b"hello world, definitely not gguf at all......").unwrap();
    assert_err_names_path(load_gguf(&not_gguf), &not_gguf, "text as gguf");
}

#[test]
fn safetensors_with_truncated_data_is_an_error() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let w = arr_f32(&rand_vec(2, 4096), &[64, 64]);
    save_safetensors(&good, &[("w", &w)], &[]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut_data.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    // MLX checks the data offsets against the file size when loading (reads are lazy, so this
    // is the only place a short file can be caught before garbage is read).
    match load_safetensors(&cut) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&cut.display().to_string()), "{msg}");
            assert!(msg.contains("[load_safetensors]"), "MLX's own message is kept: {msg}");
        }
        Ok(l) => panic!("a safetensors file with truncated data loaded {} arrays", l.arrays.len()),
    }
}

// --- a tiny GGUF v3 file, written by hand --------------------------------------------------

const TOKENS: [&str; 4] = ["<s>", "hello", "wörld", ""];

/// Writes the file and returns the tensor values (a: f32 [2, 3], b: f16 bits [4]).
fn write_gguf(path: &Path) -> (Vec<f32>, Vec<u16>) {
    let a: Vec<f32> = vec![1.0, -2.5, 3.25, 0.0, 1e-3, -7.0];
    let b_bits: Vec<u16> = vec![0x3C00, 0xC000, 0x3800, 0x7BFF]; // 1, -2, 0.5, 65504
    let mut w = GgufWriter::default();
    w.buf.extend_from_slice(b"GGUF");
    w.u32(3); // version
    w.u64(2); // tensors
    w.u64(7); // metadata entries
    w.kv_string("general.architecture", "llama");
    w.kv_string("general.name", "tiny test model");
    w.kv_u32("general.alignment", ALIGN as u32);
    w.kv_u32("llama.context_length", 2048);
    w.kv_f32("llama.rope.freq_base", 500000.0);
    w.kv_strings("tokenizer.ggml.tokens", &TOKENS);
    w.kv_f32s("tokenizer.ggml.scores", &[0.0, -1.5, -2.25, 4.0]);
    // a: rows of 3 (ne = [3, 2]) at offset 0 (24 bytes); b at the next aligned offset, 32.
    w.tensor_info("blk.0.a.weight", &[3, 2], GGML_TYPE_F32, 0);
    w.tensor_info("blk.0.b.weight", &[4], GGML_TYPE_F16, 32);
    w.pad();
    let data_start = w.buf.len();
    for x in &a {
        w.buf.extend_from_slice(&x.to_le_bytes());
    }
    w.pad();
    assert_eq!(w.buf.len() - data_start, 32);
    for x in &b_bits {
        w.buf.extend_from_slice(&x.to_le_bytes());
    }
    w.pad();
    std::fs::write(path, &w.buf).unwrap();
    (a, b_bits)
}

#[test]
fn gguf_tensors_and_metadata() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let (a, b_bits) = write_gguf(&path);
    let l = load_gguf(&path).unwrap();

    let names: Vec<&str> = l.arrays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["blk.0.a.weight", "blk.0.b.weight"]);
    let ta = find(&l, "blk.0.a.weight");
    assert_eq!(ta.dtype(), Dtype::F32);
    assert_eq!(ta.shape(), vec![2, 3], "GGML dims are reversed into a row-major shape");
    assert_eq!(ta.to_vec::<f32>().unwrap(), a);
    let tb = find(&l, "blk.0.b.weight");
    assert_eq!(tb.dtype(), Dtype::F16);
    assert_eq!(tb.shape(), vec![4]);
    assert_eq!(tb.to_bytes().unwrap(), b_bits.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
    assert_eq!(read_f32(tb), vec![1.0, -2.0, 0.5, 65504.0]);

    let keys: Vec<&str> = l.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "metadata sorted by key");
    for k in [
        "general.architecture",
        "general.name",
        "llama.context_length",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    match meta(&l, "general.architecture") {
        MetaValue::String(s) => assert_eq!(s, "llama"),
        other => panic!("architecture: {other:?}"),
    }
    match meta(&l, "general.name") {
        MetaValue::String(s) => assert_eq!(s, "tiny test model"),
        other => panic!("name: {other:?}"),
    }
    match meta(&l, "tokenizer.ggml.tokens") {
        MetaValue::Strings(v) => assert_eq!(v, &TOKENS.map(String::from).to_vec()),
        other => panic!("tokens: {other:?}"),
    }
    match meta(&l, "llama.context_length") {
        MetaValue::Array(x) => {
            assert_eq!(x.size(), 1);
            assert_eq!(x.dtype(), Dtype::U32);
            assert_eq!(x.item::<u32>().unwrap(), 2048);
        }
        other => panic!("context_length: {other:?}"),
    }
    match meta(&l, "llama.rope.freq_base") {
        MetaValue::Array(x) => assert_eq!(x.item::<f32>().unwrap(), 500000.0),
        other => panic!("freq_base: {other:?}"),
    }
    match meta(&l, "tokenizer.ggml.scores") {
        MetaValue::Array(x) => {
            assert_eq!(x.shape(), vec![4]);
            assert_eq!(x.to_vec_f32().unwrap(), vec![0.0, -1.5, -2.25, 4.0]);
        }
        other => panic!("scores: {other:?}"),
    }
}
