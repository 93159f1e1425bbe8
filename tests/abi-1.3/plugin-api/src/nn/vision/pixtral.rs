//! The Pixtral vision tower (mlx-vlm's `models/pixtral/vision.py`), shared by the `pixtral` and
//! `mistral3` add-ons, plus the pieces both build on it: the llava-style projector
//! (linear-GELU-linear), the `[IMG]` rows prompt and the merge that replaces image-token rows.
//! Why it lives here and not in one plugin: docs/adr/0007-pixtral-tower.md.
//!
//! The tower: a patch convolution (no bias), RMSNorm, then pre-norm transformer layers with a
//! SiLU-gated MLP and a 2-D rotary embedding of each patch's (row, column). Images of any size
//! are taken; the convolution keeps whole patches only (the reference crops the same way).

use serde::Deserialize;

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::fast::{scaled_dot_product_attention, AttnMask};
use crate::nn::{merge_heads, split_heads, Activation, GatedMlp, Linear, RmsNorm};
use crate::ops::concatenate;
use crate::traits::{ImagePrompt, Weights};

/// `vision_config` of a Pixtral tower (HF `PixtralVisionConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct PixtralVisionConfig {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    /// Must be `hidden_size / num_attention_heads` when given: mlx-vlm's attention splits heads
    /// that way but sizes its rotary table by this field, so any other value is a broken config.
    pub head_dim: Option<i32>,
    /// The largest image side; `image_size / patch_size` patches per side have positions.
    pub image_size: i32,
    pub patch_size: i32,
    #[serde(default = "d_channels")]
    pub num_channels: i32,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
}

fn d_channels() -> i32 {
    3
}
fn d_eps() -> f32 {
    1e-5
}
fn d_theta() -> f32 {
    10000.0
}

/// Where the tower's tensors sit once [`sanitize`] has run (HF's names).
pub const TOWER: &str = "vision_tower";

/// mlx-vlm converts store the tower under `vision_tower.vision_model.*` and the patch
/// convolution as `[D, P, P, C]`; HF checkpoints use `vision_tower.*` and `[D, C, P, P]`. Both
/// become HF names with MLX's conv layout.
pub fn sanitize(mut weights: Weights, channels: i32) -> Weights {
    weights.rename_prefix("vision_tower.vision_model.", "vision_tower.");
    let name = format!("{TOWER}.patch_conv.weight");
    if let Some(w) = weights.remove(&name) {
        let torch = w.ndim() == 4 && w.dim(1).ok() == Some(channels) && w.dim(3).ok() != Some(channels);
        let w = if torch { w.transpose(&[0, 2, 3, 1]).unwrap_or(w) } else { w };
        weights.insert(name, w);
    }
    weights
}

struct Layer {
    attention_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    ffn_norm: RmsNorm,
    feed_forward: GatedMlp,
}

/// The tower; [`PixtralTower::forward`] gives the hidden states of one image.
pub struct PixtralTower {
    /// `[D, P, P, C]`, MLX's conv layout.
    patch_conv: Array,
    ln_pre: RmsNorm,
    layers: Vec<Layer>,
    /// Row frequencies (the even entries of `base^(-2i/head_dim)`) and column frequencies (the
    /// odd ones), `[head_dim / 4]` each.
    freqs_h: Array,
    freqs_w: Array,
    heads: i32,
    scale: f32,
    patch_size: i32,
    max_side: i32,
    pub hidden_size: i32,
}

