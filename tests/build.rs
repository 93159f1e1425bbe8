//! Build script of the cross-crate tests: repeats mlx-engine's link arguments for this package's
//! test binaries. `rustc-link-arg` from mlx-engine's build script does not reach dependents, so
//! mlx-engine publishes them as `links = "mlx"` metadata, which arrives here as `DEP_MLX_*`.

use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_RPATH");
    println!("cargo:rerun-if-env-changed=DEP_MLX_LINK_ARGS");

    // Run-time search path for libmlx.so.
    match env::var("DEP_MLX_RPATH") {
        Ok(rpath) if !rpath.is_empty() => println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}"),
        _ => println!("cargo:warning=DEP_MLX_RPATH is not set: test binaries may not find libmlx at run time"),
    }

    // Extra arguments (on Linux: OpenBLAS linked with --no-as-needed), space separated.
    if let Ok(args) = env::var("DEP_MLX_LINK_ARGS") {
        for arg in args.split_whitespace() {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
