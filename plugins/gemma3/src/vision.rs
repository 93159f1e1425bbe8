//! Gemma 3's vision add-on, as mlx-vlm's `models/gemma3/{vision,gemma3}.py`: a SigLIP tower
//! over NHWC pixels, then the projector (average-pool the patch grid down to
//! `mm_tokens_per_image`, `(1 + w)` RMSNorm, project to the text width), and a merge that puts
//! the features at the image-token positions.

use mlx_engine_plugin_api::fast::{scaled_dot_product_attention, AttnMask};
use mlx_engine_plugin_api::nn::{LayerNorm, Linear, RmsNorm};
use mlx_engine_plugin_api::{
    concatenate, Array, Dtype, Error, ImagePrompt, Result, VisionAddOn, Weights, WeightsFormat,
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub patch_size: i32,
    #[serde(default = "d_image_size")]
    pub image_size: i32,
    #[serde(default = "d_channels")]
    pub num_channels: i32,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TextPart {
    pub hidden_size: i32,
    #[serde(default = "d_mm_tokens")]
    pub mm_tokens_per_image: i32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vision_config: VisionConfig,
    pub text_config: TextPart,
    #[serde(default = "d_image_token")]
    pub image_token_index: i32,
    /// The prompt positions holding this id get zero embeddings, as the reference does.
    #[serde(default)]
    pub pad_token_id: Option<i32>,
    /// The width whose square root image features are divided by. mlx-vlm reads it from the top
    /// level and defaults it to 2048 when absent; the text width is what the text model scales
    /// by, so that is the default here.
    pub hidden_size: Option<i32>,
}

fn d_image_size() -> i32 {
    224
}
fn d_channels() -> i32 {
    3
}
fn d_eps() -> f32 {
    1e-6
}
fn d_mm_tokens() -> i32 {
    256
}
fn d_image_token() -> i32 {
    262144
}

/// The chat template's image marker and the tokens the processor writes around an image.
const BOI: &str = "<start_of_image>";
const EOI: &str = "<end_of_image>";
const IMAGE_TOKEN: &str = "<image_soft_token>";

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i32,
    scale: f32,
}

impl EncoderLayer {
    fn load(w: &mut Weights, p: &str, c: &VisionConfig) -> Result<EncoderLayer> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let lin = |w: &mut Weights, name: &str, shape| Linear::load(w, &format!("{p}.{name}"), shape, true, None);
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), d, c.layer_norm_eps)?,
            q_proj: lin(w, "self_attn.q_proj", (d, d))?,
            k_proj: lin(w, "self_attn.k_proj", (d, d))?,
            v_proj: lin(w, "self_attn.v_proj", (d, d))?,
            out_proj: lin(w, "self_attn.out_proj", (d, d))?,
            layer_norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), d, c.layer_norm_eps)?,
            fc1: lin(w, "mlp.fc1", (d, f))?,
            fc2: lin(w, "mlp.fc2", (f, d))?,
            heads: c.num_attention_heads,
            scale: ((d / c.num_attention_heads) as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let h = self.layer_norm1.forward(x)?;
        let heads = |a: Array| mlx_engine_plugin_api::nn::split_heads(&a, self.heads);
        let (q, k, v) =
            (heads(self.q_proj.forward(&h)?)?, heads(self.k_proj.forward(&h)?)?, heads(self.v_proj.forward(&h)?)?);
        let attn = scaled_dot_product_attention(&q, &k, &v, self.scale, AttnMask::None)?;
        let h = x.add(&self.out_proj.forward(&mlx_engine_plugin_api::nn::merge_heads(&attn)?)?)?;
        // mlx-vlm's `GELU(approx="precise")` is the tanh approximation.
        let r = self.fc2.forward(&self.fc1.forward(&self.layer_norm2.forward(&h)?)?.gelu_approx()?)?;
        h.add(&r)
    }
}

pub struct Gemma3Vision {
    /// `[D, P, P, C]`, MLX's conv layout.
    patch_embedding: Array,
    patch_bias: Array,
    position_embedding: Array,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    soft_emb_norm: RmsNorm,
    /// `[vision hidden, text hidden]`.
    projection: Array,
    patch_size: i32,
    /// Patches per side of the (square) image, and pooled tokens per side.
    patches: i32,
    tokens_per_side: i32,
    image_size: i32,
    image_token: i32,
    pad_token: i32,
    feature_scale: f32,
}

const TOWER: &str = "vision_tower.vision_model";

impl VisionAddOn for Gemma3Vision {
    type Config = Config;

    /// Hugging Face checkpoints store the patch convolution as `[D, C, P, P]`.
    fn sanitize(config: &Config, mut weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        let name = format!("{TOWER}.embeddings.patch_embedding.weight");
        if let Some(w) = weights.remove(&name) {
            let c = config.vision_config.num_channels;
            let w = if w.ndim() == 4 && w.dim(1)? == c && w.dim(3)? != c { w.transpose(&[0, 2, 3, 1])? } else { w };
            weights.insert(name, w);
        }
        Ok(weights)
    }