impl PixtralTower {
    /// Loads `vision_tower.*` (after [`sanitize`]), keeping the layers up to
    /// `vision_feature_layer` (an index into the hidden states, which start with the normalised
    /// patch embeddings, as HF's `hidden_states`; negative counts from the end). The layers past
    /// it cannot change the features, so they are dropped.
    pub fn load(w: &mut Weights, c: &PixtralVisionConfig, vision_feature_layer: i32) -> Result<PixtralTower> {
        let bad = |m: String| Err(Error::Config(format!("vision_config: {m}")));
        let (d, f, heads) = (c.hidden_size, c.intermediate_size, c.num_attention_heads);
        if d <= 0 || heads <= 0 || d % heads != 0 || c.patch_size <= 0 || c.image_size < c.patch_size {
            return bad(format!(
                "hidden_size {d}, num_attention_heads {heads}, patch_size {} and image_size {} must be positive, \
                 with whole heads and at least one patch",
                c.patch_size, c.image_size
            ));
        }
        let head_dim = d / heads;
        if c.head_dim.is_some_and(|h| h != head_dim) || head_dim % 4 != 0 {
            return bad(format!(
                "head_dim {:?} must equal hidden_size / num_attention_heads = {head_dim}, a multiple of 4 (2-D RoPE)",
                c.head_dim
            ));
        }
        let n = c.num_hidden_layers as i32;
        let keep = if vision_feature_layer < 0 { n + 1 + vision_feature_layer } else { vision_feature_layer };
        if !(0..=n).contains(&keep) {
            return Err(Error::Config(format!(
                "vision_feature_layer {vision_feature_layer} is outside the {} hidden states of a {n}-layer tower",
                n + 1
            )));
        }
        let patch_conv =
            w.take_shaped(&format!("{TOWER}.patch_conv.weight"), &[d, c.patch_size, c.patch_size, c.num_channels])?;
        // mlx-vlm builds this norm with RMSNorm's default eps, not `rms_norm_eps`.
        let ln_pre = RmsNorm::load(w, &format!("{TOWER}.ln_pre"), d, 1e-5)?;
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("{TOWER}.transformer.layers.{i}");
            let lin =
                |w: &mut Weights, name: &str| Linear::load(w, &format!("{p}.attention.{name}"), (d, d), false, None);
            let norm = |w: &mut Weights, name: &str| RmsNorm::load(w, &format!("{p}.{name}"), d, c.rms_norm_eps);
            let layer = Layer {
                attention_norm: norm(w, "attention_norm")?,
                q_proj: lin(w, "q_proj")?,
                k_proj: lin(w, "k_proj")?,
                v_proj: lin(w, "v_proj")?,
                o_proj: lin(w, "o_proj")?,
                ffn_norm: norm(w, "ffn_norm")?,
                feed_forward: GatedMlp::load(w, &format!("{p}.feed_forward"), (d, f), false, Activation::Silu, None)?,
            };
            if (i as i32) < keep {
                layers.push(layer);
            }
        }
        // The reference's frequencies, op for op in f32: 1 / base^(arange(0, dim, 2) / dim).
        let exps = Array::arange(0.0, head_dim as f64, 2.0, Dtype::I32)?
            .astype(Dtype::F32)?
            .divide(&Array::scalar(head_dim as f64, Dtype::F32)?)?;
        let freqs =
            Array::scalar(1.0, Dtype::F32)?.divide(&Array::scalar(c.rope_theta as f64, Dtype::F32)?.power(&exps)?)?;
        let half = head_dim / 2;
        Ok(PixtralTower {
            patch_conv,
            ln_pre,
            layers,
            freqs_h: freqs.slice(&[0], &[half], &[2])?,
            freqs_w: freqs.slice(&[1], &[half], &[2])?,
            heads,
            scale: (head_dim as f32).powf(-0.5),
            patch_size: c.patch_size,
            max_side: c.image_size / c.patch_size,
            hidden_size: d,
        })
    }

    /// The patch grid `(rows, columns)` of an image of `height x width` pixels.
    pub fn grid(&self, height: i32, width: i32) -> (i32, i32) {
        (height / self.patch_size, width / self.patch_size)
    }

    /// `cos` and `sin` `[N, head_dim]` of the 2-D RoPE of a `gh x gw` grid: the first quarter of
    /// each half rotates by row, the second by column (mlx-vlm's `PixtralRotaryEmbedding`).
    fn rotary(&self, gh: i32, gw: i32, dtype: Dtype) -> Result<(Array, Array)> {
        let q = self.freqs_h.dim(0)?;
        let rows = Array::arange(0.0, gh as f64, 1.0, Dtype::I32)?.reshape(&[gh, 1, 1])?.multiply(&self.freqs_h)?;
        let cols = Array::arange(0.0, gw as f64, 1.0, Dtype::I32)?.reshape(&[1, gw, 1])?.multiply(&self.freqs_w)?;
        let (rows, cols) = (rows.broadcast_to(&[gh, gw, q])?, cols.broadcast_to(&[gh, gw, q])?);
        let half = concatenate(&[&rows, &cols], -1)?.reshape(&[gh * gw, 2 * q])?;
        let angles = concatenate(&[&half, &half], -1)?;
        Ok((angles.cos()?.astype(dtype)?, angles.sin()?.astype(dtype)?))
    }

    /// The hidden states `[N, D]` at the configured feature layer of one image's pixels
    /// `[1, H, W, C]`, and its patch grid. One image per call: that is exactly the reference's
    /// block-diagonal attention over a batch of images (each image attends only to itself, and
    /// positions restart per image), without building the mask.
    pub fn forward(&self, pixels: &Array) -> Result<(Array, (i32, i32))> {
        let s = pixels.shape();
        let c = self.patch_conv.dim(3)?;
        if s.len() != 4 || s[0] != 1 || s[3] != c || s[1] < self.patch_size || s[2] < self.patch_size {
            return Err(Error::Boundary(format!(
                "pixtral vision: pixel values have shape {s:?}, expected [1, H, W, {c}] with H, W >= patch_size {}",
                self.patch_size
            )));
        }
        let (gh, gw) = self.grid(s[1], s[2]);
        if gh > self.max_side || gw > self.max_side {
            return Err(Error::Boundary(format!(
                "pixtral vision: an image of {}x{} pixels has {gh}x{gw} patches, more than the {m}x{m} that \
                 vision_config.image_size allows (resize it to at most {} pixels a side)",
                s[2],
                s[1],
                self.max_side * self.patch_size,
                m = self.max_side
            )));
        }
        let x = pixels.astype(self.patch_conv.dtype())?;
        let p = self.patch_size;
        let x = x.conv2d(&self.patch_conv, [p, p], [0, 0], [1, 1], 1)?;
        let mut h = self.ln_pre.forward(&x.reshape(&[1, gh * gw, self.hidden_size])?)?;
        let (cos, sin) = self.rotary(gh, gw, h.dtype())?;
        for l in &self.layers {
            h = l.forward(&h, &cos, &sin, self.heads, self.scale)?;
        }
        Ok((h.reshape(&[gh * gw, self.hidden_size])?, (gh, gw)))
    }
}

