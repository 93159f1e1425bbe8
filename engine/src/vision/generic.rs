//! The generic VLM fallback: a llava-style vision add-on built into the engine, for checkpoints
//! whose `config.json` has a `vision_config` but whose top-level `model_type` no plugin or
//! built-in claims (`llava`, `llava-interleave-qwen`-style exports, ...). It composes a CLIP or
//! SigLIP tower (the shared ones in `plugin-api::nn::vision`) and a linear or two-layer-MLP
//! projector with whatever text architecture `text_config.model_type` resolves to, as
//! Hugging Face's `LlavaForConditionalGeneration` and mlx-vlm's `models/llava` do:
//!
//! 1. the tower's hidden states, taken at `vision_feature_layer` (before any final norm);
//! 2. `vision_feature_select_strategy`: `default` drops the first token (CLIP's class token),
//!    `full` keeps every token;
//! 3. `multi_modal_projector.linear_1` [-> `projector_hidden_act` -> `linear_2`];
//! 4. the prompt's `<image>` placeholder expanded to one `<image>` token per feature row, and
//!    the merge replacing those positions' embeddings by the rows, in order.
//!
//! The text model is never touched: features are divided by its `embeddings_scale` so an
//! architecture that scales its input embeddings (gemma3_text) sees them unscaled.

use mlx_engine_plugin_api::nn::vision::clip::ClipVision;
use mlx_engine_plugin_api::nn::vision::siglip::{SiglipVision, TowerConfig};
use mlx_engine_plugin_api::nn::Linear;
use mlx_engine_plugin_api::{
    concatenate, vision_factory, Array, Dtype, Error, ImagePrompt, Result, VisionAddOn, Weights, WeightsFormat,
};
use serde::Deserialize;
use serde_json::Value;

use crate::plugin_host::BuiltinArch;

/// The name the fallback is listed and reported under.
pub const NAME: &str = "generic-vlm";

inventory::submit! {
    BuiltinArch {
        name: NAME,
        text_types: &[],
        vision_types: &[],
        model: None,
        vision: Some(vision_factory::<GenericVlm>),
        fallback: true,
    }
}

/// Called from the plugin host's lookup of built-ins: a reference into this module, so the
/// linker keeps its object file (and the `inventory` registration in it) in every binary that
/// links the engine, even one that never names the fallback itself.
#[inline(never)]
pub fn anchor() -> &'static str {
    NAME
}

/// The towers the fallback builds, by `vision_config.model_type`.
pub const SUPPORTED_TOWERS: [&str; 2] = ["clip_vision_model", "siglip_vision_model"];

/// The text the chat template writes for an image, and the token it expands to (llava's and
/// its processor's `image_token`).
pub const IMAGE_TOKEN: &str = "<image>";

#[derive(Clone, Debug, Deserialize)]
pub struct TextPart {
    pub hidden_size: Option<i32>,
}

/// The keys of a llava `config.json` the fallback reads (Hugging Face's `LlavaConfig` names
/// and defaults).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub model_type: String,
    pub vision_config: Value,
    pub text_config: Option<TextPart>,
    /// transformers >= 4.52 writes `image_token_id`, older versions `image_token_index`.
    #[serde(default = "d_image_token", alias = "image_token_id")]
    pub image_token_index: i32,
    /// An index into the tower's hidden states (`0` = the embeddings, negative from the end).
    #[serde(default = "d_feature_layer")]
    pub vision_feature_layer: Value,
    #[serde(default = "d_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "d_projector_act")]
    pub projector_hidden_act: String,
}

fn d_image_token() -> i32 {
    32000
}
fn d_feature_layer() -> Value {
    Value::from(-2)
}
fn d_strategy() -> String {
    "default".into()
}
fn d_projector_act() -> String {
    "gelu".into()
}

enum Tower {
    Clip(ClipVision),
    Siglip(SiglipVision),
}

