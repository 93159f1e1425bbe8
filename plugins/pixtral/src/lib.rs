//! Pixtral's vision add-on (mlx-vlm's `models/pixtral/pixtral.py`): the shared Pixtral tower
//! (`nn::vision::pixtral`), the hidden state at `vision_feature_layer`, the llava projector
//! (linear-GELU-linear) to the text width, and a merge that replaces the `[IMG]` rows. The text
//! model is not here: `text_config.model_type` (`mistral`) resolves through the registry to the
//! llama plugin, so this add-on composes with another plugin's text model.

use mlx_engine_plugin_api::nn::vision::pixtral::{self, LlavaProjector, PixtralTower, PixtralVisionConfig};
use mlx_engine_plugin_api::{export_plugin, Array, Error, ImagePrompt, Result, VisionAddOn, Weights, WeightsFormat};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TextPart {
    pub hidden_size: i32,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vision_config: PixtralVisionConfig,
    pub text_config: TextPart,
    /// HF writes `image_token_index` (older) or `image_token_id`; Mistral's `[IMG]` is 10.
    pub image_token_index: Option<i32>,
    pub image_token_id: Option<i32>,
    #[serde(default = "last")]
    pub vision_feature_layer: i32,
    /// mlx-vlm always builds the projector with biases; HF reads this flag (default true).
    #[serde(default = "yes")]
    pub multimodal_projector_bias: bool,
}

fn last() -> i32 {
    -1
}
fn yes() -> bool {
    true
}

pub struct PixtralVision {
    tower: PixtralTower,
    projector: LlavaProjector,
    image_token: i32,
}

impl VisionAddOn for PixtralVision {
    type Config = Config;

    fn sanitize(c: &Config, weights: Weights, _format: WeightsFormat) -> Result<Weights> {
        Ok(pixtral::sanitize(weights, c.vision_config.num_channels))
    }

    fn new(c: Config, mut w: Weights) -> Result<PixtralVision> {
        let tower = PixtralTower::load(&mut w, &c.vision_config, c.vision_feature_layer)?;
        let (d, text) = (c.vision_config.hidden_size, c.text_config.hidden_size);
        let projector = LlavaProjector::load(&mut w, "multi_modal_projector", d, text, c.multimodal_projector_bias)?;
        w.expect_consumed()?;
        let image_token = c.image_token_index.or(c.image_token_id).ok_or_else(|| {
            Error::Config("config.json has neither `image_token_index` nor `image_token_id` (the [IMG] id)".into())
        })?;
        Ok(PixtralVision { tower, projector, image_token })
    }

    /// One `[IMG]` per patch, in rows: the size is the preprocessed image's, whole patches only.
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt> {
        let (rows, cols) = self.tower.grid(height, width);
        pixtral::image_prompt(rows, cols)
    }

    fn encode(&self, pixels: &Array) -> Result<Array> {
        let (hidden, _) = self.tower.forward(pixels)?;
        self.projector.forward(&hidden)
    }

    fn merge(&self, input_ids: &Array, text_embeddings: &Array, features: &[Array], scale: f32) -> Result<Array> {
        pixtral::merge_image_rows(input_ids, text_embeddings, features, self.image_token, scale)
    }
}

export_plugin! {
    name: "pixtral",
    version: env!("CARGO_PKG_VERSION"),
    text: {},
    vision: { "pixtral" => PixtralVision },
}
