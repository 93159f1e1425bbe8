//! Images in: where images come from and decoding them ([`image`]), the checkpoint's image
//! processor settings and the pixel values they make ([`preprocess`]), and the PIL-exact
//! resampler both use ([`resample`]).
//!
//! The path of one image: [`ImageInput`] -> [`decode`] (limits, EXIF orientation, RGB8,
//! `--max-image-size`) -> [`DecodedImage`] -> [`PreprocessorConfig::preprocess`] ->
//! [`PixelValues`] (NHWC float32) -> an MLX array for the vision tower.

pub mod image;
mod pixtral_size;
pub mod preprocess;
pub mod prompt;
pub mod resample;

pub use self::image::{decode, DecodedImage, ImageInput, ImageLimits};
pub use self::preprocess::{ImageSize, PixelValues, PreprocessorConfig};
pub use self::prompt::{FeatureMemo, PreparedImage, VisionModel, FEATURE_MEMO_CAPACITY};
pub use self::resample::{resize, Filter};
