//! Images in: the PIL-exact resampler ([`resample`]).

pub mod resample;

pub use self::resample::{resize, Filter};