impl Tower {
    fn hidden_states(&self, pixels: &Array, n: usize) -> Result<Vec<Array>> {
        match self {
            Tower::Clip(t) => t.hidden_states(pixels, n),
            Tower::Siglip(t) => t.hidden_states(pixels, n),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum ProjectorAct {
    Gelu,
    GeluTanh,
    QuickGelu,
    Silu,
    Relu,
}

impl ProjectorAct {
    fn parse(name: &str) -> Result<ProjectorAct> {
        Ok(match name {
            "gelu" => ProjectorAct::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => ProjectorAct::GeluTanh,
            "quick_gelu" => ProjectorAct::QuickGelu,
            "silu" => ProjectorAct::Silu,
            "relu" => ProjectorAct::Relu,
            other => {
                return Err(Error::Config(format!(
                    "`projector_hidden_act` `{other}` is not supported (gelu, gelu_pytorch_tanh, gelu_new, gelu_fast, \
                     quick_gelu, silu, relu)"
                )))
            }
        })
    }

    fn apply(self, x: &Array) -> Result<Array> {
        match self {
            ProjectorAct::Gelu => x.gelu(),
            ProjectorAct::GeluTanh => x.gelu_approx(),
            ProjectorAct::QuickGelu => x.multiply(&x.multiply(&x.scalar_like(1.702)?)?.sigmoid()?),
            ProjectorAct::Silu => x.silu(),
            ProjectorAct::Relu => x.maximum(&x.scalar_like(0.0)?),
        }
    }
}

/// `linear_1`, or `linear_2(act(linear_1(x)))` when the checkpoint has `linear_2`.
struct Projector {
    linear_1: Linear,
    second: Option<(ProjectorAct, Linear)>,
}

const P1: &str = "multi_modal_projector.linear_1";
const P2: &str = "multi_modal_projector.linear_2";
const TOWER: &str = "vision_tower.vision_model";

impl Projector {
    /// Loads the projector for `vision` input features; its output width must be `text`. As in
    /// llava, a second layer maps `text` to `text`; whether there is one is the checkpoint's call.
    fn load(w: &mut Weights, vision: i32, text: i32, act: &str) -> Result<Projector> {
        let has_bias = |w: &Weights, p: &str| w.contains(&format!("{p}.bias"));
        let two = w.contains(&format!("{P2}.weight"));
        // The output width first, so a projector for another text model is named as such
        // rather than as a tensor of the wrong shape.
        let last = if two { P2 } else { P1 };
        if let Some(&out) = w.get(&format!("{last}.weight")).and_then(|a| a.shape().first().copied()).as_ref() {
            if out != text {
                return Err(Error::Config(format!(
                    "the multi_modal_projector's output width is {out}, but the text model's hidden size \
                     (text_config.hidden_size) is {text}: the projected image features cannot replace token embeddings"
                )));
            }
        }
        let b1 = has_bias(w, P1);
        let linear_1 = Linear::load(w, P1, (vision, text), b1, None)?;
        let second = if two {
            let b2 = has_bias(w, P2);
            Some((ProjectorAct::parse(act)?, Linear::load(w, P2, (text, text), b2, None)?))
        } else {
            None
        };
        Ok(Projector { linear_1, second })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let h = self.linear_1.forward(x)?;
        match &self.second {
            Some((act, l2)) => l2.forward(&act.apply(&h)?),
            None => Ok(h),
        }
    }
}

/// The fallback add-on: tower, feature selection, projector, llava merge.
pub struct GenericVlm {
    tower: Tower,
    projector: Projector,
    /// How many leading hidden states to compute (the selected one is the last).
    layers_needed: usize,
    drop_first: bool,
    /// Image tokens per image.
    tokens: usize,
    image_token: i32,
}

/// The tower's `model_type`, or an error listing the supported ones.
fn tower_type(c: &Config) -> Result<String> {
    let supported = SUPPORTED_TOWERS.join(", ");
    match c.vision_config.get("model_type") {
        Some(Value::String(t)) if SUPPORTED_TOWERS.contains(&t.as_str()) => Ok(t.clone()),
        Some(Value::String(t)) => Err(Error::Config(format!(
            "vision_config.model_type `{t}` is not a vision tower the generic VLM fallback knows (model type `{}` has \
             no dedicated vision add-on); supported towers: {supported}",
            c.model_type
        ))),
        _ => Err(Error::Config(format!(
            "vision_config.model_type is missing: the generic VLM fallback needs it to pick the tower ({supported})"
        ))),
    }
}

impl VisionAddOn for GenericVlm {
    type Config = Config;

    /// Fix 6 of the checkpoint notes: transformers v5 writes a CLIP/SigLIP tower as
    /// `vision_tower.{embeddings,encoder,...}`, hub llava checkpoints (and mlx-vlm) as
    /// `vision_tower.vision_model.*`; both load. Precomputed `position_ids` buffers are dropped,
    /// and so is a SigLIP pooling head (`head.*`, what SigLIP's own image embedding uses):
    /// llava reads hidden states, never the head.
    fn sanitize(_config: &Config, mut weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        let nested = weights.names().any(|n| n.starts_with("vision_tower.vision_model."));
        if !nested {
            weights.rename_prefix("vision_tower.", "vision_tower.vision_model.");
        }
        weights.retain(|n| !n.ends_with(".position_ids") && !n.starts_with("vision_tower.vision_model.head."));
        Ok(weights)
    }

    fn new(c: Config, mut w: Weights) -> Result<GenericVlm> {
        let kind = tower_type(&c)?;
        // The towers and projector here are dense; a quantized one would otherwise fail with a
        // message about the config's quantization entry, which is not the problem.
        if let Some(q) = w.names().find(|n| n.ends_with(".scales")) {
            return Err(Error::Weights(format!(
                "tensor `{q}` is quantized: the generic VLM fallback loads dense vision weights only"
            )));
        }
        let vc: TowerConfig = serde_json::from_value(c.vision_config.clone())
            .map_err(|e| Error::Config(format!("vision_config ({kind}): {e}")))?;
        let text = c.text_config.as_ref().and_then(|t| t.hidden_size).ok_or_else(|| {
            Error::Config("text_config.hidden_size is missing (the width image features must have)".into())
        })?;
        let (tower, extra) = if kind == "clip_vision_model" {
            (Tower::Clip(ClipVision::load(&mut w, TOWER, &vc)?), 1)
        } else {
            (Tower::Siglip(SiglipVision::load(&mut w, TOWER, &vc, None, None)?), 0)
        };
        // After the load, which checked the sizes (a zero patch_size must not divide here).
        let n = vc.patches_per_side() as usize;
        let layers = vc.num_hidden_layers as i64;
        let index = match c.vision_feature_layer.as_i64() {
            Some(i) if i < 0 && i >= -(layers + 1) => layers + 1 + i,
            Some(i) if (0..=layers).contains(&i) => i,
            _ => {
                return Err(Error::Config(format!(
                    "vision_feature_layer {} is not one index into the tower's {} hidden states (lists of layers are \
                     not supported)",
                    c.vision_feature_layer,
                    layers + 1
                )))
            }
        };
        let drop_first = match c.vision_feature_select_strategy.as_str() {
            "default" => true,
            "full" => false,
            other => {
                return Err(Error::Config(format!(
                    "vision_feature_select_strategy `{other}` is not supported (default, full)"
                )))
            }
        };
        let projector = Projector::load(&mut w, vc.hidden_size, text, &c.projector_hidden_act)?;
        w.expect_consumed()?;
        Ok(GenericVlm {
            tower,
            projector,
            layers_needed: index as usize,
            drop_first,
            tokens: n * n + extra - usize::from(drop_first),
            image_token: c.image_token_index,
        })
    }

    /// llava's processor: each `<image>` becomes one `<image>` per feature row (the tower takes
    /// one fixed size, so every image gives the same count).
    fn image_prompt(&self, _height: i32, _width: i32) -> Result<ImagePrompt> {
        Ok(ImagePrompt { placeholder: IMAGE_TOKEN.into(), expansion: IMAGE_TOKEN.repeat(self.tokens) })
    }

    fn encode(&self, pixels: &Array) -> Result<Array> {
        let mut states = self.tower.hidden_states(pixels, self.layers_needed)?;
        let h = states.pop().expect("the embeddings at least");
        let h = if self.drop_first { h.slice_axis(1, 1, h.dim(1)?)? } else { h };
        let f = self.projector.forward(&h)?;
        f.reshape(&[f.dim(1)?, f.dim(2)?])
    }

    fn merge(&self, input_ids: &Array, text_embeddings: &Array, features: &[Array], scale: f32) -> Result<Array> {
        let ids: Vec<i32> = input_ids.astype(Dtype::I32)?.to_vec()?;
        let slots = ids.iter().filter(|&&t| t == self.image_token).count();
        let rows: i32 = features.iter().map(|f| f.dim(0)).sum::<Result<i32>>()?;
        if slots != rows as usize {
            return Err(Error::Boundary(format!(
                "generic VLM: the prompt has {slots} image tokens (id {}), but {} image(s) give {rows} feature rows",
                self.image_token,
                features.len()
            )));
        }
        let dtype = text_embeddings.dtype();
        let (l, d) = (ids.len() as i32, text_embeddings.dim(-1)?);
        let mut parts = vec![text_embeddings.reshape(&[l, d])?];
        let inv = Array::scalar(f64::from(scale), Dtype::F32)?;
        for f in features {
            if f.dim(-1)? != d {
                return Err(Error::Boundary(format!(
                    "generic VLM: image features are {} wide, the text embeddings {d}",
                    f.dim(-1)?
                )));
            }
            parts.push(if scale == 1.0 { f.astype(dtype)? } else { f.divide(&inv)?.astype(dtype)? });
        }
        // One gather from [text rows; image rows]: position i takes the next image row if it
        // holds the image token, else its own text row.
        let mut next = l;
        let index: Vec<i32> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == self.image_token {
                    next += 1;
                    next - 1
                } else {
                    i as i32
                }
            })
            .collect();
        let refs: Vec<&Array> = parts.iter().collect();
        concatenate(&refs, 0)?.take(&Array::from_slice(&index, &[l])?, 0)?.reshape(&[1, l, d])
    }
}
