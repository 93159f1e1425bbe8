//! Images in: where images come from and decoding them ([`image`]), the checkpoint's image
//! processor settings and the pixel values they make ([`preprocess`]), and the PIL-exact
//! resampler both use ([`resample`]).
//!
//! The path of one image: [`ImageInput`] -> [`decode`] (limits, EXIF orientation, RGB8,
//! `--max-image-size`) -> [`DecodedImage`] -> [`PreprocessorConfig::preprocess`] ->
//! [`PixelValues`] (NHWC float32) -> an MLX array for the vision tower.

pub mod generic;
pub mod image;
mod pixtral_size;
pub mod preprocess;
pub mod prompt;
pub mod resample;

pub use self::image::{decode, DecodedImage, ImageInput, ImageLimits};
pub use self::preprocess::{ImageSize, PixelValues, PreprocessorConfig};
pub use self::prompt::{FeatureMemo, PreparedImage, VisionModel, FEATURE_MEMO_CAPACITY};
pub use self::resample::{resize, Filter};

/// Which vision path a loaded model took (ARCHITECTURE.md's two paths; `docs/vision.md` says
/// what each keeps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VisionPath {
    /// A text-only checkpoint (no `vision_config`).
    None,
    /// A dedicated vision add-on: the name of the plugin (or built-in) that provides it.
    AddOn(String),
    /// The engine's generic llava-style fallback ([`generic`]).
    GenericFallback,
    /// The checkpoint has a `vision_config` but no add-on could be built; the reason is kept
    /// for the first image request (the text model still serves).
    Unavailable,
}

impl std::fmt::Display for VisionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VisionPath::None => write!(f, "none"),
            VisionPath::AddOn(name) => write!(f, "add-on `{name}`"),
            VisionPath::GenericFallback => write!(f, "generic VLM fallback"),
            VisionPath::Unavailable => write!(f, "unavailable (an image request says why)"),
        }
    }
}
