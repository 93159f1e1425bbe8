//! A PIL-exact resampler for 8-bit RGB images: `Image.resize(size, filter)` as Pillow computes it.
//!
//! Why not the `image` crate's `resize`: it accumulates in `f32` and rounds differently, so its
//! output differs from Pillow's by one level in many pixels. The Hugging Face image processors
//! that the parity references run (mlx-vlm) resize with Pillow, and a vision tower sees those
//! differences, so we follow Pillow's own algorithm (`libImaging/Resample.c` for the
//! convolution filters, `libImaging/Geometry.c`'s affine scale for NEAREST):
//!
//! - Per axis, one set of coefficients per output pixel: a filter window centred on the output
//!   pixel's centre mapped into the input, its support widened by the downscale factor, the
//!   weights normalised to sum 1 and then converted to fixed point with [`PRECISION_BITS`].
//! - A horizontal pass into an 8-bit intermediate, then a vertical pass (vertical first when the
//!   height shrinks by more than twice as many pixels as the width, as Pillow 13 does). Each pass starts its
//!   sums at one half, shifts right and clips to 0..=255. A pass whose size does not change is
//!   skipped; an unchanged size returns a copy.
//! - NEAREST maps output centres through an accumulated step (`x += scale`, as Pillow does, not
//!   `x * scale`), taking the pixel under the truncated coordinate.
//!
//! Every step is integer or `f64` arithmetic in Pillow's order, so results match byte for byte
//! (checked against Pillow by `engine/tests/vision_images.rs` with `scripts/goldens/pil_resize.py`).

use std::f64::consts::PI;

use image::RgbImage;

use crate::error::{Error, Result};

/// Fixed-point fraction bits of the coefficients: 8 bits of result and 2 bits of headroom for
/// negative lobes and overshoot in a 32-bit accumulator (Pillow's `PRECISION_BITS`).
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A resampling filter, numbered as PIL's `Image.Resampling` (and `resample` in
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Filter {
    /// Every filter, in PIL code order.
    pub const ALL: [Filter; 6] =
        [Filter::Nearest, Filter::Lanczos, Filter::Bilinear, Filter::Bicubic, Filter::Box, Filter::Hamming];

    /// The filter for a PIL code: 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING.
    pub fn from_pil_code(code: u64) -> Option<Filter> {
        Filter::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// PIL's code for this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Filter::Nearest => 0,
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
        }
    }

    /// PIL's name for this filter (`Image.Resampling.<NAME>`).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "NEAREST",
            Filter::Lanczos => "LANCZOS",
            Filter::Bilinear => "BILINEAR",
            Filter::Bicubic => "BICUBIC",
            Filter::Box => "BOX",
            Filter::Hamming => "HAMMING",
        }
    }

    /// The filter's half-width in input pixels at scale 1 (none for NEAREST).
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The filter's weight at distance `x` (in filter units).
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    // Pillow writes the window's constants as C `float` literals.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * PI;
        x.sin() / x
    }
}

/// Resizes `img` to `width` x `height` exactly as Pillow's `Image.resize((width, height),
/// filter)` does on an RGB image (no `box`, no `reducing_gap`).
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 {
        return Err(param(format!("cannot resize to {width}x{height}: height and width must be > 0")));
    }
    if in_w == 0 || in_h == 0 {
        return Err(param(format!("cannot resize an empty {in_w}x{in_h} image")));
    }
    if (width, height) == (in_w, in_h) {
        return Ok(img.clone());
    }
    if filter == Filter::Nearest {
        return Ok(nearest(img, width, height));
    }
    let src = Plane { width: in_w as usize, height: in_h as usize, data: img.as_raw().clone() };
    let out = resample(src, width as usize, height as usize, filter);
    RgbImage::from_raw(width, height, out.data)
        .ok_or_else(|| param(format!("internal error: resized buffer does not hold {width}x{height} RGB")))
}

fn param(reason: String) -> Error {
    Error::Param { name: "resize".into(), reason }
}

/// An RGB8 image as rows of interleaved channels.
struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// One axis's fixed-point coefficients: for output pixel `i`, the input window starts at
/// `starts[i]` and its `lens[i]` weights are `weights[i * ksize..][..lens[i]]`.
struct Coeffs {
    ksize: usize,
    starts: Vec<usize>,
    lens: Vec<usize>,
    weights: Vec<i32>,
}

