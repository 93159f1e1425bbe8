//! The safe traits an architecture implements, and the forward context the engine provides.

use std::collections::BTreeMap;

use crate::array::Array;
use crate::distributed::Group;
use crate::error::{Error, Result};
use crate::gguf::GgufInfo;

/// What kind of KV cache one layer needs; the engine owns and manages the cache itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCache {
    /// Attention over every previous position.
    Full,
    /// Attention over the last `window` positions only (gemma3's local layers).
    SlidingWindow { window: u32 },
}

/// Where the checkpoint's tensors came from, so `sanitize` can undo format differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WeightsFormat {
    /// MLX-converted safetensors (mlx-lm naming).
    Mlx = 0,
    /// Hugging Face safetensors (transformers naming).
    HuggingFace = 1,
    /// GGUF (llama.cpp naming and layouts, already renamed by the engine's GGUF mapper).
    Gguf = 2,
}

impl WeightsFormat {
    pub fn from_code(code: u32) -> Result<WeightsFormat> {
        match code {
            0 => Ok(WeightsFormat::Mlx),
            1 => Ok(WeightsFormat::HuggingFace),
            2 => Ok(WeightsFormat::Gguf),
            _ => Err(Error::Abi(format!("unknown weights format code {code}"))),
        }
    }
}

/// Which dtype the engine keeps a checkpoint tensor in when it converts the weights to the
/// compute dtype (codes cross the ABI: append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DtypePolicy {
    /// Converted to the compute dtype (floating-point tensors; packed integers never change).
    Compute = 0,
    /// Kept as stored in the checkpoint.
    Stored = 1,
    /// Converted to float32 (norms or routers that must not lose precision).
    F32 = 2,
}

impl DtypePolicy {
    pub fn from_code(code: u32) -> Result<DtypePolicy> {
        match code {
            0 => Ok(DtypePolicy::Compute),
            1 => Ok(DtypePolicy::Stored),
            2 => Ok(DtypePolicy::F32),
            _ => Err(Error::Abi(format!("unknown dtype policy code {code}"))),
        }
    }
}

/// Extra per-call attention settings some architectures need.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionOptions {
    /// `tanh(scores / cap) * cap` before the softmax when set (gemma2-style softcapping).
    pub logit_softcap: Option<f32>,
}

/// Where the tokens of a forward pass sit in their sequences, for rotary embeddings.
#[derive(Clone, Debug)]
pub enum Positions {
    /// Every row's tokens are at `offset + i` (`i` along the sequence axis).
    Offset(i32),
    /// Row `b`'s tokens are at `offsets[b] + i`; `offsets` is `[B]` int32. Left-padded batches:
    /// a row's padding gets negative positions, and the engine's masks keep every real token
    /// from attending to it.
    PerRow(Array),
    /// Explicit positions `[B, L]` int32 (prompts whose positions do not advance one per token).
    Explicit(Array),
}

/// The engine's side of a forward pass: positions and attention through its KV cache.
///
/// The architecture never sees the cache: it asks for the position of the first new token of a
/// layer (for RoPE) and hands new keys and values to `attention`, which appends them to the
/// engine-owned cache, builds the right mask (causal, sliding window, rotated or trimmed
/// buffers) and runs attention.
pub trait ForwardContext {
    /// Absolute position of the first token of this forward pass in `layer`, when every row
    /// has the same one; an error for a batch whose rows sit at different positions (read
    /// [`ForwardContext::positions`] instead).
    fn offset(&self, layer: usize) -> Result<i32>;

    /// The positions of this forward pass's tokens in `layer` (what rotary embeddings need).
    /// Built-in contexts override this; the default serves single sequences.
    fn positions(&self, layer: usize) -> Result<Positions> {
        Ok(Positions::Offset(self.offset(layer)?))
    }

    /// Appends `k`/`v` (`[B, Hkv, L, D]`) to layer `layer`'s cache and attends `q`
    /// (`[B, Hq, L, D]`) over everything cached, returning `[B, Hq, L, D]`.
    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> Result<Array>;

    /// Whether the caller reads only the last position of this pass's output: a prefill's
    /// final chunk, whose last token's logits start the generation (ABI 1.4). A model should
    /// then run its output head over that position alone and return `[B, 1, vocab]`
    /// ([`nn::output_positions`](crate::nn::output_positions)); every position still goes
    /// through the layers, whose keys and values the cache keeps. Over a 2048-token chunk and a
    /// 128k vocabulary the head over every position is a 1 TFLOP matrix product and 1 GiB of
    /// logits. Returning every position stays correct (plugins of 1.3 and before do).
    fn last_position_only(&self) -> bool {
        false
    }
}

