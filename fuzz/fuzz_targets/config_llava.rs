//! config.json (or a GGUF description) -> the llama plugin's text config parsing and the
//! engine's generic VLM fallback (llava: CLIP/SigLIP tower + projector) vision config parsing
//! and validation; see config_common.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_engine::vision::generic::GenericVlm;
use mlx_engine_plugin_api::{model_factory, vision_factory, ModelArch};

#[path = "config_common.rs"]
mod config_common;
#[path = "probe.rs"]
mod probe;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let arch = config_common::Arch {
        text: model_factory::<llama::Llama>,
        from_gguf: <llama::Llama as ModelArch>::config_from_gguf,
        vision: Some(vision_factory::<GenericVlm>),
    };
    config_common::run(&arch, data);
});
