//! Weight files through MLX's own loaders: safetensors and GGUF (with metadata).

use std::ffi::c_char;
use std::path::Path;

use crate::array::{check, ops, Array};
use crate::error::{Error, Result};
use crate::ops_table::{BundleHandle, Handle, MetaKind};

/// A metadata value of a loaded file.
#[derive(Debug, Clone)]
pub enum MetaValue {
    String(String),
    Strings(Vec<String>),
    Array(Array),
    Empty,
}

/// Everything a file held: tensors by name (sorted) and metadata entries (sorted by key).
#[derive(Debug, Default)]
pub struct Loaded {
    pub arrays: Vec<(String, Array)>,
    pub metadata: Vec<(String, MetaValue)>,
}

struct Bundle(BundleHandle);

impl Drop for Bundle {
    fn drop(&mut self) {
        // SAFETY: we own the bundle and free it once.
        unsafe { (ops().bundle_free)(self.0) }
    }
}

/// # Safety
/// `ptr/len` must describe live bytes.
unsafe fn string_from(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_bytes(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::Array(format!("path {} is not valid UTF-8", path.display())))
}

fn read_bundle(b: Bundle) -> Result<Loaded> {
    let t = ops();
    let mut loaded = Loaded::default();
    // SAFETY: indices stay below the counts the bundle reports; names are borrowed from the
    // bundle and copied before it is freed; handles written are owned.
    unsafe {
        for i in 0..(t.bundle_num_arrays)(b.0) {
            let (mut name, mut len, mut h): (*const c_char, usize, Handle) =
                (std::ptr::null(), 0, std::ptr::null_mut());
            check((t.bundle_array)(b.0, i, &mut name, &mut len, &mut h))?;
            loaded.arrays.push((string_from(name, len), Array::from_raw(h)?));
        }
        for i in 0..(t.bundle_num_meta)(b.0) {
            let (mut key, mut len, mut kind, mut n, mut h) =
                (std::ptr::null(), 0usize, 0u32, 0usize, std::ptr::null_mut());
            check((t.bundle_meta)(b.0, i, &mut key, &mut len, &mut kind, &mut n, &mut h))?;
            let strings = |count: usize| -> Result<Vec<String>> {
                (0..count)
                    .map(|j| {
                        let (mut s, mut l) = (std::ptr::null(), 0usize);
                        check((t.bundle_meta_string)(b.0, i, j, &mut s, &mut l))?;
                        Ok(string_from(s, l))
                    })
                    .collect()
            };
            let value = match kind {
                k if k == MetaKind::String as u32 => MetaValue::String(strings(1)?.pop().unwrap_or_default()),
                k if k == MetaKind::Strings as u32 => MetaValue::Strings(strings(n)?),
                k if k == MetaKind::Array as u32 => MetaValue::Array(Array::from_raw(h)?),
                _ => MetaValue::Empty,
            };
            loaded.metadata.push((string_from(key, len), value));
        }
    }
    Ok(loaded)
}

/// Loads every tensor and the string metadata of a safetensors file.
pub fn load_safetensors(path: &Path) -> Result<Loaded> {
    let p = path_bytes(path)?;
    let mut b: BundleHandle = std::ptr::null_mut();
    // SAFETY: `p` is live for the call; one out-slot.
    check(unsafe { (ops().load_safetensors)(p.as_ptr() as *const c_char, p.len(), &mut b) })
        .map_err(|e| Error::Mlx(format!("{}: {e}", path.display())))?;
    read_bundle(Bundle(b))
}

/// Loads a GGUF file: tensors MLX can represent (F32/F16/BF16, and Q4_0/Q4_1/Q8_0 as affine
/// quantized triples) and all metadata.
pub fn load_gguf(path: &Path) -> Result<Loaded> {
    let p = path_bytes(path)?;
    let mut b: BundleHandle = std::ptr::null_mut();
    // SAFETY: `p` is live for the call; one out-slot.
    check(unsafe { (ops().load_gguf)(p.as_ptr() as *const c_char, p.len(), &mut b) })
        .map_err(|e| Error::Mlx(format!("{}: {e}", path.display())))?;
    read_bundle(Bundle(b))
}

/// Writes tensors and string metadata as one safetensors file.
pub fn save_safetensors(path: &Path, arrays: &[(&str, &Array)], metadata: &[(&str, &str)]) -> Result<()> {
    let p = path_bytes(path)?;
    let names: Vec<*const c_char> = arrays.iter().map(|(n, _)| n.as_ptr() as *const c_char).collect();
    let name_lens: Vec<usize> = arrays.iter().map(|(n, _)| n.len()).collect();
    let handles: Vec<Handle> = arrays.iter().map(|(_, a)| a.as_raw()).collect();
    let keys: Vec<*const c_char> = metadata.iter().map(|(k, _)| k.as_ptr() as *const c_char).collect();
    let key_lens: Vec<usize> = metadata.iter().map(|(k, _)| k.len()).collect();
    let vals: Vec<*const c_char> = metadata.iter().map(|(_, v)| v.as_ptr() as *const c_char).collect();
    let val_lens: Vec<usize> = metadata.iter().map(|(_, v)| v.len()).collect();
    // SAFETY: every pointer/length pair refers to a live slice or string for the call.
    check(unsafe {
        (ops().save_safetensors)(
            p.as_ptr() as *const c_char,
            p.len(),
            names.as_ptr(),
            name_lens.as_ptr(),
            handles.as_ptr(),
            handles.len(),
            keys.as_ptr(),
            key_lens.as_ptr(),
            vals.as_ptr(),
            val_lens.as_ptr(),
            keys.len(),
        )
    })
    .map_err(|e| Error::Mlx(format!("{}: {e}", path.display())))
}