/// The input of a forward pass: token ids `[B, L]` or input embeddings `[B, L, D]` (for
/// vision-merged prompts).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Tokens(&'a Array),
    Embeddings(&'a Array),
}

/// A checkpoint's tensors by name, with errors that name the missing or mismatched tensor.
#[derive(Debug, Default, Clone)]
pub struct Weights {
    map: BTreeMap<String, Array>,
}

impl Weights {
    pub fn new() -> Weights {
        Weights::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, a: Array) {
        self.map.insert(name.into(), a);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Array> {
        self.map.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<Array> {
        self.map.remove(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Array)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Removes and returns a required tensor.
    pub fn take(&mut self, name: &str) -> Result<Array> {
        self.map.remove(name).ok_or_else(|| {
            if crate::declare::recording() {
                Error::Weights(format!(
                    "tensor `{name}` is taken without a shape, so the conformance kit cannot make it up: load it \
                     with `Weights::take_shaped` (or an `nn` loader), or check the plugin with a checkpoint"
                ))
            } else {
                Error::Weights(format!("tensor `{name}` is missing from the checkpoint"))
            }
        })
    }

    /// Removes and returns a required tensor after checking its shape. This is also how a
    /// model declares the shape to the conformance kit (see [`crate::declare`]).
    pub fn take_shaped(&mut self, name: &str, shape: &[i32]) -> Result<Array> {
        if !self.map.contains_key(name) && crate::declare::record(name, shape) {
            return Array::zeros(shape, crate::Dtype::F32);
        }
        let a = self.take(name)?;
        if a.shape() != shape {
            return Err(Error::Weights(format!("tensor `{name}` has shape {:?}, expected {shape:?}", a.shape())));
        }
        Ok(a)
    }

    /// Fails when tensors are left over after a model took what it needs: a checkpoint with
    /// unexpected tensors is usually the wrong architecture or a bad conversion, so say so
    /// at load (as mlx-lm's strict loading does).
    pub fn expect_consumed(&self) -> Result<()> {
        if self.map.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.names().take(5).collect();
        let more = if self.map.len() > 5 { format!(" and {} more", self.map.len() - 5) } else { String::new() };
        Err(Error::Weights(format!("unexpected tensors in the checkpoint: {}{more}", names.join(", "))))
    }

    /// Renames every tensor with a prefix `from` to start with `to` instead.
    pub fn rename_prefix(&mut self, from: &str, to: &str) {
        let keys: Vec<String> = self.map.keys().filter(|k| k.starts_with(from)).cloned().collect();
        for k in keys {
            if let Some(a) = self.map.remove(&k) {
                self.map.insert(format!("{to}{}", &k[from.len()..]), a);
            }
        }
    }

    /// Keeps only the tensors for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.map.retain(|k, _| keep(k));
    }
}

impl FromIterator<(String, Array)> for Weights {
    fn from_iter<I: IntoIterator<Item = (String, Array)>>(iter: I) -> Self {
        Weights { map: iter.into_iter().collect() }
    }
}

impl IntoIterator for Weights {
    type Item = (String, Array);
    type IntoIter = std::collections::btree_map::IntoIter<String, Array>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter()
    }
}

/// A text architecture: token ids (or embeddings) in, logits out.
///
/// Built from the text part of `config.json` (deserialised into `Config`) and the sanitized
/// weights. Reads like mlx-lm's Python file for the architecture.
pub trait ModelArch: Sized + Send + 'static {
    type Config: serde::de::DeserializeOwned;

