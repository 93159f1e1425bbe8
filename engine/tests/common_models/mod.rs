//! Tiny random model folders written by the tests themselves, for every architecture the
//! workspace plugins provide: Hugging Face tensor names, a `config.json`, weights from MLX's
//! seeded normal generator (saved with `save_safetensors`), and one of the small tokenizers of
//! `tokenizer_fixtures` whose vocabulary is the model's. Also affine-quantized variants (with a
//! per-layer override) and their dequantized dense twins, and the helpers to load and run them.
//!
//! A test file includes it with `mod tokenizer_fixtures; mod common_models;`. The plugins are
//! found in the build's output folder (`target/<profile>/`), so `cargo build --workspace` must
//! have run first (`make test` does).
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use mlx_engine::api::io::save_safetensors;
use mlx_engine::api::runtime::Device;
use mlx_engine::api::{dequantize, quantize, random, Array, Dtype, Input};
use mlx_engine::cache::prompt_cache::DEFAULT_CAPACITY;
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::generate::StopReason;
use mlx_engine::model::{load_with, DtypeChoice, LoadedModel};
use mlx_engine::plugin_host::{HostOptions, PluginHost};
use mlx_engine::{Generation, LoadOptions, ModelKit};
use serde_json::{json, Map, Value};

use crate::tokenizer_fixtures::{bl_tokenizer_json, bl_tokens, sp_tokenizer_json, sp_tokens, write_json};

pub const HIDDEN: i32 = 64;
pub const LAYERS: usize = 2;
pub const HEADS: i32 = 4;
pub const KV_HEADS: i32 = 2;
pub const INTERMEDIATE: i32 = 128;
/// Small on purpose: the context-length checks use it.
pub const MAX_POS: usize = 64;
/// gemma3's sliding window (every other layer is local).
pub const WINDOW: u32 = 8;
pub const RMS_EPS: f64 = 1e-5;

/// The architecture variants under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// q/k/v projections with bias.
    Qwen2,
    /// Per-head RMSNorm of queries and keys, explicit `head_dim`.
    Qwen3,
    /// Llama with `rope_scaling` of type llama3.
    Llama3Rope,
    /// Llama with its own `lm_head` instead of tied embeddings.
    LlamaUntied,
    /// gemma3_text: q/k norms, four norms per layer, sliding window 8 on every other layer.
    Gemma3,
}

pub const ALL_ARCHS: [Arch; 6] =
    [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Llama3Rope, Arch::LlamaUntied, Arch::Gemma3];

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Llama3Rope | Arch::LlamaUntied => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3_text",
        }
    }

    pub fn head_dim(self) -> i32 {
        match self {
            Arch::Gemma3 => 32,
            _ => HIDDEN / HEADS,
        }
    }

    pub fn is_gemma(self) -> bool {
        self == Arch::Gemma3
    }

    /// The tokenizer a folder of this variant gets by default.
    pub fn default_tok(self) -> Tok {
        if self.is_gemma() {
            Tok::SentencePiece
        } else {
            Tok::ByteLevel
        }
    }
}

/// Which fixture tokenizer a folder gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tok {
    /// Byte-level BPE, 268 ids, EOS `<|endoftext|>` (0) and `<|im_end|>` (2), no BOS.
    ByteLevel,
    /// SentencePiece-style BPE, 279 ids, BOS `<s>` (1), EOS `</s>` (2).
    SentencePiece,
}

impl Tok {
    pub fn vocab(self) -> i32 {
        match self {
            Tok::ByteLevel => bl_tokens().len() as i32,
            Tok::SentencePiece => sp_tokens().len() as i32,
        }
    }

    pub fn bos(self) -> Option<u32> {
        match self {
            Tok::ByteLevel => None,
            Tok::SentencePiece => Some(1),
        }
    }

    /// The first id that is an ordinary token (not a special one).
    pub fn first_plain_id(self) -> u32 {
        3
    }
}

/// A tiny model in memory: its config and its tensors (HF names), ready to be written.
#[derive(Clone)]
pub struct TinyModel {
    pub arch: Arch,
    pub tok: Tok,
    pub config: Value,
    pub weights: Vec<(String, Array)>,
}

fn normal(shape: &[i32], scale: f64, seed: u64) -> Array {
    let key = random::key(seed).expect("random key");
    random::normal(shape, 0.0, scale, Dtype::F32, Some(&key)).expect("random normal")
}

/// Makes sure the engine (and so its MLX ops table) is linked into the test binary.
pub fn init() {
    let _ = mlx_engine::mlx::ffi::ops_table();
}

impl TinyModel {
    /// The variant with its usual tokenizer (byte-level for the llama family, SentencePiece for
    /// gemma3) and weights drawn from `seed`.
    pub fn new(arch: Arch, seed: u64) -> TinyModel {
        TinyModel::with_tok(arch, arch.default_tok(), seed)
    }

