//! `model.safetensors.index.json` text -> `model::parse_index`: never panics, and every file
//! it returns is a `.safetensors` file directly inside the model folder (no `..`, no absolute
//! path, no subfolder), sorted and listed once.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The index is read with `read_to_string`, so only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(files) = mlx_engine::model::parse_index(text) else { return };
    assert!(!files.is_empty());
    assert!(files.windows(2).all(|w| w[0] < w[1]), "not sorted and unique: {files:?}");
    let dir = Path::new("/models/m");
    for f in &files {
        assert!(f.ends_with(".safetensors"), "{f:?}");
        let parts: Vec<Component> = Path::new(f).components().collect();
        assert!(matches!(parts[..], [Component::Normal(_)]), "{f:?} is not a plain file name");
        assert_eq!(dir.join(f).parent(), Some(dir), "{f:?} leaves the model folder");
    }
});
