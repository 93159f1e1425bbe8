//! GGUF bytes -> `gguf_header::parse`, the check that runs before MLX's GGUF reader (which
//! follows the file's lengths and offsets blindly). Never panics; what it accepts is
//! self-consistent (every tensor's data inside the file, aligned, not overlapping); and MLX's
//! reader survives every file it accepts, reading each tensor: that is what the check is for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_engine::model::gguf_header;
use mlx_engine_plugin_api::io::load_gguf;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = gguf_header::parse(data) else { return };
    assert!((2..=3).contains(&h.version) && h.alignment.is_power_of_two());
    assert_eq!(h.data_start % h.alignment, 0);
    let file = data.len() as u64;
    let mut spans = Vec::new();
    for t in &h.tensors {
        assert!((1..=4).contains(&t.dims.len()) && t.dims.iter().all(|&d| d > 0 && d <= i32::MAX as u64));
        assert_eq!(t.offset % h.alignment, 0, "tensor {} offset", t.name);
        let end = h.data_start + t.offset + t.nbytes;
        assert!(end <= file, "tensor {} ends at {end} of {file}", t.name);
        spans.push((t.offset, t.offset + t.nbytes));
    }
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlapping tensors {spans:?}");

    let path = scratch::file("model.gguf", data);
    let loaded = load_gguf(&path);
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!("accepted; MLX: {:?}", loaded.as_ref().map(|l| l.arrays.len()));
    }
    if let Ok(loaded) = loaded {
        let arrays: Vec<_> = loaded.arrays.iter().map(|(_, a)| a).collect();
        // Reading every tensor makes MLX touch all the bytes the header points at.
        let _ = mlx_engine_plugin_api::eval(&arrays);
    }
});
