//! Hostile weight files: GGUF headers that used to crash MLX's reader, safetensors headers it
//! misread, and indexes that point outside the model folder. Each row is the input, the exit
//! code of the CLI (1: an error, never a signal) and the message fragments naming the file and
//! what is wrong.

mod common_models;
mod gguf_writer;
mod tokenizer_fixtures;

use std::path::Path;

use common_models::*;
use gguf_writer::*;

/// `mlx-engine ARGS...`: exit code (-1 for a signal), stderr.
fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A GGUF prefix: magic, version, counts.
fn head(version: u32, tensors: u64, kvs: u64) -> GgufWriter {
    let mut w = GgufWriter::default();
    w.buf.extend_from_slice(b"GGUF");
    w.u32(version);
    w.u64(tensors);
    w.u64(kvs);
    w
}

/// One metadata entry and one tensor info (`ne`, `ty`, `offset`), padded, then `data` bytes.
fn one_tensor(ne: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut w = head(3, 1, 1);
    w.kv_string("general.architecture", "llama");
    w.tensor_info("token_embd.weight", ne, ty, offset);
    w.pad();
    w.buf.resize(w.buf.len() + data, 0);
    w.buf
}

/// Pseudo-random bytes (an LCG: no dependency, the same file on every run).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[test]
fn malformed_gguf_files_are_refused_before_mlx_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = b"GGUF".to_vec();
    random.extend(noise(100 << 10));
    let huge_key = {
        let mut w = head(3, 0, 1);
        w.u64(1 << 62);
        w.buf.resize(w.buf.len() + 64, b'k');
        w.buf
    };
    let mut truncated = one_tensor(&[64, 8], GGML_TYPE_F32, 0, 64 * 8 * 4);
    truncated.truncate(truncated.len() - 100);
    let dims = |n: u32| {
        let mut w = head(3, 1, 0);
        w.str("t");
        w.u32(n);
        w.buf.resize(w.buf.len() + 64, 0);
        w.buf
    };
    // (what, bytes, fragments the message must hold)
    let rows: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("random bytes after the magic", random, vec!["GGUF version"]),
        ("tensor count 2^62", head(3, 1 << 62, 0).buf, vec!["tensor count 4611686018427387904"]),
        ("metadata count 2^62", head(3, 0, 1 << 62).buf, vec!["metadata count 4611686018427387904"]),
        ("a key length of 2^62", huge_key, vec!["truncated", "metadata key 0", "needs 4611686018427387904 bytes"]),
        ("n_dims 0", dims(0), vec!["tensor `t` has 0 dimensions"]),
        ("n_dims 5", dims(5), vec!["tensor `t` has 5 dimensions"]),
        ("n_dims 2^31", dims(1 << 31), vec!["tensor `t` has 2147483648 dimensions"]),
        ("version 1", head(1, 0, 0).buf, vec!["GGUF version 1 is not supported"]),
        (
            "a zero dimension",
            one_tensor(&[64, 0], GGML_TYPE_F32, 0, 0),
            vec!["`token_embd.weight` has a dimension of 0"],
        ),
        (
            "a misaligned offset",
            one_tensor(&[8], GGML_TYPE_F32, 4, 64),
            vec!["`token_embd.weight` has offset 4", "alignment 32"],
        ),
        ("data past the end", truncated, vec!["`token_embd.weight`", "ends past the end of the file"]),
        ("a K-quant", one_tensor(&[256], 12, 0, 144), vec!["`token_embd.weight` has type Q4_K", "safetensors"]),
        ("an unknown type", one_tensor(&[8], 99, 0, 64), vec!["`token_embd.weight` has unknown type id 99"]),
        ("not GGUF at all", b"PK\x03\x04zip".to_vec(), vec!["not a GGUF file"]),
    ];
    for (what, bytes, fragments) in rows {
        let file = dir.path().join("bad.gguf");
        std::fs::write(&file, &bytes).unwrap();
        let (code, err) = cli(&["forward", "--model", file.to_str().unwrap(), "--tokens", "1"]);
        assert_eq!(code, 1, "{what}: exit {code}, {err}");
        assert!(err.contains(&file.display().to_string()), "{what}: the message names the file: {err}");
        for f in fragments {
            assert!(err.contains(f), "{what}: `{f}` in {err}");
        }
        // The path appears once: the reason does not repeat it.
        assert_eq!(err.matches("bad.gguf").count(), 1, "{what}: {err}");
    }
}

