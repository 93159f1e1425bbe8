//! Builds a text model from a config the plugin accepted, with weights found by asking: each
//! failed build names the next tensor it is missing, or the shape it expected of one, until
//! the model builds. Then runs a short prefill and one decode step through the engine's KV
//! cache. A config that passes the plugin's `validate` must run: a forward that fails (or
//! crashes MLX) after validation passed is a config value the validation lets through.

use std::collections::BTreeMap;

use mlx_engine::cache::KvCache;
use mlx_engine_plugin_api::{Array, DynModel, Input, ModelFactory, Weights, WeightsFormat};

/// Elements of all probe weights together: tiny configs only, so a run takes milliseconds.
const MAX_ELEMENTS: i64 = 1 << 18;
/// Failed builds before giving up (a few per tensor; tiny configs have a few dozen tensors).
const MAX_STEPS: usize = 400;

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

fn parse_shape(s: &str) -> Option<Vec<i32>> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner.split(',').filter(|p| !p.trim().is_empty()).map(|p| p.trim().parse().ok()).collect()
}

/// Deterministic small values, different per tensor.
fn tensor(shape: &[i32], salt: usize) -> Option<Array> {
    let n: i64 = shape.iter().map(|&d| i64::from(d)).product();
    let values: Vec<f32> =
        (0..n as usize).map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect();
    Array::from_slice(&values, shape).ok()
}

/// What the plugin asked for so far, by tensor name.
fn weights(shapes: &BTreeMap<String, Vec<i32>>) -> Option<Weights> {
    let mut w = Weights::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        w.insert(name.clone(), tensor(shape, i)?);
    }
    Some(w)
}

/// `None` when the plugin refuses the config or asks for more than a tiny model holds.
fn build(text: ModelFactory, config: &str, format: WeightsFormat) -> Option<Box<dyn DynModel>> {
    let mut shapes: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for _ in 0..MAX_STEPS {
        let err = match text(config, weights(&shapes)?, format) {
            Ok(model) => return Some(model),
            Err(e) => e.to_string(),
        };
        if std::env::var_os("FUZZ_VERBOSE").is_some() {
            eprintln!("probe: {err}");
        }
        if let Some(name) = between(&err, "tensor `", "` is missing") {
            shapes.insert(name.to_string(), vec![1]);
        } else if let (Some(name), Some(shape)) =
            (between(&err, "tensor `", "` has shape"), err.rsplit("expected ").next().and_then(parse_shape))
        {
            if shape.iter().any(|&d| d <= 0) || shapes.get(name) == Some(&shape) {
                return None;
            }
            shapes.insert(name.to_string(), shape);
            let total: i64 = shapes.values().map(|s| s.iter().map(|&d| i64::from(d)).product::<i64>()).sum();
            if total > MAX_ELEMENTS {
                return None;
            }
        } else {
            return None;
        }
    }
    None
}

/// Builds the model of `config` (text config JSON) if it is tiny, and runs it.
pub fn run(text: ModelFactory, config: &serde_json::Value, format: WeightsFormat) {
    let Some(vocab) = config.get("vocab_size").and_then(serde_json::Value::as_i64).filter(|&v| v > 0) else {
        return;
    };
    let Some(model) = build(text, &config.to_string(), format) else { return };
    let mut cache = KvCache::new(model.cache_layout());
    let ids = |v: &[i64]| {
        let v: Vec<i32> = v.iter().map(|&t| (t % vocab) as i32).collect();
        Array::from_slice(&v, &[1, v.len() as i32]).expect("ids")
    };
    for step in [&[1i64, 2, 3][..], &[4]] {
        let logits = model
            .forward(Input::Tokens(&ids(step)), &mut cache)
            .and_then(|l| l.eval().map(|_| l))
            .unwrap_or_else(|e| panic!("config {config} passes validation, but a forward fails: {e}"));
        assert_eq!(logits.shape(), vec![1, step.len() as i32, vocab as i32], "logits shape for config {config}");
    }
}
