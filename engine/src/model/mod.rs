//! A model folder on disk -> a ready [`DynModel`]: `config.json`, safetensors weights (single
//! file or sharded), and the architecture resolved through the plugin host.

use std::path::{Path, PathBuf};

pub mod gguf;
pub mod gguf_header;
pub mod hub;
pub mod hub_download;
pub mod partition;
pub mod safetensors_header;
pub mod summary;

use mlx_engine_plugin_api::io::{load_safetensors, MetaValue};
use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{Dtype, DtypePolicy, DynModel, LayerCache, Weights, WeightsFormat};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::plugin_host::{PluginHost, Provider, Via};
use crate::tokenizer::Tokenizer;
use crate::vision::{PreprocessorConfig, VisionModel, VisionPath};

/// `torch_dtype` values of Hugging Face configs (the dtype the checkpoint was saved in).
const KNOWN_DTYPES: [&str; 5] = ["float32", "float16", "bfloat16", "float", "half"];

/// Which dtype the model computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DtypeChoice {
    /// f32 on the CPU (MLX's CPU bf16 GEMM and bf16-activation quantized matmuls are slow and
    /// inaccurate), the checkpoint's own dtype on a GPU.
    #[default]
    Auto,
    F32,
    BF16,
    F16,
}

impl std::str::FromStr for DtypeChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<DtypeChoice> {
        match s {
            "auto" => Ok(DtypeChoice::Auto),
            "f32" | "float32" => Ok(DtypeChoice::F32),
            "bf16" | "bfloat16" => Ok(DtypeChoice::BF16),
            "f16" | "float16" => Ok(DtypeChoice::F16),
            other => Err(Error::Param {
                name: "dtype".into(),
                reason: format!("expected auto, f32, bf16 or f16, got `{other}`"),
            }),
        }
    }
}

/// Where the weights came from; GGUF files also carry the tokenizer.
pub enum Source {
    Folder,
    Gguf { file: PathBuf, metadata: Vec<(String, MetaValue)> },
}

/// A model loaded into memory, with what a host wants to show about it.
pub struct LoadedModel {
    pub model: Box<dyn DynModel>,
    pub path: PathBuf,
    pub source: Source,
    /// The text architecture's model type (`text_config.model_type` or `model_type`).
    pub model_type: String,
    /// Who provides the architecture (plugin name, version and file, or built-in).
    pub provider: String,
    /// The text part of `config.json` as handed to the architecture.
    pub text_config: Value,
    /// `generation_config.json` (an empty object when absent).
    pub generation_config: Value,
    pub context_length: Option<usize>,
    /// Rows of the token embedding (`vocab_size` of the text config): prompt ids must be below.
    pub vocab_size: Option<usize>,
    pub dtype: Dtype,
    /// Logical parameters (a quantized matrix counts its elements, not its packed words).
    pub num_parameters: usize,
    /// How the checkpoint stores its weights (`bfloat16`, `4-bit affine, group 64`, `Q4_1`).
    pub storage: String,
    pub cache_layout: Vec<LayerCache>,
    /// The vision add-on of a vision-language checkpoint, or why there is none (`None` for a
    /// text-only model).
    pub vision: Option<std::result::Result<VisionModel, String>>,
    /// Which vision path the model took.
    pub vision_path: VisionPath,
}

fn model_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Model { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads `config.json` and works out the text model type and the config the text
/// architecture receives: `text_config` with top-level entries it lacks (e.g. `quantization`)
/// filled in, or the whole config for text-only models.
pub fn read_config(dir: &Path) -> Result<(String, Value, Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            model_err(dir, "no config.json in the model folder")
        } else {
            Error::Io { path: path.clone(), source: e }
        }
    })?;
    let config: Value = serde_json::from_str(&text).map_err(|e| model_err(&path, format!("invalid JSON: {e}")))?;
    let Value::Object(top) = &config else {
        return Err(model_err(&path, "expected a JSON object at the top level"));
    };
    let text_config = match top.get("text_config") {
        Some(Value::Object(tc)) => {
            let mut merged = tc.clone();
            for (k, v) in top {
                if k != "text_config" && k != "vision_config" && !merged.contains_key(k) {
                    merged.insert(k.clone(), v.clone());
                }
            }
            // The text config's own model_type wins over the top-level one.
            if let Some(t) = tc.get("model_type") {
                merged.insert("model_type".into(), t.clone());
            }
            Value::Object(merged)
        }
        _ => config.clone(),
    };
    // mlx-lm's `convert -q` writes its quantization under both names (the second for
    // transformers); architectures read either, and two would be a duplicate field to them.
    let mut text_config = text_config;
    if let Value::Object(tc) = &mut text_config {
        if tc.contains_key("quantization") {
            tc.remove("quantization_config");
        }
    }
    let model_type = match text_config.get("model_type") {
        Some(Value::String(t)) => t.clone(),
        None | Some(Value::Null) => return Err(model_err(&path, "field `model_type` (a string) is missing")),
        Some(other) => return Err(model_err(&path, format!("field `model_type` must be a string, got {other}"))),
    };
    match text_config.get("torch_dtype").or_else(|| config.get("torch_dtype")) {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if KNOWN_DTYPES.contains(&d.as_str()) => {}
        Some(other) => crate::diagnostics::warn_once(format!(
            "{}: field `torch_dtype` is {other}, not a dtype the engine knows ({}); ignored",
            path.display(),
            KNOWN_DTYPES.join(", ")
        )),
    }
    Ok((model_type, config, text_config))
}

