//! Checks a safetensors file's header before MLX reads it. MLX's reader keeps dimensions as
//! 32-bit ints (a dimension of 2^32 + 64 reads as 64) and trusts the offsets; the `safetensors`
//! crate's own validation (header length, JSON, dtype sizes, contiguous offsets within the
//! file) plus a bound on each dimension catches every such file with a message.

use std::path::Path;

use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Checks the header of a safetensors file's bytes; returns the number of tensors.
pub fn check(bytes: &[u8]) -> std::result::Result<usize, String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format!("invalid safetensors header: {e}"))?;
    let tensors = metadata.tensors();
    for (name, info) in &tensors {
        if let Some(d) = info.shape.iter().find(|&&d| d > i32::MAX as usize) {
            return Err(format!(
                "tensor `{name}` has a dimension of {d} (shape {:?}); at most 2^31 - 1 is supported",
                info.shape
            ));
        }
    }
    Ok(tensors.len())
}

/// Maps `path` and checks it with [`check`].
pub fn check_file(path: &Path) -> Result<usize> {
    let io = |e| Error::Io { path: path.to_path_buf(), source: e };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a read-only map, dropped before MLX opens the file.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    check(&map).map_err(|reason| Error::Model { path: path.to_path_buf(), reason })
}