    pub fn with_tok(arch: Arch, tok: Tok, seed: u64) -> TinyModel {
        init();
        let (v, h, i, hd) = (tok.vocab(), HIDDEN, INTERMEDIATE, arch.head_dim());
        let (q_out, kv_out) = (HEADS * hd, KV_HEADS * hd);
        // (name, shape, kind): 'w' linear/embedding weight, 'n' norm scale, 'b' bias.
        let mut specs: Vec<(String, Vec<i32>, char)> = vec![("model.embed_tokens.weight".into(), vec![v, h], 'w')];
        for l in 0..LAYERS {
            let p = format!("model.layers.{l}");
            let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
            if arch.is_gemma() {
                norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
            }
            for n in norms {
                specs.push((format!("{p}.{n}.weight"), vec![h], 'n'));
            }
            for (name, shape) in
                [("q_proj", [q_out, h]), ("k_proj", [kv_out, h]), ("v_proj", [kv_out, h]), ("o_proj", [h, q_out])]
            {
                specs.push((format!("{p}.self_attn.{name}.weight"), shape.to_vec(), 'w'));
            }
            if arch == Arch::Qwen2 {
                for (name, n) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
                    specs.push((format!("{p}.self_attn.{name}.bias"), vec![n], 'b'));
                }
            }
            if matches!(arch, Arch::Qwen3 | Arch::Gemma3) {
                specs.push((format!("{p}.self_attn.q_norm.weight"), vec![hd], 'n'));
                specs.push((format!("{p}.self_attn.k_norm.weight"), vec![hd], 'n'));
            }
            for (name, shape) in [("gate_proj", [i, h]), ("up_proj", [i, h]), ("down_proj", [h, i])] {
                specs.push((format!("{p}.mlp.{name}.weight"), shape.to_vec(), 'w'));
            }
        }
        specs.push(("model.norm.weight".into(), vec![h], 'n'));
        if arch == Arch::LlamaUntied {
            specs.push(("lm_head.weight".into(), vec![v, h], 'w'));
        }
        let weights = specs
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape, kind))| {
                let a = normal(&shape, 0.05, seed.wrapping_mul(1000).wrapping_add(k as u64));
                // Llama-family norms scale by `w` (so start near 1); Gemma's by `1 + w`.
                let a = if kind == 'n' && !arch.is_gemma() { a.add(&a.scalar_like(1.0).unwrap()).unwrap() } else { a };
                (name, a)
            })
            .collect();
        TinyModel { arch, tok, config: config_json(arch, tok), weights }
    }

    pub fn vocab(&self) -> i32 {
        self.tok.vocab()
    }

    pub fn get(&self, name: &str) -> &Array {
        &self.weights.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
    }

    /// Writes config.json, model.safetensors and the tokenizer files into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("model folder");
        write_json(dir, "config.json", &self.config);
        let refs: Vec<(&str, &Array)> = self.weights.iter().map(|(n, a)| (n.as_str(), a)).collect();
        save_safetensors(&dir.join("model.safetensors"), &refs, &[]).expect("save model.safetensors");
        write_tokenizer(dir, self.tok);
    }

    /// Writes the folder into a new temporary directory.
    pub fn write_temp(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        self.write(dir.path());
        dir
    }

    /// Affine-quantizes every linear and embedding weight (`group_size`/`bits` by default, the
    /// `overrides` per layer prefix) and returns `(quantized, dense)`: the quantized model with
    /// `.weight` (packed uint32), `.scales`, `.biases` and a `quantization` config entry, and a
    /// plain model whose weights are exactly the dequantized ones, so the two differ only in
    /// the matmul path.
    pub fn quantized(&self, group_size: i32, bits: i32, overrides: &[(&str, i32, i32)]) -> (TinyModel, TinyModel) {
        let mut qcfg = Map::new();
        qcfg.insert("group_size".into(), json!(group_size));
        qcfg.insert("bits".into(), json!(bits));
        for (prefix, g, b) in overrides {
            qcfg.insert(prefix.to_string(), json!({"group_size": g, "bits": b}));
        }
        let (mut qw, mut dw) = (Vec::new(), Vec::new());
        for (name, a) in &self.weights {
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            let linear =
                a.ndim() == 2 && (name.contains("_proj.") || name.contains("embed_tokens") || name.contains("lm_head"));
            if !linear {
                qw.push((name.clone(), a.clone()));
                dw.push((name.clone(), a.clone()));
                continue;
            }
            let (g, b) =
                overrides.iter().find(|(p, _, _)| *p == prefix).map_or((group_size, bits), |&(_, g, b)| (g, b));
            let (wq, scales, biases) = quantize(a, g, b).expect("quantize");
            let dense = dequantize(&wq, &scales, Some(&biases), g, b).expect("dequantize");
            assert_eq!(wq.dtype(), Dtype::U32, "{name}: packed weights are uint32");
            qw.push((format!("{prefix}.weight"), wq));
            qw.push((format!("{prefix}.scales"), scales));
            qw.push((format!("{prefix}.biases"), biases));
            dw.push((name.clone(), dense));
        }
        let mut qconfig = self.config.clone();
        qconfig["quantization"] = Value::Object(qcfg);
        let quant = TinyModel { arch: self.arch, tok: self.tok, config: qconfig, weights: qw };
        let dense = TinyModel { arch: self.arch, tok: self.tok, config: self.config.clone(), weights: dw };
        (quant, dense)
    }

    /// A byte-level untied llama whose head only scores lowercase letters and the space (the
    /// other rows are zero, the kept ones drawn at a larger scale), so greedy decoding writes
    /// varied, printable ASCII and never an EOS: what the stop-string tests need.
    pub fn printable(seed: u64) -> TinyModel {
        let mut m = TinyModel::with_tok(Arch::LlamaUntied, Tok::ByteLevel, seed);
        let v = m.vocab();
        let keep: Vec<f32> = (0..v as u32)
            .map(|id| {
                let byte = id.checked_sub(3).filter(|&b| b < 256).map(|b| b as u8);
                f32::from(byte.is_some_and(|b| b.is_ascii_lowercase() || b == b' '))
            })
            .collect();
        let mask = Array::from_slice(&keep, &[v, 1]).expect("mask");
        let head = normal(&[v, HIDDEN], 1.0, seed.wrapping_mul(7919)).multiply(&mask).expect("mask head");
        m.set("lm_head.weight", head);
        m
    }

    /// A llama whose final norm is NaN, so every logit is.
    pub fn nan_logits(seed: u64) -> TinyModel {
        let mut m = TinyModel::new(Arch::Llama, seed);
        let norm = m.get("model.norm.weight").clone();
        m.set("model.norm.weight", norm.multiply(&norm.scalar_like(f64::NAN).unwrap()).unwrap());
        m
    }

    /// Replaces (or adds) one tensor.
    pub fn set(&mut self, name: &str, a: Array) {
        self.weights.retain(|(n, _)| n != name);
        self.weights.push((name.to_string(), a));
    }
}