/// The safetensors files of a model folder: those named by `model.safetensors.index.json`, else
/// every `*.safetensors` file, sorted.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::Io { path: index.clone(), source: e })?;
        let files = parse_index(&text).map_err(|reason| model_err(&index, reason))?;
        let files: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(model_err(missing, "listed in model.safetensors.index.json but missing"));
        }
        return Ok(files);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(model_err(dir, "no weights: expected model.safetensors, a sharded index, or *.safetensors files"));
    }
    Ok(files)
}

/// The weight files a `model.safetensors.index.json` names (sorted, each once). Every name must
/// be a plain file name inside the model folder: a `weight_map` pointing elsewhere (`../`, an
/// absolute path, a subfolder) would make loading a model read files it does not own.
pub fn parse_index(text: &str) -> std::result::Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or("field `weight_map` (an object) is missing")?;
    let mut files = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| format!("`weight_map.{tensor}` must be a file name (a string)"))?;
        let plain = Path::new(file).components().collect::<Vec<_>>();
        if !matches!(plain[..], [std::path::Component::Normal(_)]) || !file.ends_with(".safetensors") {
            return Err(format!(
                "`weight_map.{tensor}` is `{file}`; expected a `.safetensors` file name in the model folder (no folders, \
                 `..` or absolute paths)"
            ));
        }
        files.push(file.to_string());
    }
    if files.is_empty() {
        return Err("`weight_map` is empty".into());
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Loads every tensor of the files; MLX-converted checkpoints carry `format = mlx` metadata.
pub fn load_weights(files: &[PathBuf]) -> Result<(Weights, WeightsFormat)> {
    let mut weights = Weights::new();
    let mut format = WeightsFormat::HuggingFace;
    for f in files {
        safetensors_header::check_file(f)?;
        let loaded = load_safetensors(f).map_err(|e| model_err(f, format!("cannot load safetensors: {e}")))?;
        for (k, v) in &loaded.metadata {
            if k == "format" && matches!(v, MetaValue::String(s) if s == "mlx") {
                format = WeightsFormat::Mlx;
            }
        }
        for (name, a) in loaded.arrays {
            if weights.contains(&name) {
                return Err(model_err(f, format!("tensor `{name}` appears in more than one weights file")));
            }
            weights.insert(name, a);
        }
    }
    Ok((weights, format))
}

/// The dtype most floating-point weights have (the checkpoint's compute dtype).
fn checkpoint_dtype(w: &Weights) -> Dtype {
    let mut counts: Vec<(Dtype, usize)> = Vec::new();
    for (_, a) in w.iter() {
        let d = a.dtype();
        if d.is_float() {
            match counts.iter_mut().find(|(x, _)| *x == d) {
                Some((_, n)) => *n += a.size(),
                None => counts.push((d, a.size())),
            }
        }
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map_or(Dtype::F32, |(d, _)| d)
}

/// Casts the floating-point tensors (dense weights, norms, quantization scales and biases) to
/// `dtype`, except where the architecture's policy (one entry per tensor, in `w`'s order) keeps
/// the stored dtype or asks for f32; packed quantized integers stay as they are.
pub fn cast_weights(w: Weights, dtype: Dtype, policy: &[DtypePolicy]) -> Result<Weights> {
    if policy.len() != w.len() {
        return Err(Error::Param {
            name: "dtype policy".into(),
            reason: format!("{} entries for {} tensors", policy.len(), w.len()),
        });
    }
    w.into_iter()
        .zip(policy)
        .map(|((k, a), p)| {
            let want = match p {
                DtypePolicy::Compute => dtype,
                DtypePolicy::Stored => a.dtype(),
                DtypePolicy::F32 => Dtype::F32,
            };
            let a = if a.dtype().is_float() && a.dtype() != want { a.astype(want)? } else { a };
            Ok((k, a))
        })
        .collect()
}

fn read_json_or_empty(path: &Path) -> Result<Value> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| model_err(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Default::default())),
        Err(e) => Err(Error::Io { path: path.to_path_buf(), source: e }),
    }
}

