//! Mistral 3's vision add-on (mlx-vlm's `models/mistral3/mistral3.py`): the shared Pixtral
//! tower (`nn::vision::pixtral`), then the projector: RMSNorm, the patch merger (each
//! `spatial_merge_size`² block of patches concatenated and mapped back to the tower width), and
//! linear-GELU-linear to the text width; the merge replaces the `[IMG]` rows. The text model
//! (`text_config.model_type`, `mistral`) comes from the llama plugin through the registry.

use mlx_engine_plugin_api::nn::vision::pixtral::{self, LlavaProjector, PixtralTower, PixtralVisionConfig};
use mlx_engine_plugin_api::nn::{Linear, RmsNorm};
use mlx_engine_plugin_api::{export_plugin, Array, Error, ImagePrompt, Result, VisionAddOn, Weights, WeightsFormat};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TextPart {
    pub hidden_size: i32,
    /// The projector's norm uses the text model's eps (as mlx-vlm builds it).
    pub rms_norm_eps: f32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vision_config: PixtralVisionConfig,
    pub text_config: TextPart,
    pub image_token_index: Option<i32>,
    pub image_token_id: Option<i32>,
    #[serde(default = "last")]
    pub vision_feature_layer: i32,
    #[serde(default = "two")]
    pub spatial_merge_size: i32,
    #[serde(default)]
    pub multimodal_projector_bias: bool,
}

fn last() -> i32 {
    -1
}
fn two() -> i32 {
    2
}

pub struct Mistral3Vision {
    tower: PixtralTower,
    norm: RmsNorm,
    merging_layer: Linear,
    projector: LlavaProjector,
    merge: i32,
    image_token: i32,
}

const PROJECTOR: &str = "multi_modal_projector";

impl VisionAddOn for Mistral3Vision {
    type Config = Config;

    fn sanitize(c: &Config, weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        Ok(pixtral::sanitize(weights, c.vision_config.num_channels))
    }

    fn new(c: Config, mut w: Weights) -> Result<Mistral3Vision> {
        let m = c.spatial_merge_size;
        if m <= 0 {
            return Err(Error::Config(format!("spatial_merge_size must be positive, got {m}")));
        }
        let tower = PixtralTower::load(&mut w, &c.vision_config, c.vision_feature_layer)?;
        let (d, text) = (c.vision_config.hidden_size, c.text_config.hidden_size);
        let norm = RmsNorm::load(&mut w, &format!("{PROJECTOR}.norm"), d, c.text_config.rms_norm_eps)?;
        let merging_layer =
            Linear::load(&mut w, &format!("{PROJECTOR}.patch_merger.merging_layer"), (d * m * m, d), false, None)?;
        let projector = LlavaProjector::load(&mut w, PROJECTOR, d, text, c.multimodal_projector_bias)?;
        w.expect_consumed()?;
        let image_token = c.image_token_index.or(c.image_token_id).ok_or_else(|| {
            Error::Config("config.json has neither `image_token_index` nor `image_token_id` (the [IMG] id)".into())
        })?;
        Ok(Mistral3Vision { tower, norm, merging_layer, projector, merge: m, image_token })
    }

    /// One `[IMG]` per merged block of patches, in rows.
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt> {
        let (gh, gw) = self.tower.grid(height, width);
        pixtral::image_prompt(gh / self.merge, gw / self.merge)
    }

    fn encode(&self, pixels: &Array) -> Result<Array> {
        let (hidden, (gh, gw)) = self.tower.forward(pixels)?;
        let x = self.norm.forward(&hidden)?;
        // The patch merger: mlx-vlm's `unfold` of the [D, gh, gw] grid with an m x m kernel and
        // stride m. It keeps whole blocks only (a grid not a multiple of m loses its last rows
        // or columns) and orders each block's features channel-major: (d, i, j).
        let (m, d) = (self.merge, self.tower.hidden_size);
        let (hm, wm) = (gh / m, gw / m);
        if hm == 0 || wm == 0 {
            return Err(Error::Boundary(format!(
                "mistral3 vision: a grid of {gh}x{gw} patches has no whole {m}x{m} block to merge"
            )));
        }
        let x = x.reshape(&[gh, gw, d])?.slice(&[0, 0, 0], &[hm * m, wm * m, d], &[1, 1, 1])?;
        let x = x.reshape(&[hm, m, wm, m, d])?.transpose(&[0, 2, 4, 1, 3])?.reshape(&[hm * wm, d * m * m])?;
        self.projector.forward(&self.merging_layer.forward(&x)?)
    }

    fn merge(&self, input_ids: &Array, text_embeddings: &Array, features: &[Array], scale: f32) -> Result<Array> {
        pixtral::merge_image_rows(input_ids, text_embeddings, features, self.image_token, scale)
    }
}

export_plugin! {
    name: "mistral3",
    version: env!("CARGO_PKG_VERSION"),
    text: {},
    vision: { "mistral3" => Mistral3Vision },
}
