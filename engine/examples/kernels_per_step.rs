//! Kernels per decode step: loads a model folder, prefills a short prompt, then builds the
//! graph of one decode step and counts the primitives its evaluation would run
//! (`graph_primitives`: unevaluated nodes reachable from the logits, a multi-output primitive
//! once), itemised by MLX's name for each (`mlx::graph_census`). Steps after the first are
//! counted, so compiled functions are already traced.
//!
//! `cargo run --release -p mlx-engine --example kernels_per_step -- models/gemma3-270m/f32
//! [cpu|gpu]` (f32 on the CPU, the checkpoint's dtype on the GPU), and again with
//! `MLX_DISABLE_COMPILE=1` for the unfused graph.

use std::path::PathBuf;

use mlx_engine::api::runtime::Device;
use mlx_engine::api::{graph_primitives, Array, Input};
use mlx_engine::cache::KvCache;
use mlx_engine::mlx::graph_census;
use mlx_engine::model::{load_with, DtypeChoice};
use mlx_engine::plugin_host::{HostOptions, PluginHost};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: kernels_per_step MODEL_DIR [cpu|gpu]")?);
    let device = match args.next().as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("gpu") => Device::Gpu,
        Some(other) => return Err(format!("unknown device {other:?}: cpu or gpu").into()),
    };
    let _ = mlx_engine::mlx::ffi::ops_table();
    device.set_default()?;
    let host = PluginHost::new(&HostOptions::standard(vec![], None))?;
    let dtype = if device == Device::Cpu { DtypeChoice::F32 } else { DtypeChoice::Auto };
    let m = load_with(&path, &host, dtype, device)?;
    let mut cache = KvCache::new(m.model.cache_layout());
    let prompt: Vec<i32> = (0..8).map(|i| 100 + 7 * i).collect();
    let logits = m.model.forward(Input::Tokens(&Array::from_slice(&prompt, &[1, 8])?), &mut cache)?;
    logits.eval()?;
    let mut counts = Vec::new();
    let mut census = Vec::new();
    for step in 0..4 {
        let ids = Array::from_slice(&[200 + step], &[1, 1])?;
        let logits = m.model.forward(Input::Tokens(&ids), &mut cache)?;
        counts.push(graph_primitives(&[&logits])?);
        census = graph_census(&[&logits])?;
        logits.eval()?;
    }
    let compile = if std::env::var_os("MLX_DISABLE_COMPILE").is_some() { "disabled" } else { "enabled" };
    println!(
        "{} ({}, {device:?}, {}): primitives per decode step {:?} (compile {compile})",
        path.display(),
        m.model_type,
        m.dtype,
        &counts[1..]
    );
    for (name, n) in census {
        println!("  {n:>5}  {name}");
    }
    Ok(())
}
