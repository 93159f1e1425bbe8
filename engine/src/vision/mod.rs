//! Images in: where images come from and decoding them ([`image`]), and the PIL-exact
//! resampler ([`resample`]).

pub mod image;
pub mod resample;

pub use self::image::{decode, DecodedImage, ImageInput, ImageLimits};
pub use self::resample::{resize, Filter};
