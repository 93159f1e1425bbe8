//! Vision towers shared by vision add-ons and the engine's generic VLM fallback, so each tower
//! has one implementation: SigLIP (gemma3, llava-interleave) and CLIP (llava).

pub mod clip;
pub mod siglip;
