//! Kernels per decode step: loads a model folder (f32, CPU), prefills a short prompt, then
//! builds the graph of one decode step and counts the primitives its evaluation would run
//! (`graph_primitives`: unevaluated nodes reachable from the logits, a multi-output primitive
//! once). Steps after the first are counted, so compiled functions are already traced.
//!
//! `cargo run -p mlx-engine --example kernels_per_step -- models/gemma3-270m/f32`, and again
//! with `MLX_DISABLE_COMPILE=1` for the unfused graph.

use std::path::PathBuf;

use mlx_engine::api::runtime::Device;
use mlx_engine::api::{graph_primitives, Array, Input};
use mlx_engine::cache::KvCache;
use mlx_engine::model::{load_with, DtypeChoice};
use mlx_engine::plugin_host::{HostOptions, PluginHost};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::args().nth(1).ok_or("usage: kernels_per_step MODEL_DIR")?);
    let _ = mlx_engine::mlx::ffi::ops_table();
    let host = PluginHost::new(&HostOptions::standard(vec![], None))?;
    let m = load_with(&path, &host, DtypeChoice::F32, Device::Cpu)?;
    let mut cache = KvCache::new(m.model.cache_layout());
    let prompt: Vec<i32> = (0..8).map(|i| 100 + 7 * i).collect();
    let logits = m.model.forward(Input::Tokens(&Array::from_slice(&prompt, &[1, 8])?), &mut cache)?;
    logits.eval()?;
    let mut counts = Vec::new();
    for step in 0..4 {
        let ids = Array::from_slice(&[200 + step], &[1, 1])?;
        let logits = m.model.forward(Input::Tokens(&ids), &mut cache)?;
        counts.push(graph_primitives(&[&logits])?);
        logits.eval()?;
    }
    let compile = if std::env::var_os("MLX_DISABLE_COMPILE").is_some() { "disabled" } else { "enabled" };
    println!(
        "{} ({}): primitives per decode step {:?} (compile {compile})",
        path.display(),
        m.model_type,
        &counts[1..]
    );
    Ok(())
}
