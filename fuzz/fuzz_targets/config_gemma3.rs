//! config.json (or a GGUF description) -> the gemma3 plugin's text and vision config parsing
//! and validation; see config_common.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_engine_plugin_api::{model_factory, vision_factory, ModelArch};

#[path = "config_common.rs"]
mod config_common;
#[path = "probe.rs"]
mod probe;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let arch = config_common::Arch {
        text: model_factory::<gemma3::Gemma3>,
        from_gguf: <gemma3::Gemma3 as ModelArch>::config_from_gguf,
        vision: Some(vision_factory::<gemma3::vision::Gemma3Vision>),
    };
    config_common::run(&arch, data);
});
