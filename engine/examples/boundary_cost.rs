//! What the plugin boundary costs a decode step. A plugin reaches MLX only through the ops
//! table, one indirect call per op, where code built into the engine could call the shim
//! directly; everything behind the call (the shim, MLX building the node) is the same either
//! way. So the boundary's cost is the indirect calls' extra time. This measures a table call
//! against a direct call of the same shim function, counts the primitives one decode step
//! builds through the plugin, times the step, and bounds the boundary's share from above: every
//! primitive is charged `CALLS_PER_PRIMITIVE` table calls (more than the op, the shape queries
//! and the handle releases that make one), each at the whole cost of a table call, not only
//! its extra over a direct one.
//!
//! `cargo run --release -p mlx-engine --example boundary_cost -- models/smollm2-135m-instruct/f32`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use mlx_engine::api::{graph_primitives, Array, Input};
use mlx_engine::cache::KvCache;
use mlx_engine::mlx::ffi::{ops_table, shim};
use mlx_engine::model::{load_with, DtypeChoice};
use mlx_engine::plugin_host::{HostOptions, PluginHost};

const CALLS: usize = 20_000_000;
const CALLS_PER_PRIMITIVE: f64 = 4.0;

fn per_call_ns(f: impl Fn() -> usize) -> f64 {
    let t = Instant::now();
    let mut acc = 0usize;
    for _ in 0..CALLS {
        acc = acc.wrapping_add(black_box(f()));
    }
    black_box(acc);
    t.elapsed().as_secs_f64() * 1e9 / CALLS as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::args().nth(1).ok_or("usage: boundary_cost MODEL_DIR")?);
    let table = ops_table();
    let host = PluginHost::new(&HostOptions::standard(vec![], None))?;
    let m = load_with(&path, &host, DtypeChoice::F32, mlx_engine::api::runtime::Device::Cpu)?;

    let x = Array::from_slice(&[1.0f32, 2.0], &[1, 2])?;
    let h = x.as_raw();
    // The table is read through a pointer the optimiser cannot see through, as a plugin does.
    let table_ptr: *const mlx_engine::api::ops_table::OpsTable = black_box(table);
    let (mut direct, mut indirect) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        // SAFETY: `h` is a live handle for the whole loop.
        direct = direct.min(per_call_ns(|| unsafe { shim::array_ndim(black_box(h)) }));
        // SAFETY: as above; the table lives for the process.
        indirect = indirect.min(per_call_ns(|| unsafe { ((*black_box(table_ptr)).array_ndim)(black_box(h)) }));
    }

    let mut cache = KvCache::new(m.model.cache_layout());
    let prompt: Vec<i32> = (0..8).map(|i| 100 + 7 * i).collect();
    m.model.forward(Input::Tokens(&Array::from_slice(&prompt, &[1, 8])?), &mut cache)?.eval()?;
    let (mut build_s, mut step_s, mut primitives, steps) = (0.0, 0.0, 0, 16);
    for step in 0..steps {
        let ids = Array::from_slice(&[200 + step], &[1, 1])?;
        let t = Instant::now();
        let logits = m.model.forward(Input::Tokens(&ids), &mut cache)?;
        build_s += t.elapsed().as_secs_f64();
        primitives = graph_primitives(&[&logits])?;
        logits.eval()?;
        step_s += t.elapsed().as_secs_f64();
    }
    let (build_us, step_us) = (build_s * 1e6 / steps as f64, step_s * 1e6 / steps as f64);
    let bound_us = primitives as f64 * CALLS_PER_PRIMITIVE * indirect.max(direct) / 1e3;
    println!("{} ({}):", path.display(), m.model_type);
    println!("  a shim call: {direct:.2} ns direct, {indirect:.2} ns through the ops table");
    println!(
        "  a decode step: {primitives} primitives, its graph built through the plugin in {build_us:.0} us, \
         built and evaluated in {step_us:.0} us"
    );
    println!(
        "  the ops-table calls: at most {bound_us:.1} us per step, {:.2}% of building the graph, {:.3}% of the step",
        100.0 * bound_us / build_us,
        100.0 * bound_us / step_us
    );
    Ok(())
}
