//! Safetensors bytes -> `safetensors_header::check`, the check that runs before MLX's reader
//! (which keeps dimensions as 32-bit ints and trusts the offsets). Never panics, and MLX's
//! reader survives every file it accepts, with one array per tensor the check counted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_engine::model::safetensors_header;
use mlx_engine_plugin_api::io::load_safetensors;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let Ok(count) = safetensors_header::check(data) else { return };
    let path = scratch::file("model.safetensors", data);
    let loaded = load_safetensors(&path);
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!("accepted; MLX: {:?}", loaded.as_ref().map(|l| l.arrays.len()));
    }
    if let Ok(loaded) = loaded {
        assert_eq!(loaded.arrays.len(), count, "MLX read another number of tensors than the check counted");
        let arrays: Vec<_> = loaded.arrays.iter().map(|(_, a)| a).collect();
        let _ = mlx_engine_plugin_api::eval(&arrays);
    }
});