/// `[x1, x2] -> [-x2, x1]` over the last axis.
fn rotate_half(x: &Array) -> Result<Array> {
    let d = x.dim(-1)?;
    let (a, b) = (x.slice_axis(-1, 0, d / 2)?, x.slice_axis(-1, d / 2, d)?);
    concatenate(&[&b.neg()?, &a], -1)
}

impl Layer {
    fn forward(&self, x: &Array, cos: &Array, sin: &Array, heads: i32, scale: f32) -> Result<Array> {
        let y = self.attention_norm.forward(x)?;
        let rope = |a: Array| -> Result<Array> { a.multiply(cos)?.add(&rotate_half(&a)?.multiply(sin)?) };
        let q = rope(split_heads(&self.q_proj.forward(&y)?, heads)?)?;
        let k = rope(split_heads(&self.k_proj.forward(&y)?, heads)?)?;
        let v = split_heads(&self.v_proj.forward(&y)?, heads)?;
        let a = scaled_dot_product_attention(&q, &k, &v, scale, AttnMask::None)?;
        let x = x.add(&self.o_proj.forward(&merge_heads(&a)?)?)?;
        x.add(&self.feed_forward.forward(&self.ffn_norm.forward(&x)?)?)
    }
}

/// The llava projector `linear_2(gelu(linear_1(x)))` (exact GELU, as mlx-vlm's `nn.GELU()`).
pub struct LlavaProjector {
    linear_1: Linear,
    linear_2: Linear,
}