    fn new(c: Config, mut w: Weights) -> Result<Gemma3Vision> {
        let v = &c.vision_config;
        if v.patch_size <= 0 || v.image_size % v.patch_size != 0 {
            return Err(Error::Config(format!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        let patches = v.image_size / v.patch_size;
        let tokens_per_side = (c.text_config.mm_tokens_per_image as f64).sqrt().round() as i32;
        if tokens_per_side * tokens_per_side != c.text_config.mm_tokens_per_image
            || tokens_per_side == 0
            || patches % tokens_per_side != 0
        {
            return Err(Error::Config(format!(
                "text_config.mm_tokens_per_image {} must be a square whose side divides the {patches} patches per side",
                c.text_config.mm_tokens_per_image
            )));
        }
        let d = v.hidden_size;
        let e = format!("{TOWER}.embeddings");
        let patch_embedding =
            w.take_shaped(&format!("{e}.patch_embedding.weight"), &[d, v.patch_size, v.patch_size, v.num_channels])?;
        let patch_bias = w.take_shaped(&format!("{e}.patch_embedding.bias"), &[d])?;
        let position_embedding = w.take_shaped(&format!("{e}.position_embedding.weight"), &[patches * patches, d])?;
        let layers = (0..v.num_hidden_layers)
            .map(|i| EncoderLayer::load(&mut w, &format!("{TOWER}.encoder.layers.{i}"), v))
            .collect::<Result<Vec<_>>>()?;
        // mlx-vlm builds this norm with LayerNorm's default eps, not `layer_norm_eps`.
        let post_layernorm = LayerNorm::load(&mut w, &format!("{TOWER}.post_layernorm"), d, 1e-5)?;
        let soft_emb_norm =
            RmsNorm::load_one_plus(&mut w, "multi_modal_projector.mm_soft_emb_norm", d, v.layer_norm_eps)?;
        let projection =
            w.take_shaped("multi_modal_projector.mm_input_projection_weight", &[d, c.text_config.hidden_size])?;
        w.expect_consumed()?;
        Ok(Gemma3Vision {
            patch_embedding,
            patch_bias,
            position_embedding,
            layers,
            post_layernorm,
            soft_emb_norm,
            projection,
            patch_size: v.patch_size,
            patches,
            tokens_per_side,
            image_size: v.image_size,
            image_token: c.image_token_index,
            pad_token: c.pad_token_id.unwrap_or(0),
            feature_scale: (c.hidden_size.unwrap_or(c.text_config.hidden_size) as f32).sqrt(),
        })
    }

    /// What Gemma 3's processor writes for each `<start_of_image>`; the size is fixed (the
    /// processor resizes every image to `image_size`).
    fn image_prompt(&self, _height: i32, _width: i32) -> Result<ImagePrompt> {
        let tokens = IMAGE_TOKEN.repeat((self.tokens_per_side * self.tokens_per_side) as usize);
        Ok(ImagePrompt { placeholder: BOI.into(), expansion: format!("\n\n{BOI}{tokens}{EOI}\n\n") })
    }

    fn encode(&self, pixels: &Array) -> Result<Array> {
        let s = self.image_size;
        if pixels.shape() != [1, s, s, 3] {
            return Err(Error::Boundary(format!(
                "gemma3 vision: pixel values have shape {:?}, expected [1, {s}, {s}, 3]",
                pixels.shape()
            )));
        }
        let x = pixels.astype(self.patch_embedding.dtype())?;
        let p = self.patch_size;
        let x = x.conv2d(&self.patch_embedding, [p, p], [0, 0], [1, 1], 1)?.add(&self.patch_bias)?;
        let d = x.dim(-1)?;
        let mut h = x.reshape(&[1, self.patches * self.patches, d])?.add(&self.position_embedding)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        let h = self.post_layernorm.forward(&h)?;
        // Average-pool the patch grid [n, n] to [t, t] in row-major order.
        let (n, t) = (self.patches, self.tokens_per_side);
        let k = n / t;
        let pooled = h.reshape(&[1, t, k, t, k, d])?.mean(&[2, 4], false)?.reshape(&[1, t * t, d])?;
        let normed = self.soft_emb_norm.forward(&pooled)?;
        normed.matmul(&self.projection)?.astype(h.dtype())?.reshape(&[t * t, -1])
    }

    /// Image features divided by `sqrt(hidden)` (the text model multiplies its input by about
    /// that), in order at the image-token positions; pad-token positions zeroed; text
    /// embeddings elsewhere.
    fn merge(&self, input_ids: &Array, text_embeddings: &Array, features: &[Array], _scale: f32) -> Result<Array> {
        let ids: Vec<i32> = input_ids.astype(Dtype::I32)?.to_vec()?;
        let slots = ids.iter().filter(|&&t| t == self.image_token).count();
        let per_image = (self.tokens_per_side * self.tokens_per_side) as usize;
        if slots != features.len() * per_image {
            return Err(Error::Boundary(format!(
                "gemma3 vision: the prompt has {slots} image tokens, but {} image(s) give {} features",
                features.len(),
                features.len() * per_image
            )));
        }
        // One gather from [text rows; image rows; a zero row].
        let dtype = text_embeddings.dtype();
        let (l, d) = (ids.len() as i32, text_embeddings.dim(-1)?);
        let scale = Array::scalar(self.feature_scale as f64, Dtype::F32)?;
        let mut parts = vec![text_embeddings.reshape(&[l, d])?];
        for f in features {
            parts.push(f.divide(&scale)?.astype(dtype)?);
        }
        parts.push(Array::zeros(&[1, d], dtype)?);
        let zero_row = l + slots as i32;
        let mut next_image = l;
        let index: Vec<i32> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == self.image_token {
                    next_image += 1;
                    next_image - 1
                } else if t == self.pad_token {
                    zero_row
                } else {
                    i as i32
                }
            })
            .collect();
        let refs: Vec<&Array> = parts.iter().collect();
        concatenate(&refs, 0)?.take(&Array::from_slice(&index, &[l])?, 0)?.reshape(&[1, l, d])
    }
}
