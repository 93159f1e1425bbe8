//! The MLX backend: a C++20 shim over MLX's C++ API (`engine/shim/`), exposed as the ops table
//! that the engine and every plugin call through.
pub mod ffi;

// Makes the shim's table available to `plugin_api::Array` in the engine's own code and tests,
// without an explicit install call; plugins receive the same table through their descriptor.
inventory::submit! { mlx_engine_plugin_api::array::OpsProvider(ffi::ops_table) }