impl LlavaProjector {
    /// Loads `{prefix}.linear_1` (`input -> text`) and `{prefix}.linear_2` (`text -> text`); a
    /// checkpoint whose projector does not map to the text width fails naming both sizes.
    pub fn load(w: &mut Weights, prefix: &str, input: i32, text: i32, bias: bool) -> Result<LlavaProjector> {
        let name = format!("{prefix}.linear_2.weight");
        if let Some(out) = w.get(&name).and_then(|a| a.shape().first().copied()) {
            if out != text {
                return Err(Error::Weights(format!(
                    "tensor `{name}` projects to {out} features but the text model's hidden_size is {text}"
                )));
            }
        }
        Ok(LlavaProjector {
            linear_1: Linear::load(w, &format!("{prefix}.linear_1"), (input, text), bias, None)?,
            linear_2: Linear::load(w, &format!("{prefix}.linear_2"), (text, text), bias, None)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.linear_2.forward(&self.linear_1.forward(x)?.gelu()?)
    }
}

/// The text that stands for one image (the chat template writes [`IMG`]) and what it expands
/// to: `rows` rows of `cols` [`IMG`] tokens, each ending in [`IMG_BREAK`], the last in
/// [`IMG_END`] (mlx-vlm's Pixtral and Mistral3 processors).
pub fn image_prompt(rows: i32, cols: i32) -> Result<ImagePrompt> {
    if rows <= 0 || cols <= 0 {
        return Err(Error::Boundary(format!("pixtral vision: an image of {rows}x{cols} tokens has no tokens")));
    }
    let row = IMG.repeat(cols as usize);
    let mut expansion = (0..rows).map(|_| row.as_str()).collect::<Vec<_>>().join(IMG_BREAK);
    expansion.push_str(IMG_END);
    Ok(ImagePrompt { placeholder: IMG.into(), expansion })
}

pub const IMG: &str = "[IMG]";
pub const IMG_BREAK: &str = "[IMG_BREAK]";
pub const IMG_END: &str = "[IMG_END]";

/// The prompt's embeddings `[1, L, D]` with the rows holding `image_token` replaced, in order,
/// by the images' feature rows (divided by the text model's embedding scale, 1 for mistral), as
/// mlx-vlm's `merge_input_ids_with_image_features`; a count that differs is an error.
pub fn merge_image_rows(
    input_ids: &Array,
    text_embeddings: &Array,
    features: &[Array],
    image_token: i32,
    embeddings_scale: f32,
) -> Result<Array> {
    let ids: Vec<i32> = input_ids.astype(Dtype::I32)?.to_vec()?;
    let slots = ids.iter().filter(|&&t| t == image_token).count();
    let rows: i32 = features.iter().map(|f| f.dim(0)).sum::<Result<i32>>()?;
    if slots != rows as usize {
        return Err(Error::Boundary(format!(
            "pixtral vision: the prompt has {slots} image tokens (id {image_token}), but {} image(s) give {rows} features",
            features.len()
        )));
    }
    let dtype = text_embeddings.dtype();
    let (l, d) = (ids.len() as i32, text_embeddings.dim(-1)?);
    let mut parts = vec![text_embeddings.reshape(&[l, d])?];
    for f in features {
        let f = if embeddings_scale == 1.0 { f.clone() } else { f.divide(&f.scalar_like(embeddings_scale as f64)?)? };
        parts.push(f.astype(dtype)?);
    }
    let mut next = l;
    let index: Vec<i32> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == image_token {
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