    /// Checks the config's values (positive sizes, divisible head counts, known activations;
    /// see [`crate::config_check::ConfigCheck`]) before `sanitize` and `new` see any weight.
    /// The error names the field.
    fn validate(_config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Renames, drops or transforms checkpoint tensors into the names `new` expects.
    fn sanitize(_config: &Self::Config, weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        Ok(weights)
    }

    fn new(config: Self::Config, weights: Weights) -> Result<Self>;

    /// The `config.json` equivalent of a GGUF file of this architecture, built from its
    /// metadata (the engine adds `quantization` and the tokenizer's token ids). `None`, the
    /// default, means the architecture does not load GGUF files.
    fn config_from_gguf(_gguf: &GgufInfo) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// The dtype the engine keeps checkpoint tensor `name` in (before `sanitize`, so with the
    /// checkpoint's names); by default every floating-point tensor takes the compute dtype.
    fn dtype_policy(_name: &str) -> DtypePolicy {
        DtypePolicy::Compute
    }

    /// One entry per layer that attends through the context.
    fn cache_layout(&self) -> Vec<LayerCache>;

    /// Logits `[B, L, vocab]` for the input; `[B, 1, vocab]`, the last position's, when
    /// [`ForwardContext::last_position_only`] says so (the engine counts on a model built
    /// against plugin-api 1.4 or later to honour it).
    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array>;

    /// Token embeddings `[B, L, D]` as [`Input::Embeddings`] takes them: `forward` of
    /// `Embeddings(embed_tokens(ids))` equals `forward` of `Tokens(ids)`.
    fn embed_tokens(&self, ids: &Array) -> Result<Array>;

    /// The factor `forward` multiplies [`Input::Embeddings`] by before the first layer (gemma
    /// models scale by `sqrt(hidden_size)`); 1 by default. Whoever merges features that already
    /// live in the first layer's input space into `embed_tokens`' output (image features from a
    /// projector) divides them by it, so a generic merger needs no architecture knowledge.
    fn embeddings_scale(&self) -> f32 {
        1.0
    }

    /// Splits the model for tensor parallelism over `group` (ABI 1.2), as mlx-lm's `shard`:
    /// each rank keeps its slice of the attention heads and MLP features
    /// ([`nn::shard`](crate::nn::shard)), and the layers that gather the slices back sum over
    /// the group in `forward`. Afterwards every rank's `forward` returns the whole logits, and
    /// the engine-owned cache holds the rank's own KV heads only (it is shaped by what
    /// `attention` receives). Called at most once, before any forward. By default the
    /// architecture cannot be sharded.
    fn shard(&mut self, group: &Group) -> Result<()> {
        Err(Error::Config(format!(
            "this architecture does not support tensor parallelism (asked to shard over {} ranks)",
            group.size()
        )))
    }

    /// Splits the model's layers over `group` (ABI 1.3), as mlx-lm's `pipeline`: each rank
    /// keeps a contiguous slice of the layers ([`nn::pipeline::PipelineStage`](crate::nn::pipeline::PipelineStage)
    /// says which, and carries the hidden states between the ranks in `forward`); afterwards
    /// [`cache_layout`](ModelArch::cache_layout) lists the rank's layers only, `forward` numbers
    /// them from 0 in its calls to the context, and every rank's `forward` returns the whole
    /// logits. Called at most once, before any forward, instead of [`shard`](ModelArch::shard).
    /// By default the architecture cannot be split so.
    fn pipeline(&mut self, group: &Group) -> Result<()> {
        Err(Error::Config(format!(
            "this architecture does not support pipeline parallelism (asked to split its layers over {} ranks)",
            group.size()
        )))
    }
}

/// How images enter a prompt: the text the chat template writes for each image, and the text
/// that replaces it for one image (its image-token span), which the engine expands before
/// tokenizing, as the Hugging Face processors do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePrompt {
    pub placeholder: String,
    pub expansion: String,
}

/// A vision tower + projector that turns images into features the text model reads at its
/// image-token positions. The engine decodes and preprocesses images (the checkpoint's
/// `preprocessor_config.json`), memoizes `encode`'s features per image, and prefills the
/// merged embeddings through the text model like any prompt.
pub trait VisionAddOn: Sized + Send + 'static {
    type Config: serde::de::DeserializeOwned;

    fn sanitize(_config: &Self::Config, weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        Ok(weights)
    }

    /// Built from the whole `config.json` and the checkpoint's vision tensors
    /// (`vision_tower.*`, `multi_modal_projector.*`).
    fn new(config: Self::Config, weights: Weights) -> Result<Self>;

    /// The placeholder and its expansion for an image of `height x width` preprocessed pixels.
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt>;

    /// The features of one image, `[N, D]` (N = its image tokens, D = the text model's
    /// hidden size), from its preprocessed pixels `[1, H, W, 3]` (f32).
    fn encode(&self, pixels: &Array) -> Result<Array>;

    /// The prompt's input embeddings `[1, L, D]` from its ids `[1, L]`, its text embeddings
    /// (the text model's `embed_tokens`) and each image's features, in prompt order.
    /// `embeddings_scale` is the text model's [`ModelArch::embeddings_scale`].
    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> Result<Array>;
}

/// Object-safe view of a loaded text model, used by the engine for plugin-loaded and built-in
/// architectures alike.
pub trait DynModel: Send {
    fn cache_layout(&self) -> Vec<LayerCache>;
    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array>;
    fn embed_tokens(&self, ids: &Array) -> Result<Array>;
    /// [`ModelArch::embeddings_scale`]; fails only when a plugin's call fails.
    fn embeddings_scale(&self) -> Result<f32>;
    /// [`ModelArch::shard`]. A wrapper must forward it; the default refuses, as an
    /// architecture that does not implement it does.
    fn shard(&mut self, group: &Group) -> Result<()> {
        Err(Error::Config(format!("this model cannot be sharded (asked for {} ranks)", group.size())))
    }
    /// [`ModelArch::pipeline`]; a wrapper must forward it, as `shard`.
    fn pipeline(&mut self, group: &Group) -> Result<()> {
        Err(Error::Config(format!("this model cannot be split into a pipeline (asked for {} ranks)", group.size())))
    }
    /// Whether `forward` honours [`ForwardContext::last_position_only`]: every architecture
    /// built against this plugin-api, and plugins of ABI 1.4 or later. A wrapper must forward
    /// it; the default, no, only costs the engine the cheaper prefill plan.
    fn honours_last_position_only(&self) -> bool {
        false
    }
}

