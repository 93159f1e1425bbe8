//! Gemma 3's vision add-on, as mlx-vlm's `models/gemma3/{vision,gemma3}.py`: a SigLIP tower
//! over NHWC pixels, then the projector (average-pool the patch grid down to
//! `mm_tokens_per_image`, `(1 + w)` RMSNorm, project to the text width), and a merge that puts
//! the features at the image-token positions.

use mlx_engine_plugin_api::nn::vision::siglip::{SiglipVision, TowerActivation, TowerConfig};
use mlx_engine_plugin_api::nn::RmsNorm;
use mlx_engine_plugin_api::{concatenate, Array, Dtype, Error, ImagePrompt, Result, VisionAddOn, Weights};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TextPart {
    pub hidden_size: i32,
    #[serde(default = "d_mm_tokens")]
    pub mm_tokens_per_image: i32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vision_config: TowerConfig,
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

pub struct Gemma3Vision {
    /// The shared SigLIP tower (`plugin-api::nn::vision::siglip`).
    tower: SiglipVision,
    soft_emb_norm: RmsNorm,
    /// `[vision hidden, text hidden]`.
    projection: Array,
    /// Patches per side of the (square) image, and pooled tokens per side.
    patches: i32,
    tokens_per_side: i32,
    image_token: i32,
    pad_token: i32,
    feature_scale: f32,
}

const TOWER: &str = "vision_tower.vision_model";

impl VisionAddOn for Gemma3Vision {
    type Config = Config;

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
        // In i64: the rounded root of a value near i32::MAX squares past it.
        if i64::from(tokens_per_side) * i64::from(tokens_per_side) != i64::from(c.text_config.mm_tokens_per_image)
            || tokens_per_side == 0
            || patches % tokens_per_side != 0
        {
            return Err(Error::Config(format!(
                "text_config.mm_tokens_per_image {} must be a square whose side divides the {patches} patches per side",
                c.text_config.mm_tokens_per_image
            )));
        }
        let d = v.hidden_size;
        // mlx-vlm's gemma3 tower runs the tanh GELU whatever `hidden_act` says, and builds the
        // final norm with LayerNorm's default eps (1e-5), not `layer_norm_eps`.
        let tower = SiglipVision::load(&mut w, TOWER, v, Some(TowerActivation::GeluTanh), Some(1e-5))?;
        let soft_emb_norm = RmsNorm::load_one_plus(
            &mut w,
            "multi_modal_projector.mm_soft_emb_norm",
            d,
            v.layer_norm_eps.unwrap_or(1e-6),
        )?;
        let projection =
            w.take_shaped("multi_modal_projector.mm_input_projection_weight", &[d, c.text_config.hidden_size])?;
        w.expect_consumed()?;
        Ok(Gemma3Vision {
            tower,
            soft_emb_norm,
            projection,
            patches,
            tokens_per_side,
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
        let h = self.tower.forward(pixels)?;
        let d = h.dim(-1)?;
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
