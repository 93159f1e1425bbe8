//! The CLIP vision tower (as mlx-vlm's `models/llava/vision.py`, CLIP branch): an unbiased
//! patch convolution, a learned class token prepended, position embeddings for `1 + N` tokens,
//! a LayerNorm before the encoder (`pre_layrnorm`, spelled as in the checkpoints), the encoder
//! layer shared with SigLIP, and a final LayerNorm that only the pooled class token passes
//! through (llava reads un-normed hidden states, so it is loaded but not used for features).

use crate::array::Array;
use crate::error::{Error, Result};
use crate::nn::vision::siglip::{check_pixels, conv_weight_to_mlx, Encoder, TowerActivation, TowerConfig};
use crate::nn::LayerNorm;
use crate::ops::concatenate;
use crate::traits::Weights;

pub struct ClipVision {
    /// `[D, P, P, C]`.
    patch_embedding: Array,
    /// `[D]`.
    class_embedding: Array,
    /// `[1 + N, D]`.
    position_embedding: Array,
    pre_layrnorm: LayerNorm,
    pub encoder: Encoder,
    /// Kept so the checkpoint is fully accounted for; see [`ClipVision::pooled`].
    post_layernorm: LayerNorm,
    config: TowerConfig,
}

impl ClipVision {
    /// Loads `{prefix}.embeddings.*`, `{prefix}.pre_layrnorm.*`, `{prefix}.encoder.*` and
    /// `{prefix}.post_layernorm.*`. `hidden_act` defaults to CLIP's `quick_gelu`,
    /// `layer_norm_eps` to 1e-5 (Hugging Face's CLIP defaults).
    pub fn load(w: &mut Weights, prefix: &str, c: &TowerConfig) -> Result<ClipVision> {
        c.check()?;
        let act = TowerActivation::from_hf(c.hidden_act.as_deref().unwrap_or("quick_gelu"))?;
        let eps = c.layer_norm_eps.unwrap_or(1e-5);
        let (d, p, n) = (c.hidden_size, c.patch_size, c.patches_per_side());
        let e = format!("{prefix}.embeddings");
        let patch = conv_weight_to_mlx(w.take(&format!("{e}.patch_embedding.weight"))?, c.num_channels)?;
        if patch.shape() != [d, p, p, c.num_channels] {
            return Err(Error::Weights(format!(
                "tensor `{e}.patch_embedding.weight` has shape {:?}, expected [{d}, {p}, {p}, {}]",
                patch.shape(),
                c.num_channels
            )));
        }
        Ok(ClipVision {
            patch_embedding: patch,
            class_embedding: w.take_shaped(&format!("{e}.class_embedding"), &[d])?,
            position_embedding: w.take_shaped(&format!("{e}.position_embedding.weight"), &[n * n + 1, d])?,
            pre_layrnorm: LayerNorm::load(w, &format!("{prefix}.pre_layrnorm"), d, eps)?,
            encoder: Encoder::load(w, &format!("{prefix}.encoder"), c, eps, act)?,
            post_layernorm: LayerNorm::load(w, &format!("{prefix}.post_layernorm"), d, eps)?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &TowerConfig {
        &self.config
    }

    /// `[class; patches] + positions`, then `pre_layrnorm`: `[1, 1 + N, D]`.
    pub fn embeddings(&self, pixels: &Array) -> Result<Array> {
        check_pixels("clip", pixels, &self.config)?;
        let x = pixels.astype(self.patch_embedding.dtype())?;
        let p = self.config.patch_size;
        let x = x.conv2d(&self.patch_embedding, [p, p], [0, 0], [1, 1], 1)?;
        let (n, d) = (self.config.patches_per_side(), x.dim(-1)?);
        let patches = x.reshape(&[1, n * n, d])?;
        let cls = self.class_embedding.reshape(&[1, 1, d])?.astype(patches.dtype())?;
        let x = concatenate(&[&cls, &patches], 1)?.add(&self.position_embedding)?;
        self.pre_layrnorm.forward(&x)
    }

    /// The (pre-normed) embeddings and the outputs of the first `n` encoder layers.
    pub fn hidden_states(&self, pixels: &Array, n: usize) -> Result<Vec<Array>> {
        self.encoder.hidden_states(self.embeddings(pixels)?, n)
    }

    /// CLIP's pooled output: the final norm of the last layer's class token, `[1, D]`.
    pub fn pooled(&self, pixels: &Array) -> Result<Array> {
        let mut states = self.hidden_states(pixels, self.encoder.layers.len())?;
        let last = states.pop().expect("non-empty");
        self.post_layernorm.forward(&last.slice_axis(1, 0, 1)?.reshape(&[1, -1])?)
    }
}
