//! The SigLIP vision tower (as mlx-vlm's `models/gemma3/vision.py` and the SigLIP branch of
//! `models/llava/vision.py`): a biased patch convolution, learned position embeddings, a
//! pre-norm transformer encoder, and a final LayerNorm. The encoder layer is the same in CLIP,
//! so [`Encoder`] is shared with [`super::clip`].
//!
//! Pixels come in NHWC (`[1, H, W, C]`, MLX's conv layout); the checkpoint's patch convolution
//! may be in torch's `[D, C, P, P]` layout, which [`conv_weight_to_mlx`] fixes at load.

use serde::Deserialize;

use crate::array::Array;
use crate::error::{Error, Result};
use crate::fast::{scaled_dot_product_attention, AttnMask};
use crate::nn::{merge_heads, split_heads, LayerNorm, Linear};
use crate::traits::Weights;

/// `vision_config` of a CLIP or SigLIP tower, as Hugging Face writes it. Defaults that differ
/// between the two (`layer_norm_eps`, `hidden_act`) are `None` here and chosen by the tower.
#[derive(Clone, Debug, Deserialize)]
pub struct TowerConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub patch_size: i32,
    #[serde(default = "d_image_size")]
    pub image_size: i32,
    #[serde(default = "d_channels")]
    pub num_channels: i32,
    #[serde(default)]
    pub layer_norm_eps: Option<f32>,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

fn d_image_size() -> i32 {
    224
}
fn d_channels() -> i32 {
    3
}

impl TowerConfig {
    /// Checks the sizes the tower's shapes are derived from; errors name the field.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
            ("image_size", self.image_size),
            ("num_channels", self.num_channels),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::Config(format!("vision_config.{name} must be positive, found {v}")));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::Config(format!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        // Position tables are `[patches^2 (+1), D]` with i32 sizes: refuse a grid whose count
        // (or table) does not fit, rather than overflow computing it.
        let n = i64::from(self.image_size / self.patch_size);
        if (n * n + 1).saturating_mul(i64::from(self.hidden_size)) > i64::from(i32::MAX) {
            return Err(Error::Config(format!(
                "vision_config: image_size {} / patch_size {} gives {} patches of width {}, too many",
                self.image_size,
                self.patch_size,
                n * n,
                self.hidden_size
            )));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "vision_config: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Patches per side of the (square) input image.
    pub fn patches_per_side(&self) -> i32 {
        self.image_size / self.patch_size
    }
}

/// The MLP activation of an encoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TowerActivation {
    /// `x * sigmoid(1.702 x)`: CLIP's `quick_gelu` (MLX's `gelu_fast_approx`).
    QuickGelu,
    /// The tanh approximation: SigLIP's `gelu_pytorch_tanh`.
    GeluTanh,
    /// The exact erf form (`gelu`).
    Gelu,
}

impl TowerActivation {
    /// The activation a Hugging Face `hidden_act` names.
    pub fn from_hf(name: &str) -> Result<TowerActivation> {
        match name {
            "quick_gelu" => Ok(TowerActivation::QuickGelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(TowerActivation::GeluTanh),
            "gelu" => Ok(TowerActivation::Gelu),
            other => Err(Error::Config(format!(
                "vision_config.hidden_act `{other}` is not supported (quick_gelu, gelu_pytorch_tanh, gelu_new, \
                 gelu_fast, gelu)"
            ))),
        }
    }

    pub fn apply(self, x: &Array) -> Result<Array> {
        match self {
            TowerActivation::QuickGelu => x.multiply(&x.multiply(&x.scalar_like(1.702)?)?.sigmoid()?),
            TowerActivation::GeluTanh => x.gelu_approx(),
            TowerActivation::Gelu => x.gelu(),
        }
    }
}

/// A torch-layout patch convolution `[D, C, P, P]` in MLX's `[D, P, P, C]`; a weight already in
/// MLX's layout is returned unchanged (both readers of these checkpoints accept either).
pub fn conv_weight_to_mlx(w: Array, channels: i32) -> Result<Array> {
    if w.ndim() == 4 && w.dim(1)? == channels && w.dim(3)? != channels {
        w.transpose(&[0, 2, 3, 1])
    } else {
        Ok(w)
    }
}

/// One pre-norm encoder layer: self-attention (all biased projections) and a two-layer MLP.
pub struct EncoderLayer {
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
    act: TowerActivation,
}

impl EncoderLayer {
    fn load(w: &mut Weights, p: &str, c: &TowerConfig, eps: f32, act: TowerActivation) -> Result<EncoderLayer> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let lin = |w: &mut Weights, name: &str, shape| Linear::load(w, &format!("{p}.{name}"), shape, true, None);
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), d, eps)?,
            q_proj: lin(w, "self_attn.q_proj", (d, d))?,
            k_proj: lin(w, "self_attn.k_proj", (d, d))?,
            v_proj: lin(w, "self_attn.v_proj", (d, d))?,
            out_proj: lin(w, "self_attn.out_proj", (d, d))?,
            layer_norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), d, eps)?,
            fc1: lin(w, "mlp.fc1", (d, f))?,
            fc2: lin(w, "mlp.fc2", (f, d))?,
            heads: c.num_attention_heads,
            scale: ((d / c.num_attention_heads) as f32).powf(-0.5),
            act,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let h = self.layer_norm1.forward(x)?;
        let heads = |a: Array| split_heads(&a, self.heads);
        let (q, k, v) =
            (heads(self.q_proj.forward(&h)?)?, heads(self.k_proj.forward(&h)?)?, heads(self.v_proj.forward(&h)?)?);
        let attn = scaled_dot_product_attention(&q, &k, &v, self.scale, AttnMask::None)?;
        let h = x.add(&self.out_proj.forward(&merge_heads(&attn)?)?)?;
        let r = self.fc2.forward(&self.act.apply(&self.fc1.forward(&self.layer_norm2.forward(&h)?)?)?)?;
        h.add(&r)
    }
}

