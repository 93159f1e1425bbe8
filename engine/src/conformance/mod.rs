//! The plugin conformance kit: what `mlx-engine check-plugin` runs against one plugin file and a
//! checkpoint, so an author outside this repository gets the same checks the workspace plugins
//! get from the engine's own tests (forward shapes, cached decode against a full forward through
//! the engine's real cache, rotating and quantized caches, quantized weights, error containment,
//! and a golden recorded with mlx-lm by `scripts/plugin-kit/record_golden.py`).
//!
//! Everything runs in f32 on the current device. Each check reports what it measured, so a
//! failure says by how much.

mod checks;
mod golden;

use std::path::{Path, PathBuf};

use mlx_engine_plugin_api::declare::{parse_declared, DECLARE_MARKER};
use mlx_engine_plugin_api::{random, Array, Dtype, DtypePolicy, Weights, WeightsFormat};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{cast_weights, load_weights, weight_files};
use crate::plugin_host::LoadedPlugin;

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The plugin file (`libNAME.so` / `libNAME.dylib`).
    pub plugin: PathBuf,
    /// The model's `config.json`; its `model_type` must be one the plugin declares.
    pub config: PathBuf,
    /// The checkpoint: a safetensors file or a folder of them. Default: the config's folder if
    /// it holds safetensors, else random weights of the shapes the plugin declares.
    pub weights: Option<PathBuf>,
    /// A golden from `scripts/plugin-kit/record_golden.py` (or `scripts/goldens/record.py`).
    pub golden: Option<PathBuf>,
    /// Greedy steps the golden must agree on (each prompt).
    pub min_steps: usize,
}

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// The check does not apply to this model (e.g. KV quantization for a head size no group
    /// size divides); the detail says why.
    Skip,
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub status: Status,
    /// What was measured, or why it failed or was skipped.
    pub detail: String,
}

/// What a check returns: its measurement, or why it does not apply.
pub(crate) enum Outcome {
    Measured(String),
    NotApplicable(String),
}

impl From<String> for Outcome {
    fn from(s: String) -> Outcome {
        Outcome::Measured(s)
    }
}

/// Every check's outcome, in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.status != Status::Fail)
    }

    fn record<T: Into<Outcome>>(&mut self, name: &'static str, outcome: Result<T>) {
        let (status, detail) = match outcome.map(Into::into) {
            Ok(Outcome::Measured(d)) => (Status::Pass, d),
            Ok(Outcome::NotApplicable(d)) => (Status::Skip, d),
            Err(e) => (Status::Fail, e.to_string()),
        };
        self.checks.push(CheckResult { name, status, detail });
    }
}

/// The subject of the checks: the plugin, the config handed to it and the checkpoint's tensors.
pub(crate) struct Subject {
    pub plugin: LoadedPlugin,
    pub model_type: String,
    pub config: Value,
    pub weights: Weights,
    pub format: WeightsFormat,
    /// Where the weights came from (a checkpoint, or made up from declared shapes).
    pub origin: String,
}

impl Subject {
    /// A fresh copy of the weights (arrays are shared handles, so this copies no data).
    pub fn weights(&self) -> Weights {
        let mut w = Weights::new();
        for (name, a) in self.weights.iter() {
            w.insert(name, a.clone());
        }
        w
    }

    pub fn vocab(&self) -> Result<i32> {
        self.config
            .get("vocab_size")
            .and_then(Value::as_i64)
            .map(|v| v as i32)
            .ok_or_else(|| kit_err("the config has no integer `vocab_size` (the checks need the logits' width)"))
    }

    /// Builds the model from `weights` and `config`.
    pub fn build(&self, config: &Value, weights: Weights) -> Result<Box<dyn mlx_engine_plugin_api::DynModel>> {
        self.build_as(config, weights, self.format)
    }

    /// [`Subject::build`] with the weights declared as coming from `format`.
    pub fn build_as(
        &self,
        config: &Value,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn mlx_engine_plugin_api::DynModel>> {
        self.plugin.create_model(&self.model_type, &config.to_string(), weights, format)
    }
}

pub(crate) fn kit_err(reason: impl Into<String>) -> Error {
    Error::Param { name: "check-plugin".into(), reason: reason.into() }
}

fn open(opts: &CheckOptions) -> Result<Subject> {
    let plugin = LoadedPlugin::load(&opts.plugin)?;
    let text = std::fs::read_to_string(&opts.config).map_err(|e| Error::Io { path: opts.config.clone(), source: e })?;
    let config: Value =
        serde_json::from_str(&text).map_err(|e| kit_err(format!("{}: invalid JSON: {e}", opts.config.display())))?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| kit_err(format!("{}: no string `model_type`", opts.config.display())))?
        .to_string();
    if !plugin.text_types.contains(&model_type) {
        return Err(kit_err(format!(
            "plugin `{}` ({}) does not declare model type `{model_type}` (it declares: {})",
            plugin.name,
            opts.plugin.display(),
            if plugin.text_types.is_empty() { "no text types".to_string() } else { plugin.text_types.join(", ") }
        )));
    }
    let folder = opts.config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (weights, format, origin) = match &opts.weights {
        Some(source) => {
            let files = if source.is_dir() { weight_files(source)? } else { vec![source.clone()] };
            let (w, f) = load_weights(&files)?;
            let origin = format!("{} tensors from {}", w.len(), source.display());
            (w, f, origin)
        }
        None if has_safetensors(folder) => {
            let (w, f) = load_weights(&weight_files(folder)?)?;
            let origin = format!("{} tensors from {}", w.len(), folder.display());
            (w, f, origin)
        }
        None => {
            let w = declared_weights(&plugin, &model_type, &config)?;
            let origin = format!("{} random tensors of the shapes the plugin declares", w.len());
            (w, WeightsFormat::Mlx, origin)
        }
    };
    let policy = vec![DtypePolicy::Compute; weights.len()];
    let weights = cast_weights(weights, Dtype::F32, &policy)?;
    Ok(Subject { plugin, model_type, config, weights, format, origin })
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors")))
        .unwrap_or(false)
}

