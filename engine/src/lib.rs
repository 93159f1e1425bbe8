//! mlx-engine: LLM inference on MLX with dynamically loaded architecture plugins.
//!
//! The data path, one module per stage: `tokenizer` (text -> tokens, chat templates) ->
//! `model` (a model folder or GGUF file -> an architecture resolved by `plugin_host`) ->
//! `cache` (the engine-owned KV cache behind the forward context) -> `sample` (processors,
//! sampler) -> `stop` (stop strings) -> `generate` (the decode loop and its streamed results).
//! `model_kit` runs a loaded model on its own worker thread for hosts; `cli` is a thin layer
//! over it. `vision` turns images into pixel values for a vision tower. `speculative` drafts
//! tokens (a draft model, prompt lookup) for the decode loop to verify. `constrain` masks the
//! logits with a grammar (JSON schema, Lark, regex) for structured output. The MLX backend
//! (`mlx`) is a C++ shim whose functions fill the ops table that the engine and every plugin
//! call through.

pub mod cache;
pub mod cli;
pub mod conformance;
pub mod constrain;
pub mod diagnostics;
pub mod distributed;
pub mod error;
pub mod generate;
pub mod mlx;
pub mod model;
pub mod model_kit;
pub mod plugin_host;
pub mod sample;
pub mod server;
pub mod speculative;
pub mod stop;
pub mod tokenizer;
pub mod vision;

pub use error::{Error, Result};
pub use mlx_engine_plugin_api as api;
pub use model_kit::{CancelHandle, Generation, LoadOptions, ModelInfo, ModelKit};