impl Coeffs {
    fn window(&self, i: usize) -> (usize, &[i32]) {
        (self.starts[i], &self.weights[i * self.ksize..][..self.lens[i]])
    }
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the whole input axis.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow takes the box edges as C floats; the sizes here are exact in f32 below 2^24.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut starts = Vec::with_capacity(out_size);
    let mut lens = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for (i, out) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (i as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; the clamps follow it.
        let min = ((center - support + 0.5) as i64).max(0);
        let max = ((center + support + 0.5) as i64).min(in_size as i64);
        let len = (max - min).clamp(0, ksize as i64) as usize;
        let mut sum = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(len) {
            *w = filter.weight(((x as i64 + min) as f64 - center + 0.5) * inv_filterscale);
            sum += *w;
        }
        for (w, o) in k.iter_mut().zip(out.iter_mut()).take(len) {
            if sum != 0.0 {
                *w /= sum;
            }
            let fixed = *w * f64::from(1u32 << PRECISION_BITS);
            *o = if *w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        starts.push(min as usize);
        lens.push(len);
    }
    Coeffs { ksize, starts, lens, weights }
}

/// The sum of one window, rounded and clipped as Pillow's `clip8`. The arithmetic wraps as
/// Pillow's C `int` does on every platform it runs on (the 2 headroom bits keep real sums in
/// range).
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow 13's `ImagingResampleInner` for one call: one pass per axis whose size changes, each
/// rounding to 8 bits, horizontal first unless the height shrinks by more than twice as many
/// pixels as the width does (Pillow 13.0 then runs the vertical pass first, which changes the
/// rounding; Pillow 12 ran the horizontal one first except for images over 100 times taller
/// than wide). Pillow 13.0.0 is what the vision reference's environment pins
/// (scripts/goldens/vlm-constraints.txt).
fn resample(src: Plane, width: usize, height: usize, filter: Filter) -> Plane {
    let (in_w, in_h) = (src.width as i64, src.height as i64);
    let vertical_first = (height as i64) < in_h && in_h - height as i64 > 2 * (in_w - width as i64);
    let mut cur = src;
    if vertical_first {
        cur = vertical(&cur, height, filter);
    }
    if width != cur.width {
        cur = horizontal(&cur, width, filter);
    }
    if height != cur.height {
        cur = vertical(&cur, height, filter);
    }
    cur
}

fn horizontal(src: &Plane, width: usize, filter: Filter) -> Plane {
    let c = coefficients(src.width, width, filter);
    let mut data = vec![0u8; width * src.height * 3];
    for (row_in, row_out) in src.data.chunks_exact(src.width * 3).zip(data.chunks_exact_mut(width * 3)) {
        for (i, px) in row_out.chunks_exact_mut(3).enumerate() {
            let (start, ks) = c.window(i);
            let mut acc = [HALF; 3];
            for (j, &k) in ks.iter().enumerate() {
                let p = &row_in[(start + j) * 3..][..3];
                for ch in 0..3 {
                    acc[ch] = acc[ch].wrapping_add(i32::from(p[ch]).wrapping_mul(k));
                }
            }
            for ch in 0..3 {
                px[ch] = clip8(acc[ch]);
            }
        }
    }
    Plane { width, height: src.height, data }
}

fn vertical(src: &Plane, height: usize, filter: Filter) -> Plane {
    let c = coefficients(src.height, height, filter);
    let stride = src.width * 3;
    let mut data = vec![0u8; stride * height];
    for (i, row_out) in data.chunks_exact_mut(stride).enumerate() {
        let (start, ks) = c.window(i);
        for (x, out) in row_out.iter_mut().enumerate() {
            let mut acc = HALF;
            for (j, &k) in ks.iter().enumerate() {
                acc = acc.wrapping_add(i32::from(src.data[(start + j) * stride + x]).wrapping_mul(k));
            }
            *out = clip8(acc);
        }
    }
    Plane { width: src.width, height, data }
}

/// Pillow's NEAREST resize: `ImagingScaleAffine` with the step `in / out` per axis, starting
/// at half a step, accumulated; coordinates outside the input (none in practice) stay black.
fn nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let src_x = nearest_map(in_w, width);
    let src_y = nearest_map(in_h, height);
    let mut out = RgbImage::new(width, height);
    for (y, sy) in src_y.iter().enumerate() {
        let Some(sy) = *sy else { continue };
        for (x, sx) in src_x.iter().enumerate() {
            if let Some(sx) = *sx {
                out.put_pixel(x as u32, y as u32, *img.get_pixel(sx, sy));
            }
        }
    }
    out
}

fn nearest_map(in_size: u32, out_size: u32) -> Vec<Option<u32>> {
    let step = f64::from(in_size as f32) / f64::from(out_size);
    let mut pos = step * 0.5;
    (0..out_size)
        .map(|_| {
            // Pillow's COORD(): -1 for negative coordinates, else truncation.
            let coord = if pos < 0.0 { -1 } else { pos as i64 };
            pos += step;
            (0..i64::from(in_size)).contains(&coord).then_some(coord as u32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_codes_round_trip() {
        for f in Filter::ALL {
            assert_eq!(Filter::from_pil_code(u64::from(f.pil_code())), Some(f));
        }
        assert_eq!(Filter::from_pil_code(6), None);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for f in Filter::ALL.into_iter().filter(|&f| f != Filter::Nearest) {
            for (i, o) in [(37, 16), (23, 50), (7, 7), (1, 5), (5, 1)] {
                let c = coefficients(i, o, f);
                for k in 0..o {
                    let sum: i64 = c.window(k).1.iter().map(|&w| i64::from(w)).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i64, "{f:?} {i}->{o} #{k}: {sum}");
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(9, 5, image::Rgb([7, 128, 250]));
        for f in Filter::ALL {
            let out = resize(&img, 4, 13, f).unwrap();
            assert!(out.pixels().all(|p| p.0 == [7, 128, 250]), "{f:?}");
        }
    }

    #[test]
    fn zero_sizes_are_errors() {
        let img = RgbImage::new(3, 3);
        assert!(resize(&img, 0, 3, Filter::Bilinear).is_err());
        assert!(resize(&RgbImage::new(0, 3), 2, 2, Filter::Bilinear).is_err());
    }
}
