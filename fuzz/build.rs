//! Repeats mlx-engine's link arguments (libmlx's rpath, OpenBLAS) for the fuzz binaries, as
//! tests/build.rs does: `rustc-link-arg` from the engine's build script reaches only its own
//! binaries, so the engine publishes them as `links = "mlx"` metadata (`DEP_MLX_*`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_RPATH");
    println!("cargo:rerun-if-env-changed=DEP_MLX_LINK_ARGS");
    if let Ok(rpath) = std::env::var("DEP_MLX_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
    }
    if let Ok(args) = std::env::var("DEP_MLX_LINK_ARGS") {
        for arg in args.split_whitespace() {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
