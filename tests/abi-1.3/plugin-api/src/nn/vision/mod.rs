//! Vision towers shared by vision add-ons and the engine's generic VLM fallback, so each tower
//! has one implementation: SigLIP (gemma3, llava-interleave), CLIP (llava) and Pixtral's (pixtral,
//! mistral3).

pub mod clip;
pub mod pixtral;
pub mod siglip;