/// The `.gguf` file to load for `path`: the path itself, or the only `.gguf` in a folder that
/// has no config.json.
fn gguf_file(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "gguf") {
            Ok(Some(path.to_path_buf()))
        } else {
            Err(model_err(path, "expected a model folder or a .gguf file"))
        };
    }
    if path.join("config.json").exists() || !path.is_dir() {
        return Ok(None);
    }
    let rd = std::fs::read_dir(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let ggufs: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "gguf")).collect();
    match ggufs.len() {
        0 => Ok(None),
        1 => Ok(ggufs.into_iter().next()),
        n => Err(model_err(path, format!("{n} .gguf files and no config.json: pass the file to load"))),
    }
}

/// A plugin's complaint about the config, attributed to the file it came from (config.json, or
/// the GGUF file whose metadata the config was mapped from), naming the plugin.
fn config_error(e: Error, source: &Source, path: &Path) -> Error {
    match e {
        Error::Plugin { path: plugin, reason } => match reason.split_once("failed: config: ") {
            Some((_, problem)) => {
                let file = match source {
                    Source::Folder => path.join("config.json"),
                    Source::Gguf { file, .. } => file.clone(),
                };
                model_err(&file, format!("{problem} (checked by plugin {})", plugin.display()))
            }
            None => Error::Plugin { path: plugin, reason },
        },
        e => e,
    }
}

/// Loads the model at `path` (a model folder, or a `.gguf` file) with the architecture the
/// host resolves for its model type. Everything cheap (config, tokenizer files, model type) is
/// checked before any weight is read.
pub fn load_with(path: &Path, host: &PluginHost, dtype: DtypeChoice, device: Device) -> Result<LoadedModel> {
    if !path.exists() {
        return Err(model_err(path, "no such file or folder"));
    }
    let mut vision = None;
    let mut vision_path = VisionPath::None;
    let mut gguf_storage = None;
    let (model_type, text_config, generation_config, weights, format, source) = match gguf_file(path)? {
        Some(file) => {
            let g = gguf::load(&file, host)?;
            gguf_storage = Some(g.storage);
            let source = Source::Gguf { file, metadata: g.metadata };
            (g.model_type, g.config, Value::Object(Default::default()), g.weights, WeightsFormat::Gguf, source)
        }
        None => {
            let (model_type, config, text_config) = read_config(path)?;
            if !path.join("tokenizer.json").exists() {
                return Err(model_err(path, "no tokenizer.json in the model folder"));
            }
            host.resolve_text(&model_type)?;
            let files = weight_files(path)?;
            let generation_config = read_json_or_empty(&path.join("generation_config.json"))?;
            let (weights, format) = load_weights(&files)?;
            // The text plugin gets the text part only; the vision part is the add-on's.
            let parts = partition::partition(weights);
            (vision, vision_path) = load_vision(path, host, &config, parts.vision, format, dtype, device);
            (model_type, text_config, generation_config, parts.text, format, Source::Folder)
        }
    };
    let resolved = host.resolve_text(&model_type)?;
    let target = match (dtype, device) {
        (DtypeChoice::F32, _) | (DtypeChoice::Auto, Device::Cpu) => Dtype::F32,
        (DtypeChoice::BF16, _) => Dtype::BF16,
        (DtypeChoice::F16, _) => Dtype::F16,
        (DtypeChoice::Auto, Device::Gpu) => checkpoint_dtype(&weights),
    };
    let quantization = text_config.get("quantization").or_else(|| text_config.get("quantization_config"));
    let num_parameters = summary::parameter_count(&weights, quantization);
    let storage = gguf_storage.unwrap_or_else(|| summary::storage(&weights, quantization, checkpoint_dtype(&weights)));
    let policy = resolved.dtype_policy(&weights.names().collect::<Vec<_>>())?;
    let weights = cast_weights(weights, target, &policy)?;
    // MLX reads lazily: the plugin checks the config and builds the model before any weight
    // is read, so a bad value fails fast; reading everything right after keeps that cost out
    // of the first request (and surfaces unreadable data at load).
    let handles: Vec<mlx_engine_plugin_api::Array> = weights.iter().map(|(_, a)| a.clone()).collect();
    let model =
        resolved.create_model(&text_config.to_string(), weights, format).map_err(|e| config_error(e, &source, path))?;
    mlx_engine_plugin_api::eval(&handles.iter().collect::<Vec<_>>())
        .map_err(|e| model_err(path, format!("cannot read the weights: {e}")))?;
    drop(handles);
    tracing::debug!("{}: {num_parameters} parameters ({storage}) read, computing in {}", path.display(), target.name());
    let context_length = text_config.get("max_position_embeddings").and_then(Value::as_u64).map(|n| n as usize);
    let vocab_size = text_config.get("vocab_size").and_then(Value::as_u64).map(|n| n as usize);
    let cache_layout = model.cache_layout();
    Ok(LoadedModel {
        model,
        path: path.to_path_buf(),
        source,
        model_type,
        provider: resolved.provider.to_string(),
        text_config,
        generation_config,
        context_length,
        vocab_size,
        dtype: target,
        num_parameters,
        storage,
        cache_layout,
        vision,
        vision_path,
    })
}