/// The config.json of a variant.
pub fn config_json(arch: Arch, tok: Tok) -> Value {
    let mut c = json!({
        "model_type": arch.model_type(),
        "vocab_size": tok.vocab(),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": INTERMEDIATE,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": 10000.0,
        "max_position_embeddings": MAX_POS,
        "tie_word_embeddings": arch != Arch::LlamaUntied,
        "torch_dtype": "float32",
    });
    match arch {
        Arch::Qwen3 => c["head_dim"] = json!(arch.head_dim()),
        Arch::Llama3Rope => {
            c["rope_theta"] = json!(500000.0);
            // A small original context so every band of the llama3 rule is hit at head_dim 16.
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
        }
        Arch::Gemma3 => {
            let extra = json!({
                "head_dim": arch.head_dim(),
                "query_pre_attn_scalar": arch.head_dim(),
                "sliding_window": WINDOW,
                "sliding_window_pattern": 2,
                "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0,
                "rms_norm_eps": 1e-6,
            });
            for (k, v) in extra.as_object().expect("object") {
                c[k] = v.clone();
            }
        }
        _ => {}
    }
    c
}

/// tokenizer.json, tokenizer_config.json and generation_config.json for `tok`.
pub fn write_tokenizer(dir: &Path, tok: Tok) {
    match tok {
        Tok::ByteLevel => {
            write_json(dir, "tokenizer.json", &bl_tokenizer_json());
            write_json(dir, "tokenizer_config.json", &json!({"eos_token": "<|endoftext|>", "add_bos_token": false}));
            write_json(dir, "generation_config.json", &json!({"eos_token_id": 0}));
        }
        Tok::SentencePiece => {
            write_json(dir, "tokenizer.json", &sp_tokenizer_json(true));
            write_json(
                dir,
                "tokenizer_config.json",
                &json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}),
            );
            write_json(dir, "generation_config.json", &json!({"bos_token_id": 1, "eos_token_id": 2}));
        }
    }
}

// --- loading and running ------------------------------------------------------------------------

/// The plugin host of the standard search (which includes the build's `target/<profile>/`),
/// checked to provide every model type the tests write.
pub fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        init();
        let host = PluginHost::new(&HostOptions::standard(vec![], None)).expect("plugin host");
        for t in ["llama", "qwen2", "qwen3", "gemma3_text"] {
            if let Err(e) = host.resolve_text(t) {
                panic!(
                    "no plugin provides model type `{t}` ({e}); run `cargo build --workspace` first so the \
                     workspace plugins (libllama, libgemma3) are in target/<profile>/"
                );
            }
        }
        host
    })
}

