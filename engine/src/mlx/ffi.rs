//! Raw bindings to the C++ shim over MLX (`engine/shim/*.cpp`), and the [`OpsTable`] filled
//! with them.
//!
//! Both are generated from the one list of ops in `mlx_engine_plugin_api::ops_list`: each entry
//! `name` is the shim's `mlxe_<name>`, declared here with the table field's exact signature
//! (the C++ declarations in `mlxe.h` are generated from the same list by `build.rs`). See
//! `mlx_engine_plugin_api::ops_table` for the conventions: borrowed inputs, owned outputs,
//! status 0 = success, thread-local last error. The shim catches every C++ exception, so none
//! crosses into Rust.

#[allow(unused_imports)]
use std::ffi::{c_char, c_void};

use mlx_engine_plugin_api::ops_table::OpsTable;
#[allow(unused_imports)]
use mlx_engine_plugin_api::ops_table::{
    BundleHandle, CompileFn, CompiledHandle, FreePayloadFn, GroupHandle, Handle, Status,
};

macro_rules! bind_shim {
    ($($minor:literal => { $($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)* })+) => {
        /// The shim's exported functions, named after their table entries.
        pub mod shim {
            #[allow(unused_imports)]
            use super::*;

            unsafe extern "C" {
                $($(
                    #[link_name = concat!("mlxe_", stringify!($name))]
                    pub fn $name($($arg: $ty),*) $(-> $ret)?;
                )*)+
            }
        }

        /// The engine's table. Storing the functions as the field types also checks at compile
        /// time that every binding has the field's exact signature.
        static OPS_TABLE: OpsTable = OpsTable {
            size: std::mem::size_of::<OpsTable>(),
            $($( $name: shim::$name, )*)+
        };
    };
}

mlx_engine_plugin_api::for_each_op!(bind_shim);

/// The ops table of this engine, filled with the shim's functions. It lives for the whole
/// process, so plugins may keep the pointer.
pub fn ops_table() -> &'static OpsTable {
    &OPS_TABLE
}
