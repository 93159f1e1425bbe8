//! The MLX backend: a C++20 shim over MLX's C++ API (`engine/shim/`), exposed as the ops table
//! that the engine and every plugin call through.
pub mod ffi;

// Makes the shim's table available to `plugin_api::Array` in the engine's own code and tests,
// without an explicit install call; plugins receive the same table through their descriptor.
inventory::submit! { mlx_engine_plugin_api::array::OpsProvider(ffi::ops_table) }

use mlx_engine_plugin_api::array::check;
use mlx_engine_plugin_api::ops_table::{Handle, Status};
use mlx_engine_plugin_api::{Array, Result};

unsafe extern "C" {
    fn mlxe_graph_census(arrays: *const Handle, n: usize, buf: *mut u8, cap: usize, len: *mut usize) -> Status;
}

/// The primitives that evaluating `arrays` would run, by MLX's name for them (`Matmul`,
/// `RMSNorm`, `Compiled...`), most frequent first: what [`graph_primitives`] counts, itemised.
/// A diagnostic of the engine's (`examples/kernels_per_step.rs`), not part of the ops table.
///
/// [`graph_primitives`]: mlx_engine_plugin_api::graph_primitives
pub fn graph_census(arrays: &[&Array]) -> Result<Vec<(String, usize)>> {
    let raw: Vec<Handle> = arrays.iter().map(|a| a.as_raw()).collect();
    let mut len = 0usize;
    // SAFETY: live borrowed handles; a null buffer asks for the length only.
    check(unsafe { mlxe_graph_census(raw.as_ptr(), raw.len(), std::ptr::null_mut(), 0, &mut len) })?;
    let mut buf = vec![0u8; len];
    // SAFETY: as above, with room for `len` bytes (the graph is unchanged between the calls).
    check(unsafe { mlxe_graph_census(raw.as_ptr(), raw.len(), buf.as_mut_ptr(), buf.len(), &mut len) })?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, n)| (name.to_string(), n.parse().unwrap_or(0)))
        .collect())
}