impl<M: ModelArch> DynModel for M {
    fn cache_layout(&self) -> Vec<LayerCache> {
        ModelArch::cache_layout(self)
    }
    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        ModelArch::forward(self, input, ctx)
    }
    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        ModelArch::embed_tokens(self, ids)
    }
    fn embeddings_scale(&self) -> Result<f32> {
        Ok(ModelArch::embeddings_scale(self))
    }
    fn shard(&mut self, group: &Group) -> Result<()> {
        ModelArch::shard(self, group)
    }
    fn pipeline(&mut self, group: &Group) -> Result<()> {
        ModelArch::pipeline(self, group)
    }
    fn honours_last_position_only(&self) -> bool {
        true
    }
}

/// Object-safe view of a loaded vision add-on.
pub trait DynVision: Send {
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt>;
    fn encode(&self, pixels: &Array) -> Result<Array>;
    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> Result<Array>;
}

impl<V: VisionAddOn> DynVision for V {
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt> {
        VisionAddOn::image_prompt(self, height, width)
    }
    fn encode(&self, pixels: &Array) -> Result<Array> {
        VisionAddOn::encode(self, pixels)
    }
    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> Result<Array> {
        VisionAddOn::merge(self, input_ids, text_embeddings, features, embeddings_scale)
    }
}

/// Builds a text model from a model type, the text config JSON and weights.
pub type ModelFactory = fn(config_json: &str, weights: Weights, format: WeightsFormat) -> Result<Box<dyn DynModel>>;
/// [`ModelArch::config_from_gguf`] of one architecture.
pub type GgufConfigHook = fn(gguf: &GgufInfo) -> Result<Option<serde_json::Value>>;
/// [`ModelArch::dtype_policy`] of one architecture.
pub type DtypePolicyHook = fn(name: &str) -> DtypePolicy;

/// What a plugin exports for one text model type.
#[derive(Clone, Copy)]
pub struct TextEntry {
    pub model_type: &'static str,
    pub factory: ModelFactory,
    pub gguf_config: GgufConfigHook,
    pub dtype_policy: DtypePolicyHook,
}

impl TextEntry {
    /// The entry of architecture `M` for `model_type`.
    pub const fn of<M: ModelArch>(model_type: &'static str) -> TextEntry {
        TextEntry {
            model_type,
            factory: model_factory::<M>,
            gguf_config: M::config_from_gguf,
            dtype_policy: M::dtype_policy,
        }
    }
}
/// Builds a vision add-on from the full config JSON and weights.
pub type VisionFactory = fn(config_json: &str, weights: Weights, format: WeightsFormat) -> Result<Box<dyn DynVision>>;

/// Parses the config, naming the field that does not fit (`field `rms_norm_eps`: invalid
/// type: string "x", expected f32`). No line and column: the engine hands over re-serialised
/// JSON, whose positions match nothing the user wrote.
fn parse_config<C: serde::de::DeserializeOwned>(config_json: &str) -> Result<C> {
    let de = &mut serde_json::Deserializer::from_str(config_json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends " at line L column C"; drop it.
        let inner = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        if path == "." {
            Error::Config(inner)
        } else {
            Error::Config(format!("field `{path}`: {inner}"))
        }
    })
}

/// The [`ModelFactory`] of a [`ModelArch`]: parse config, sanitize, construct.
pub fn model_factory<M: ModelArch>(
    config_json: &str,
    weights: Weights,
    format: WeightsFormat,
) -> Result<Box<dyn DynModel>> {
    let mut weights = weights;
    let config: M::Config = parse_config(config_json)?;
    M::validate(&config)?;
    if crate::declare::requested(&mut weights) {
        return Err(crate::declare::answer(|| M::new(config, Weights::new()).map(drop)));
    }
    let weights = M::sanitize(&config, weights, format)?;
    Ok(Box::new(M::new(config, weights)?))
}

/// The [`VisionFactory`] of a [`VisionAddOn`].
pub fn vision_factory<V: VisionAddOn>(
    config_json: &str,
    weights: Weights,
    format: WeightsFormat,
) -> Result<Box<dyn DynVision>> {
    let config: V::Config = parse_config(config_json)?;
    let weights = V::sanitize(&config, weights, format)?;
    Ok(Box::new(V::new(config, weights)?))
}