#[test]
fn a_valid_gguf_header_passes_the_check() {
    let bytes = one_tensor(&[64, 8], GGML_TYPE_F32, 0, 64 * 8 * 4);
    let h = mlx_engine::model::gguf_header::parse(&bytes).unwrap();
    assert_eq!((h.version, h.alignment, h.tensors.len()), (3, 32, 1));
    assert_eq!((h.tensors[0].dims.clone(), h.tensors[0].nbytes), (vec![64, 8], 64 * 8 * 4));
    assert_eq!(h.metadata_keys, ["general.architecture"]);
    // Every strict prefix of it is refused (by length, not by a crash).
    for n in 0..bytes.len() {
        assert!(mlx_engine::model::gguf_header::parse(&bytes[..n]).is_err(), "prefix of {n} bytes");
    }
}

/// A safetensors file from its JSON header and data.
fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    b
}

fn replace_weights(dir: &Path, bytes: &[u8]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

#[test]
fn malformed_safetensors_headers_are_refused_naming_the_file() {
    let tiny = TinyModel::new(Arch::Llama, 1);
    let dir = tiny.write_temp();
    let model = dir.path().to_str().unwrap();
    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a dimension of 2^32 + 64",
            safetensors(r#"{"w":{"dtype":"F32","shape":[4294967360],"data_offsets":[0,256]}}"#, 256),
            "invalid safetensors header",
        ),
        (
            "offsets past the end",
            safetensors(r#"{"w":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#, 100),
            "invalid safetensors header",
        ),
        ("a header length past the end", u64::MAX.to_le_bytes().to_vec(), "invalid safetensors header"),
        ("a header that is not JSON", safetensors("{nope", 0), "invalid safetensors header"),
    ];
    for (what, bytes, fragment) in rows {
        replace_weights(dir.path(), &bytes);
        let (code, err) = cli(&["forward", "--model", model, "--tokens", "1"]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains("model.safetensors") && err.contains(fragment), "{what}: {err}");
    }
}

#[test]
fn a_safetensors_index_pointing_outside_the_model_folder_is_refused() {
    let tiny = TinyModel::new(Arch::Llama, 2);
    let dir = tiny.write_temp();
    let model = dir.path().to_str().unwrap();
    // A real weights file outside the folder, which must not be read.
    let outside = tempfile::tempdir().unwrap();
    tiny.write(outside.path());
    let elsewhere = outside.path().join("model.safetensors");
    let rows = [
        format!("../{}/model.safetensors", outside.path().file_name().unwrap().to_str().unwrap()),
        elsewhere.display().to_string(),
        "sub/model.safetensors".to_string(),
        "config.json".to_string(),
    ];
    for target in rows {
        let index = serde_json::json!({ "weight_map": { "model.embed_tokens.weight": target } });
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
        let (code, err) = cli(&["forward", "--model", model, "--tokens", "1"]);
        assert_eq!(code, 1, "{target}: {err}");
        assert!(
            err.contains("model.safetensors.index.json")
                && err.contains("`weight_map.model.embed_tokens.weight`")
                && err.contains("no folders"),
            "{target}: {err}"
        );
    }
    let index = serde_json::json!({ "weight_map": { "model.embed_tokens.weight": "model.safetensors" } });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (code, err) = cli(&["forward", "--model", model, "--tokens", "1"]);
    assert_eq!(code, 0, "{err}");
}
