//! Splits a vision-language checkpoint into its text and vision parts, so a text plugin is
//! handed only the tensors of its own architecture. The nesting is a property of how VLM
//! checkpoints are written (llava, mistral3, gemma3, ... all nest the same way), not of any one
//! architecture, so it lives here rather than in each text plugin.

use mlx_engine_plugin_api::Weights;

/// The two parts of a checkpoint.
#[derive(Debug, Default)]
pub struct Parts {
    /// The text model, named as a text-only checkpoint of its architecture would be
    /// (`model.*`, `lm_head.*`).
    pub text: Weights,
    /// `vision_tower.*` and `multi_modal_projector.*`, for the vision add-on.
    pub vision: Weights,
}

/// Where the text model sits. Older exports nest the whole text model (`language_model.model.*`,
/// `language_model.lm_head.*`); transformers >= 4.52 writes `model.language_model.*` for the
/// decoder and keeps `lm_head.*` at the top.
const TEXT_PREFIXES: [(&str, &str); 2] = [("language_model.", ""), ("model.language_model.", "model.")];
const VISION_PREFIXES: [(&str, &str); 4] = [
    ("vision_tower.", "vision_tower."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
];

/// Whether `weights` nest a text model the way VLM checkpoints do.
pub fn is_multimodal(weights: &Weights) -> bool {
    weights.names().any(|n| TEXT_PREFIXES.iter().any(|(p, _)| n.starts_with(p)))
}

/// Splits `weights`. A checkpoint that is not multimodal is all text and is returned unchanged.
pub fn partition(weights: Weights) -> Parts {
    if !is_multimodal(&weights) {
        return Parts { text: weights, vision: Weights::new() };
    }
    let mut parts = Parts::default();
    for (name, a) in weights {
        if let Some((p, to)) = VISION_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
            parts.vision.insert(format!("{to}{}", &name[p.len()..]), a);
        } else if let Some((p, to)) = TEXT_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
            parts.text.insert(format!("{to}{}", &name[p.len()..]), a);
        } else {
            // Top-level tensors (the new layout's `lm_head.*`) belong to the text model.
            parts.text.insert(name, a);
        }
    }
    parts
}
