//! What the config targets share: a config.json (or a GGUF description) from the fuzzer goes
//! the way the engine sends it to a plugin, and the plugin's own factory parses and validates
//! it. No weights are given, so a config that passes validation must fail on the first missing
//! tensor: the run ends in an error, never a panic. A tiny accepted config is then built with
//! probe weights and run (probe.rs).
//!
//! Input: a flags byte (bit 0: a GGUF description, the JSON `GgufInfo` that the engine hands
//! to `config_from_gguf`, instead of a config.json; bits 1-2: the checkpoint's weights format),
//! then the JSON text.

use mlx_engine_plugin_api::gguf::GgufInfo;
use mlx_engine_plugin_api::{ModelFactory, VisionFactory, Weights, WeightsFormat};

fn format_of(flags: u8) -> WeightsFormat {
    match (flags >> 1) & 3 {
        0 => WeightsFormat::Mlx,
        1 => WeightsFormat::HuggingFace,
        _ => WeightsFormat::Gguf,
    }
}

/// One plugin architecture as the engine reaches it: its model factory, its GGUF mapping, and
/// its vision add-on's factory if it has one (built from the whole config when that has a
/// `vision_config`, as the engine does).
pub struct Arch {
    pub text: ModelFactory,
    pub from_gguf: fn(&GgufInfo) -> mlx_engine_plugin_api::Result<Option<serde_json::Value>>,
    pub vision: Option<VisionFactory>,
}

pub fn run(arch: &Arch, data: &[u8]) {
    let Some((&flags, json)) = data.split_first() else { return };
    let format = format_of(flags);
    if flags & 1 == 1 {
        let Ok(text) = std::str::from_utf8(json) else { return };
        let Ok(info) = GgufInfo::from_json(text) else { return };
        if let Ok(Some(config)) = (arch.from_gguf)(&info) {
            let built = (arch.text)(&config.to_string(), Weights::new(), format);
            assert!(built.is_err(), "a text model was built without weights from GGUF config {config}");
            // The probe names tensors as the plugin asks for them, after GGUF renaming, so it
            // builds the model from safetensors-style names.
            crate::probe::run(arch.text, &config, WeightsFormat::Mlx);
        }
        return;
    }
    // `read_config` takes a model folder.
    crate::scratch::file("config.json", json);
    let Ok((_model_type, config, text_config)) = mlx_engine::model::read_config(crate::scratch::dir()) else { return };
    let built = (arch.text)(&text_config.to_string(), Weights::new(), format);
    assert!(built.is_err(), "a text model was built without weights from {text_config}");
    crate::probe::run(arch.text, &text_config, format);
    if let (Some(vision), Some(_)) = (arch.vision, config.get("vision_config")) {
        let built = vision(&config.to_string(), Weights::new(), format);
        assert!(built.is_err(), "a vision add-on was built without weights from {config}");
    }
}