/// Random weights of the shapes the plugin's own loaders ask for (`api::declare`): scales of
/// norms around 1, other vectors (biases) small, matrices with unit-variance outputs.
fn declared_weights(plugin: &LoadedPlugin, model_type: &str, config: &Value) -> Result<Weights> {
    let mut ask = Weights::new();
    ask.insert(DECLARE_MARKER, Array::zeros(&[1], Dtype::F32)?);
    let err = match plugin.create_model(model_type, &config.to_string(), ask, WeightsFormat::Mlx) {
        Ok(_) => return Err(kit_err("the plugin built a model from no weights instead of declaring its tensors")),
        Err(e) => e.to_string(),
    };
    let Some(shapes) = parse_declared(&err) else {
        if err.contains(DECLARE_MARKER) {
            return Err(kit_err(format!(
                "plugin `{}` cannot declare its tensor shapes (built with an older mlx-engine-plugin-api): pass \
                 --weights, or rebuild it",
                plugin.name
            )));
        }
        return Err(kit_err(format!("asking the plugin for its tensor shapes failed: {err}")));
    };
    let mut w = Weights::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let key = random::key(0x6b69_7400 + i as u64)?;
        let a = match shape.len() {
            1 if name.contains("norm") => random::normal(shape, 1.0, 0.1, Dtype::F32, Some(&key))?,
            0 | 1 => random::normal(shape, 0.0, 0.02, Dtype::F32, Some(&key))?,
            _ => {
                let fan_in = *shape.last().unwrap_or(&1) as f64;
                random::normal(shape, 0.0, fan_in.max(1.0).powf(-0.5), Dtype::F32, Some(&key))?
            }
        };
        w.insert(name.clone(), a);
    }
    Ok(w)
}

/// Runs every check. Fails only when the subject cannot be opened at all (the plugin does not
/// load, the config or weights cannot be read); everything after is a check in the report.
pub fn check_plugin(opts: &CheckOptions) -> Result<Report> {
    let subject = open(opts)?;
    let mut report = Report::default();
    let built = subject.build(&subject.config, subject.weights());
    let model = match built {
        Ok(m) => {
            let layers = m.cache_layout();
            report.record("load", Ok(format!("{} layers ({}); {}", layers.len(), summarize(&layers), subject.origin)));
            m
        }
        Err(e) => {
            report.record::<String>("load", Err(e));
            return Ok(report);
        }
    };
    report.record("forward shapes", checks::forward_shapes(&subject, model.as_ref()));
    report.record("last position only", checks::last_position(&subject, model.as_ref()));
    report.record("batched rows", checks::batched_rows(&subject, model.as_ref()));
    report.record("cached decode", checks::cached_decode(&subject, model.as_ref()));
    report.record("rotating cache", checks::rotating_cache(&subject, model.as_ref()));
    report.record("quantized KV cache", checks::quantized_kv(&subject, model.as_ref()));
    report.record("quantized weights", checks::quantized_weights(&subject));
    report.record("sanitize round trip", checks::sanitize_round_trip(&subject, model.as_ref()));
    report.record("missing tensor", checks::missing_tensor(&subject));
    report.record("wrong tensor shape", checks::wrong_shape(&subject));
    report.record("bad config", checks::bad_config(&subject));
    if let Some(g) = &opts.golden {
        report.record("golden", golden::compare(&subject, model.as_ref(), g, opts.min_steps));
    }
    Ok(report)
}

fn summarize(layout: &[mlx_engine_plugin_api::LayerCache]) -> String {
    use mlx_engine_plugin_api::LayerCache;
    let full = layout.iter().filter(|l| **l == LayerCache::Full).count();
    let sliding: Vec<u32> = layout
        .iter()
        .filter_map(|l| match l {
            LayerCache::SlidingWindow { window } => Some(*window),
            LayerCache::Full => None,
        })
        .collect();
    match sliding.first() {
        None => format!("{full} full"),
        Some(w) => format!("{full} full, {} sliding (window {w})", sliding.len()),
    }
}