/// The vision add-on for a checkpoint whose config has a `vision_config`: `None` for text-only
/// configs; an error message (kept for the first image request, so the text model still
/// serves) when no add-on provides the model type or it cannot be built.
fn load_vision(
    path: &Path,
    host: &PluginHost,
    config: &Value,
    weights: Weights,
    format: WeightsFormat,
    dtype: DtypeChoice,
    device: Device,
) -> (Option<std::result::Result<VisionModel, String>>, VisionPath) {
    if config.get("vision_config").is_none() {
        return (None, VisionPath::None);
    }
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or_default();
    let mut path_taken = VisionPath::Unavailable;
    let build = || -> Result<VisionModel> {
        let resolved = host.resolve_vision(model_type)?;
        let taken = match (&resolved.via, &resolved.provider) {
            (Via::Fallback, _) => VisionPath::GenericFallback,
            (_, Provider::Plugin(p)) => VisionPath::AddOn(p.name.clone()),
            (_, Provider::Builtin(b)) => VisionPath::AddOn(b.name.to_string()),
        };
        let preprocessor = PreprocessorConfig::load(path)?
            .ok_or_else(|| model_err(path, "no preprocessor_config.json (the image processor settings)"))?;
        let target = match (dtype, device) {
            (DtypeChoice::BF16, _) => Dtype::BF16,
            (DtypeChoice::F16, _) => Dtype::F16,
            (DtypeChoice::Auto, Device::Gpu) => checkpoint_dtype(&weights),
            _ => Dtype::F32,
        };
        let policy = vec![DtypePolicy::Compute; weights.len()];
        let weights = cast_weights(weights, target, &policy)?;
        mlx_engine_plugin_api::eval(&weights.iter().map(|(_, a)| a).collect::<Vec<_>>())
            .map_err(|e| model_err(path, format!("cannot read the vision weights: {e}")))?;
        let addon = resolved.create_vision(&config.to_string(), weights, format)?;
        path_taken = taken;
        Ok(VisionModel { addon, preprocessor })
    };
    let built = build().map_err(|e| format!("{}: vision add-on for model type `{model_type}`: {e}", path.display()));
    (Some(built), path_taken)
}

/// Refuses token ids outside the model's embedding (`vocab_size` rows): MLX's gather would read
/// past the table (or crash) instead of failing.
pub fn check_token_ids<T: Copy + Into<i64>>(what: &str, ids: &[T], vocab_size: Option<usize>) -> Result<()> {
    let Some(vocab) = vocab_size else { return Ok(()) };
    match ids.iter().map(|&t| t.into()).enumerate().find(|&(_, t)| t < 0 || t >= vocab as i64) {
        Some((i, t)) => Err(Error::Param {
            name: what.into(),
            reason: format!(
                "token id {t} at position {i} is outside the model's vocabulary of {vocab} (ids 0 to {})",
                vocab - 1
            ),
        }),
        None => Ok(()),
    }
}

/// Loads the model folder `dir` in f32 on the current device (the simple path for tools).
pub fn load(dir: &Path, host: &PluginHost) -> Result<LoadedModel> {
    load_with(dir, host, DtypeChoice::Auto, Device::Cpu)
}

/// The tokenizer of a loaded model: its folder's tokenizer files, or the GGUF metadata.
pub fn load_tokenizer(m: &LoadedModel) -> Result<Tokenizer> {
    let tok = match &m.source {
        Source::Folder => Tokenizer::from_dir(&m.path)?,
        Source::Gguf { file, metadata } => Tokenizer::from_gguf(file, metadata)?,
    };
    // A tokenizer with ids past the embedding would hand the model rows that do not exist.
    if let Some(vocab) = m.vocab_size {
        if tok.vocab_size() > vocab {
            let (what, field) = match &m.source {
                Source::Folder => ("tokenizer.json", "config.json's `vocab_size`"),
                Source::Gguf { .. } => ("the GGUF tokenizer", "the GGUF's vocabulary size"),
            };
            return Err(model_err(
                &m.path,
                format!(
                    "{what} has {} tokens, more than the {vocab} rows of the model's embedding ({field})",
                    tok.vocab_size()
                ),
            ));
        }
    }
    Ok(tok)
}
