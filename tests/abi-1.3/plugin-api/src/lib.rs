//! mlx-engine-plugin-api: the one crate an architecture plugin depends on.
//!
//! It has no native dependency. The engine hands every plugin its [`ops_table::OpsTable`] at
//! load; [`Array`] calls through it, so engine and plugins share one MLX runtime and one array
//! type. A plugin implements [`ModelArch`] (and optionally [`VisionAddOn`]) and exports them
//! with [`export_plugin!`]; the ABI rules are in `docs/adr/0001-plugin-abi.md`.

pub mod abi;
pub mod array;
pub mod compile;
pub mod config_check;
pub mod declare;
pub mod distributed;
pub mod dtype;
pub mod error;
pub mod export;
mod export_macro;
pub mod fast;
pub mod gguf;
pub mod host;
pub mod io;
pub mod layout;
pub mod nn;
pub mod ops;
pub mod ops_list;
pub mod ops_table;
pub mod random;
pub mod runtime;
pub mod traits;

pub use array::{async_eval, eval, Array};
pub use compile::{graph_primitives, Compiled};
pub use dtype::{round_to_bf16, Dtype, Element};
pub use error::{Error, Result};
pub use ops::{concatenate, dequantize, gather_mm, gather_qmm, quantize, quantized_matmul, where_};
/// Re-exported so a plugin's `Config` can derive `Deserialize` with only this crate as a
/// dependency (`#[serde(crate = "mlx_engine_plugin_api::serde")]`).
pub use serde;
pub use serde_json;
pub use traits::{
    model_factory, vision_factory, AttentionOptions, DtypePolicy, DynModel, DynVision, ForwardContext, ImagePrompt,
    Input, LayerCache, ModelArch, ModelFactory, Positions, TextEntry, VisionAddOn, VisionFactory, Weights,
    WeightsFormat,
};
