//! A hand-written GGUF v3 writer for tests: metadata entries of the value types the engine
//! reads, tensor infos, and aligned tensor data. Shared by the weight-file tests (`ops_io`) and
//! the GGUF model-loading tests.
#![allow(dead_code)]

use std::path::Path;

use mlx_engine::api::io::MetaValue;
use mlx_engine::api::Dtype;

pub const GGUF_U32: u32 = 4;
pub const GGUF_I32: u32 = 5;
pub const GGUF_F32: u32 = 6;
pub const GGUF_BOOL: u32 = 7;
pub const GGUF_STRING: u32 = 8;
pub const GGUF_ARRAY: u32 = 9;
pub const GGML_TYPE_F32: u32 = 0;
pub const GGML_TYPE_F16: u32 = 1;
/// The default alignment of tensor data (`general.alignment`).
pub const ALIGN: usize = 32;

/// Little-endian GGUF bytes, appended in file order.
#[derive(Default)]
pub struct GgufWriter {
    pub buf: Vec<u8>,
}

impl GgufWriter {
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn kv_string(&mut self, k: &str, v: &str) {
        self.str(k);
        self.u32(GGUF_STRING);
        self.str(v);
    }
    pub fn kv_u32(&mut self, k: &str, v: u32) {
        self.str(k);
        self.u32(GGUF_U32);
        self.u32(v);
    }
    pub fn kv_f32(&mut self, k: &str, v: f32) {
        self.str(k);
        self.u32(GGUF_F32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn kv_bool(&mut self, k: &str, v: bool) {
        self.str(k);
        self.u32(GGUF_BOOL);
        self.buf.push(v as u8);
    }
    pub fn kv_strings(&mut self, k: &str, v: &[&str]) {
        self.str(k);
        self.u32(GGUF_ARRAY);
        self.u32(GGUF_STRING);
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    pub fn kv_f32s(&mut self, k: &str, v: &[f32]) {
        self.str(k);
        self.u32(GGUF_ARRAY);
        self.u32(GGUF_F32);
        self.u64(v.len() as u64);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        self.str(k);
        self.u32(GGUF_ARRAY);
        self.u32(GGUF_I32);
        self.u64(v.len() as u64);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// One entry from a metadata value as MLX's loader reports it: strings, string lists, and
    /// u32 / f32 / bool scalars (0-d arrays) or i32 / f32 lists (1-d arrays).
    pub fn kv_meta(&mut self, k: &str, v: &MetaValue) {
        match v {
            MetaValue::String(s) => self.kv_string(k, s),
            MetaValue::Strings(list) => self.kv_strings(k, &list.iter().map(String::as_str).collect::<Vec<_>>()),
            MetaValue::Array(a) if a.ndim() == 0 => match a.dtype() {
                Dtype::U32 => self.kv_u32(k, a.item::<u32>().expect("u32 scalar")),
                Dtype::F32 => self.kv_f32(k, a.item::<f32>().expect("f32 scalar")),
                Dtype::Bool => self.kv_bool(k, a.item::<bool>().expect("bool scalar")),
                d => panic!("gguf_writer: no GGUF scalar for {d:?} ({k})"),
            },
            MetaValue::Array(a) => match a.dtype() {
                Dtype::I32 => self.kv_i32s(k, &a.to_vec::<i32>().expect("i32 list")),
                Dtype::F32 => self.kv_f32s(k, &a.to_vec::<f32>().expect("f32 list")),
                d => panic!("gguf_writer: no GGUF list for {d:?} ({k})"),
            },
            MetaValue::Empty => panic!("gguf_writer: empty metadata value for {k}"),
        }
    }

    /// Tensor info: `ne` lists dimensions fastest-varying first (GGML order).
    pub fn tensor_info(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) {
        self.str(name);
        self.u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty);
        self.u64(offset);
    }
    pub fn pad(&mut self) {
        let n = self.buf.len().next_multiple_of(ALIGN);
        self.buf.resize(n, 0);
    }
}

/// An F32 tensor to write: `shape` row-major (outermost first), as MLX and safetensors give it.
pub struct F32Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes a complete GGUF v3 file: the metadata entries in order, then F32 tensors, each at
/// the next `ALIGN`ed offset of the data section. Dimensions are written reversed (GGML's
/// `ne[0]` is the innermost one).
pub fn write_gguf_file(path: &Path, metadata: &[(String, MetaValue)], tensors: &[F32Tensor]) {
    let mut w = GgufWriter::default();
    w.buf.extend_from_slice(b"GGUF");
    w.u32(3);
    w.u64(tensors.len() as u64);
    w.u64(metadata.len() as u64);
    for (k, v) in metadata {
        w.kv_meta(k, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        assert_eq!(t.shape.iter().product::<usize>(), t.data.len(), "{}: data does not fill its shape", t.name);
        let ne: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        w.tensor_info(&t.name, &ne, GGML_TYPE_F32, offset as u64);
        offset = (offset + 4 * t.data.len()).next_multiple_of(ALIGN);
    }
    w.pad();
    let data_start = w.buf.len();
    for t in tensors {
        for x in &t.data {
            w.buf.extend_from_slice(&x.to_le_bytes());
        }
        w.pad();
    }
    assert_eq!(w.buf.len() - data_start, offset, "tensor offsets and data agree");
    std::fs::write(path, &w.buf).expect("write gguf");
}