/// Loads a model folder (or `.gguf` file) on the CPU in `dtype`.
pub fn load(path: &Path, dtype: DtypeChoice) -> LoadedModel {
    let _ = host();
    load_with(path, host(), dtype, Device::Cpu).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// The same load, returning the error.
pub fn try_load(path: &Path, dtype: DtypeChoice) -> mlx_engine::Result<LoadedModel> {
    load_with(path, host(), dtype, Device::Cpu)
}

/// Loads a model folder on its own worker thread, as hosts do (f32 on the CPU).
pub fn load_kit(path: &Path) -> ModelKit {
    let _ = host();
    try_load_kit(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

pub fn try_load_kit(path: &Path) -> mlx_engine::Result<ModelKit> {
    load_kit_with(path, CacheConfig::default(), DEFAULT_CAPACITY)
}

/// [`try_load_kit`] with KV cache settings and a prompt-cache capacity.
pub fn load_kit_with(path: &Path, cache: CacheConfig, capacity: usize) -> mlx_engine::Result<ModelKit> {
    let _ = host();
    let options = LoadOptions {
        dtype: DtypeChoice::F32,
        device: Device::Cpu,
        plugins: HostOptions::standard(vec![], None),
        cache,
        prompt_cache_capacity: capacity,
        ..Default::default()
    };
    ModelKit::load(path, options)
}

/// Reads a generation to its end, cancelling it once the first token has arrived: the tokens
/// received and the stop reason.
pub fn cancel_after_first_token(g: &mut Generation) -> (usize, Option<StopReason>) {
    let handle = g.cancel_handle();
    let mut tokens = 0;
    let mut reason = None;
    for r in g.by_ref() {
        let r = r.expect("result");
        tokens += r.tokens.len();
        if tokens > 0 {
            handle.cancel();
        }
        reason = r.stop_condition.map(|s| s.reason).or(reason);
    }
    (tokens, reason)
}

/// `n` ordinary token ids (no special tokens), deterministic in `seed`.
pub fn prompt(n: usize, tok: Tok, seed: u64) -> Vec<u32> {
    let first = tok.first_plain_id();
    let span = tok.vocab() as u64 - first as u64;
    (0..n as u64).map(|i| first + ((i * 37 + seed * 101 + 7) % span) as u32).collect()
}

pub fn ids(tokens: &[u32]) -> Array {
    let v: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    Array::from_slice(&v, &[1, v.len() as i32]).expect("ids")
}

/// One forward pass of `tokens` through `cache`: logits `[1, L, vocab]`.
pub fn forward(m: &LoadedModel, tokens: &[u32], cache: &mut KvCache) -> Array {
    m.model.forward(Input::Tokens(&ids(tokens)), cache).expect("forward")
}

/// Logits of the whole sequence in one pass from an empty cache.
pub fn full_forward(m: &LoadedModel, tokens: &[u32]) -> Array {
    let mut cache = KvCache::new(m.model.cache_layout());
    forward(m, tokens, &mut cache)
}

/// Logits of the sequence fed in `chunks` (sizes summing to its length) through one cache,
/// concatenated along the positions.
pub fn chunked_forward(m: &LoadedModel, tokens: &[u32], chunks: &[usize]) -> Array {
    assert_eq!(chunks.iter().sum::<usize>(), tokens.len(), "chunks cover the prompt");
    let mut cache = KvCache::new(m.model.cache_layout());
    let mut outs = Vec::new();
    let mut at = 0;
    for &n in chunks {
        assert_eq!(cache.len(), at, "cache length before a chunk");
        outs.push(forward(m, &tokens[at..at + n], &mut cache));
        at += n;
    }
    assert_eq!(cache.len(), tokens.len());
    let refs: Vec<&Array> = outs.iter().collect();
    mlx_engine::api::concatenate(&refs, 1).expect("concatenate")
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes");
    let (a, b) = (a.to_vec_f32().expect("read"), b.to_vec_f32().expect("read"));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(a: &Array) -> f32 {
    a.to_vec_f32().expect("read").iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `max |a - b| / max |b|`.
pub fn rel_diff(a: &Array, b: &Array) -> f32 {
    max_abs_diff(a, b) / max_abs(b)
}

/// Logits of the last position, `[vocab]`.
pub fn last_position(logits: &Array) -> Array {
    let l = logits.dim(1).expect("dim");
    logits.slice_axis(1, l - 1, l).expect("slice").reshape(&[-1]).expect("reshape")
}
