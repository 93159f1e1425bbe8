//! config.json (or a GGUF description) -> the llama plugin's config parsing and validation;
//! see config_common.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_engine_plugin_api::{model_factory, ModelArch};

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
        vision: None,
    };
    config_common::run(&arch, data);
});