/// The encoder's layers, `{prefix}.layers.{i}`.
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn load(w: &mut Weights, prefix: &str, c: &TowerConfig, eps: f32, act: TowerActivation) -> Result<Encoder> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(w, &format!("{prefix}.layers.{i}"), c, eps, act))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder { layers })
    }

    /// `[x, layer_1(x), ..., layer_n(...)]` for the first `n` layers: the hidden states
    /// Hugging Face's `output_hidden_states` returns, cut where nothing later is needed.
    pub fn hidden_states(&self, x: Array, n: usize) -> Result<Vec<Array>> {
        let mut states = vec![x];
        for layer in self.layers.iter().take(n) {
            let next = layer.forward(states.last().expect("starts non-empty"))?;
            states.push(next);
        }
        Ok(states)
    }
}

/// Checks that pixels are `[1, S, S, C]` for the tower's fixed image size.
pub(crate) fn check_pixels(tower: &str, pixels: &Array, c: &TowerConfig) -> Result<()> {
    let (s, ch) = (c.image_size, c.num_channels);
    if pixels.shape() != [1, s, s, ch] {
        return Err(Error::Boundary(format!(
            "{tower} vision tower: pixel values have shape {:?}, expected [1, {s}, {s}, {ch}] (the config's image_size)",
            pixels.shape()
        )));
    }
    Ok(())
}

/// A SigLIP tower loaded from `{prefix}.embeddings.*`, `{prefix}.encoder.*` and
/// `{prefix}.post_layernorm.*` (prefix e.g. `vision_tower.vision_model`).
pub struct SiglipVision {
    /// `[D, P, P, C]`.
    patch_embedding: Array,
    patch_bias: Array,
    position_embedding: Array,
    pub encoder: Encoder,
    post_layernorm: LayerNorm,
    config: TowerConfig,
}

impl SiglipVision {
    /// Loads the tower. `act` overrides `hidden_act` (mlx-vlm's gemma3 runs the tanh GELU
    /// whatever the config says); `post_norm_eps` is the final norm's eps (mlx-vlm's gemma3
    /// builds it with LayerNorm's default 1e-5, not `layer_norm_eps`).
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        c: &TowerConfig,
        act: Option<TowerActivation>,
        post_norm_eps: Option<f32>,
    ) -> Result<SiglipVision> {
        c.check()?;
        let act = match act {
            Some(a) => a,
            None => TowerActivation::from_hf(c.hidden_act.as_deref().unwrap_or("gelu_pytorch_tanh"))?,
        };
        let eps = c.layer_norm_eps.unwrap_or(1e-6);
        let (d, p, n) = (c.hidden_size, c.patch_size, c.patches_per_side());
        let e = format!("{prefix}.embeddings");
        let patch = w.take(&format!("{e}.patch_embedding.weight"))?;
        let patch = conv_weight_to_mlx(patch, c.num_channels)?;
        if patch.shape() != [d, p, p, c.num_channels] {
            return Err(Error::Weights(format!(
                "tensor `{e}.patch_embedding.weight` has shape {:?}, expected [{d}, {p}, {p}, {}]",
                patch.shape(),
                c.num_channels
            )));
        }
        Ok(SiglipVision {
            patch_embedding: patch,
            patch_bias: w.take_shaped(&format!("{e}.patch_embedding.bias"), &[d])?,
            position_embedding: w.take_shaped(&format!("{e}.position_embedding.weight"), &[n * n, d])?,
            encoder: Encoder::load(w, &format!("{prefix}.encoder"), c, eps, act)?,
            post_layernorm: LayerNorm::load(w, &format!("{prefix}.post_layernorm"), d, post_norm_eps.unwrap_or(eps))?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &TowerConfig {
        &self.config
    }

    /// Patch embeddings plus positions, `[1, N, D]`.
    pub fn embeddings(&self, pixels: &Array) -> Result<Array> {
        check_pixels("siglip", pixels, &self.config)?;
        let x = pixels.astype(self.patch_embedding.dtype())?;
        let p = self.config.patch_size;
        let x = x.conv2d(&self.patch_embedding, [p, p], [0, 0], [1, 1], 1)?.add(&self.patch_bias)?;
        let (n, d) = (self.config.patches_per_side(), x.dim(-1)?);
        x.reshape(&[1, n * n, d])?.add(&self.position_embedding)
    }

    /// The embeddings and the outputs of the first `n` encoder layers (no final norm).
    pub fn hidden_states(&self, pixels: &Array, n: usize) -> Result<Vec<Array>> {
        self.encoder.hidden_states(self.embeddings(pixels)?, n)
    }

    /// Every layer, then the final LayerNorm: `[1, N, D]`.
    pub fn forward(&self, pixels: &Array) -> Result<Array> {
        let mut states = self.hidden_states(pixels, self.encoder.layers.len())?;
        self.post_layernorm.forward(&states.pop().expect("non-empty"))
    }
}
