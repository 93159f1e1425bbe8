//! A checkpoint's `preprocessor_config.json` (a Hugging Face image processor) and the pixel
//! values it makes from an RGB image.
//!
//! The steps and their number types follow HF's PIL backend (`PilBackend._preprocess`, used by
//! the Gemma 3 and SigLIP processors without torchvision) exactly:
//! 1. resize the uint8 image with PIL (here [`resample::resize`], byte-exact), then, when
//!    `do_center_crop` is set (CLIP's processor), center crop to `crop_size` with the offsets of
//!    HF's numpy `center_crop` (`(size - crop) // 2`), zero-padding an image smaller than it;
//! 2. rescale: `x.astype(float64) * rescale_factor`, then cast to float32;
//! 3. normalize in float32: `(x - mean) / std` with `mean` and `std` cast to float32 (a uint8
//!    image that was not rescaled is cast to float32 first).
//!
//! The Pixtral processor (`PixtralImageProcessor`, mlx-vlm's own, for pixtral and mistral3)
//! differs in three ways, each as the reference does it: the size is limited to `longest_edge`
//! and then rounded *up* to whole patches (so any image size is taken, never refused), its
//! default filter is BICUBIC, and it rescales in float32 (`x.astype(float32) * factor`).
//!
//! Steps this module does not implement (`do_pan_and_scan`, `do_pad`) are
//! refused when the config turns them on, rather than silently skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::image::ImageLimits;
use super::pixtral_size::{patch_side, pixtral_multiple, pixtral_size};
use super::resample::{self, Filter};
use crate::api::Array;
use crate::error::{Error, Result};

/// The file name of a checkpoint's image-processor settings.
pub const FILE_NAME: &str = "preprocessor_config.json";

/// `preprocessor_config.json`, as HF image processors read it. A JSON `null` means the
/// processor class's default, as in HF.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    /// Resize to `size` first. HF default (Gemma 3, SigLIP): true.
    #[serde(default = "yes", deserialize_with = "bool_or_true")]
    pub do_resize: bool,
    /// Target size. HF default (Gemma 3, SigLIP): 224 x 224.
    #[serde(default, deserialize_with = "image_size")]
    pub size: ImageSize,
    /// Center crop after the resize (CLIP). HF default for the processors served here: false.
    #[serde(default, deserialize_with = "bool_or_false")]
    pub do_center_crop: bool,
    /// The crop, `{"height": H, "width": W}` (or a bare number). HF's CLIP default: 224.
    #[serde(default, deserialize_with = "image_size")]
    pub crop_size: ImageSize,
    /// Resampling filter as a PIL code (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX,
    /// 5 HAMMING). `None`: the class default, see [`PreprocessorConfig::filter`].
    #[serde(default, deserialize_with = "filter_code")]
    pub resample: Option<Filter>,
    /// Multiply by `rescale_factor`. HF default: true.
    #[serde(default = "yes", deserialize_with = "bool_or_true")]
    pub do_rescale: bool,
    /// HF default: 1/255.
    #[serde(default = "one_255th", deserialize_with = "factor_or_default")]
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std`. HF default: true.
    #[serde(default = "yes", deserialize_with = "bool_or_true")]
    pub do_normalize: bool,
    /// Per-channel mean (a single number applies to all three). HF default (Gemma 3, SigLIP:
    /// `IMAGENET_STANDARD_MEAN`): 0.5 each.
    #[serde(default = "halves", deserialize_with = "per_channel")]
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation. HF default (`IMAGENET_STANDARD_STD`): 0.5 each.
    #[serde(default = "halves", deserialize_with = "per_channel")]
    pub image_std: [f64; 3],
    /// Convert to RGB first. Decoded images are always RGB here, so this changes nothing; kept
    /// for completeness. HF default: `None` (true for Gemma 3 and SigLIP).
    #[serde(default)]
    pub do_convert_rgb: Option<bool>,
    /// The HF class, e.g. `Gemma3ImageProcessor`, `SiglipImageProcessor`.
    #[serde(default)]
    pub image_processor_type: Option<String>,
    /// Every other key (`processor_class`, `image_seq_length`, ...), as written.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
    /// Pixtral processors only: the side in pixels an image is rounded up to a multiple of (the
    /// tower's patch size times `spatial_merge_size`). From this file's `patch_size`, then, in
    /// [`PreprocessorConfig::load`], from the checkpoint's `config.json`.
    #[serde(skip)]
    pub patch_multiple: Option<u32>,
}

/// `size` in `preprocessor_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    /// `{"height": H, "width": W}` (or a bare number N for N x N): resize to exactly this.
    Exact { height: u32, width: u32 },
    /// `{"shortest_edge": S}`: the short side becomes S, the long one `int(S * long / short)`
    /// (HF's `get_resize_output_image_size` with `default_to_square=False`).
    ShortestEdge(u32),
    /// `{"shortest_edge": S, "longest_edge": L}`: HF's `get_size_with_aspect_ratio`: the short
    /// side becomes S unless that makes the long side exceed L.
    ShortestLongest { shortest: u32, longest: u32 },
    /// `{"longest_edge": L}`: the long side becomes L, the short one `int(L * short / long)`
    /// (at least 1), aspect ratio kept. HF's generic resize has no such case; processors that
    /// use it (Idefics-style) resize this way before their own tiling.
    LongestEdge(u32),
}

impl Default for ImageSize {
    fn default() -> Self {
        ImageSize::Exact { height: 224, width: 224 }
    }
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSize::Exact { height, width } => write!(f, "{width}x{height}"),
            ImageSize::ShortestEdge(s) => write!(f, "shortest_edge={s}"),
            ImageSize::ShortestLongest { shortest, longest } => {
                write!(f, "shortest_edge={shortest},longest_edge={longest}")
            }
            ImageSize::LongestEdge(l) => write!(f, "longest_edge={l}"),
        }
    }
}

/// Preprocessed pixels, NHWC without the batch axis: `data[(y * width + x) * 3 + c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub data: Vec<f32>,
    pub height: u32,
    pub width: u32,
}

impl PixelValues {
    /// An MLX array of shape `[1, height, width, 3]`, float32.
    pub fn to_array(&self) -> Result<Array> {
        let dim = |v: u32| {
            i32::try_from(v)
                .map_err(|_| Error::Param { name: "pixel_values".into(), reason: format!("{v} is too large") })
        };
        Ok(Array::from_slice(&self.data, &[1, dim(self.height)?, dim(self.width)?, 3])?)
    }
}

impl PreprocessorConfig {
    /// Reads `dir/preprocessor_config.json`; `None` when the checkpoint has none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let mut cfg = Self::parse(&text, &path)?;
        if cfg.is_pixtral() {
            cfg.patch_multiple = Some(pixtral_multiple(dir, cfg.patch_multiple)?);
        }
        Ok(Some(cfg))
    }

    /// Whether this is the Pixtral image processor (pixtral, mistral3).
    pub fn is_pixtral(&self) -> bool {
        self.image_processor_type.as_deref().is_some_and(|t| t.starts_with("Pixtral"))
    }

    /// Parses and checks the JSON text of `path`; errors name the file and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Model { path: PathBuf::from(path), reason };
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: PreprocessorConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            if field == "." {
                bad(e.into_inner().to_string())
            } else {
                bad(format!("field `{field}`: {}", e.into_inner()))
            }
        })?;
        cfg.check().map_err(bad)?;
        let mut cfg = cfg;
        if cfg.is_pixtral() {
            cfg.patch_multiple = Some(match cfg.extra.get("patch_size") {
                None | Some(Value::Null) => 16,
                Some(v) => patch_side(v).ok_or_else(|| {
                    bad(format!(
                        "field `patch_size`: expected a positive integer or {{\"height\", \"width\"}}, found {v}"
                    ))
                })?,
            });
            if matches!(cfg.size, ImageSize::ShortestEdge(_) | ImageSize::ShortestLongest { .. }) {
                return Err(bad(format!(
                    "field `size`: {} is not a size the Pixtral processor takes ({{\"longest_edge\"}} or {{\"height\", \"width\"}})",
                    cfg.size
                )));
            }
        }
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !self.rescale_factor.is_finite() {
            return Err(format!("field `rescale_factor`: expected a finite number, found {}", self.rescale_factor));
        }
        if let Some(i) = self.image_std.iter().position(|s| *s == 0.0 || !s.is_finite()) {
            return Err(format!(
                "field `image_std`: expected non-zero finite numbers, found {} at {i}",
                self.image_std[i]
            ));
        }
        if let Some(i) = self.image_mean.iter().position(|m| !m.is_finite()) {
            return Err(format!("field `image_mean`: expected finite numbers, found {} at {i}", self.image_mean[i]));
        }
        if self.do_center_crop && !matches!(self.crop_size, ImageSize::Exact { .. }) {
            return Err(format!("field `crop_size`: expected {{\"height\", \"width\"}}, found {}", self.crop_size));
        }
        for key in ["do_pan_and_scan", "do_pad"] {
            if self.extra.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(format!("field `{key}`: true is not supported yet (only resize, rescale, normalize)"));
            }
        }
        Ok(())
    }

    /// The resampling filter: `resample` if given, else the class default: BICUBIC for SigLIP
    /// and CLIP processors, BILINEAR otherwise (Gemma 3's default, and HF's PIL fallback).
    pub fn filter(&self) -> Filter {
        if let Some(f) = self.resample {
            return f;
        }
        match self.image_processor_type.as_deref() {
            Some(t) if t.starts_with("Siglip") || t.starts_with("CLIP") || t.starts_with("Pixtral") => Filter::Bicubic,
            _ => Filter::Bilinear,
        }
    }

    /// The size an image of `width` x `height` is resized to, as `(width, height)`.
    pub fn output_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        if width == 0 || height == 0 {
            return Err(Error::Param {
                name: "image".into(),
                reason: format!("cannot preprocess an empty {width}x{height} image"),
            });
        }
        let (w, h) = (u64::from(width), u64::from(height));
        if let Some(unit) = self.patch_multiple.filter(|_| self.is_pixtral()) {
            return Ok(pixtral_size(w, h, self.size, unit));
        }
        let (oh, ow) = match self.size {
            ImageSize::Exact { height, width } => (u64::from(height), u64::from(width)),
            ImageSize::ShortestEdge(s) => {
                let s = u64::from(s);
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = ((s * long) as f64 / short as f64) as u64;
                if w <= h {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
            ImageSize::ShortestLongest { shortest, longest } => size_with_aspect_ratio(h, w, shortest, longest),
            ImageSize::LongestEdge(l) => {
                let l = u64::from(l);
                if w >= h {
                    (((l * h) as f64 / w as f64) as u64, l)
                } else {
                    (l, ((l * w) as f64 / h as f64) as u64)
                }
            }
        };
        let fit = |v: u64| u32::try_from(v.max(1)).unwrap_or(u32::MAX);
        Ok((fit(ow), fit(oh)))
    }

    /// Resize, rescale and normalize one image as the HF processor does.
    pub fn preprocess(&self, img: &RgbImage) -> Result<PixelValues> {
        let resized;
        let img = if self.do_resize {
            let (w, h) = self.output_size(img.width(), img.height())?;
            if u64::from(w) * u64::from(h) > ImageLimits::DEFAULT_MAX_PIXELS {
                return Err(Error::Param {
                    name: "size".into(),
                    reason: format!(
                        "resizing to {w}x{h} is over the limit of {} pixels",
                        ImageLimits::DEFAULT_MAX_PIXELS
                    ),
                });
            }
            resized = resample::resize(img, w, h, self.filter())?;
            &resized
        } else {
            img
        };
        let pixtral = self.is_pixtral();
        let cropped;
        let img = match self.crop_size {
            ImageSize::Exact { height, width } if self.do_center_crop => {
                cropped = center_crop(img, width, height);
                &cropped
            }
            _ => img,
        };
        let mean = self.image_mean.map(|m| m as f32);
        let std = self.image_std.map(|s| s as f32);
        let data = img
            .as_raw()
            .chunks_exact(3)
            .flat_map(|px| {
                std::array::from_fn::<f32, 3, _>(|c| {
                    let x = if self.do_rescale && pixtral {
                        f32::from(px[c]) * self.rescale_factor as f32
                    } else if self.do_rescale {
                        (f64::from(px[c]) * self.rescale_factor) as f32
                    } else {
                        f32::from(px[c])
                    };
                    if self.do_normalize {
                        (x - mean[c]) / std[c]
                    } else {
                        x
                    }
                })
            })
            .collect();
        Ok(PixelValues { data, height: img.height(), width: img.width() })
    }

    /// A string naming every setting that changes the pixel values, to key a cache of vision
    /// features by (with the image's hash).
    pub fn cache_key(&self) -> String {
        let mut resize = if self.do_resize { format!("{}/{}", self.size, self.filter().name()) } else { "none".into() };
        if let Some(unit) = self.patch_multiple.filter(|_| self.is_pixtral() && self.do_resize) {
            resize.push_str(&format!("/x{unit}"));
        }
        let rescale =
            if self.do_rescale && self.is_pixtral() { format!("f32:{:?}", self.rescale_factor) } else { String::new() };
        let rescale = if !rescale.is_empty() {
            rescale
        } else if self.do_rescale {
            format!("{:?}", self.rescale_factor)
        } else {
            "none".into()
        };
        let normalize =
            if self.do_normalize { format!("{:?}/{:?}", self.image_mean, self.image_std) } else { "none".into() };
        let crop = if self.do_center_crop { format!(";crop={}", self.crop_size) } else { String::new() };
        format!("resize={resize}{crop};rescale={rescale};normalize={normalize}")
    }
}

/// HF's numpy `center_crop`: the `width x height` window at offsets `(size - crop) // 2`
/// (floor division, so negative when the image is smaller), zeros where it leaves the image.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let top = (i64::from(img.height()) - i64::from(height)).div_euclid(2);
    let left = (i64::from(img.width()) - i64::from(width)).div_euclid(2);
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
        if sx >= 0 && sy >= 0 && sx < i64::from(img.width()) && sy < i64::from(img.height()) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// HF's `get_size_with_aspect_ratio((height, width), size, max_size)`, as `(height, width)`.
fn size_with_aspect_ratio(height: u64, width: u64, size: u32, max_size: u32) -> (u64, u64) {
    let (mut size, max_size) = (u64::from(size), max_size as f64);
    let (min_orig, max_orig) = (height.min(width) as f64, height.max(width) as f64);
    let mut raw = None;
    if max_orig / min_orig * size as f64 > max_size {
        let r = max_size * min_orig / max_orig;
        size = r.round_ties_even() as u64;
        raw = Some(r);
    }
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        let oh = match raw {
            Some(r) => (r * height as f64 / width as f64) as u64,
            None => ((size * height) as f64 / width as f64) as u64,
        };
        (oh, size)
    } else {
        let ow = match raw {
            Some(r) => (r * width as f64 / height as f64) as u64,
            None => ((size * width) as f64 / height as f64) as u64,
        };
        (size, ow)
    }
}

// --- serde helpers: JSON null means the default -----------------------------------------------

fn yes() -> bool {
    true
}

fn one_255th() -> f64 {
    1.0 / 255.0
}

fn halves() -> [f64; 3] {
    [0.5; 3]
}

fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn bool_or_true<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

fn factor_or_default<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or_else(one_255th))
}

fn filter_code<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Filter>, D::Error> {
    let Some(code) = Option::<u64>::deserialize(d)? else { return Ok(None) };
    Filter::from_pil_code(code).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown PIL filter {code}; expected 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX or 5 HAMMING"
        ))
    })
}

fn per_channel<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<[f64; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f64),
        Many(Vec<f64>),
    }
    match Option::<OneOrMany>::deserialize(d)? {
        None => Ok(halves()),
        Some(OneOrMany::One(v)) => Ok([v; 3]),
        Some(OneOrMany::Many(v)) => match v[..] {
            [a] => Ok([a; 3]),
            [a, b, c] => Ok([a, b, c]),
            _ => Err(serde::de::Error::custom(format!("expected 3 numbers (one per RGB channel), found {}", v.len()))),
        },
    }
}

fn image_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<ImageSize, D::Error> {
    use serde::de::Error as _;
    let expected = "expected {\"height\", \"width\"}, {\"shortest_edge\"}, {\"longest_edge\"} or both edges";
    let side = |v: &Value, key: &str| -> std::result::Result<u32, D::Error> {
        v.as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| D::Error::custom(format!("`{key}` must be a positive integer, found {v}")))
    };
    let map = match Option::<Value>::deserialize(d)? {
        None => return Ok(ImageSize::default()),
        Some(v @ Value::Number(_)) => {
            let n = side(&v, "size")?;
            return Ok(ImageSize::Exact { height: n, width: n });
        }
        Some(Value::Object(m)) => m,
        Some(other) => return Err(D::Error::custom(format!("{expected}, found {other}"))),
    };
    let get = |key: &str| map.get(key).filter(|v| !v.is_null()).map(|v| side(v, key)).transpose();
    match (get("height")?, get("width")?, get("shortest_edge")?, get("longest_edge")?) {
        (Some(height), Some(width), None, None) => Ok(ImageSize::Exact { height, width }),
        (None, None, Some(s), None) => Ok(ImageSize::ShortestEdge(s)),
        (None, None, Some(shortest), Some(longest)) => Ok(ImageSize::ShortestLongest { shortest, longest }),
        (None, None, None, Some(l)) => Ok(ImageSize::LongestEdge(l)),
        _ => Err(D::Error::custom(format!("{expected}, found {}", Value::Object(map.clone())))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PreprocessorConfig> {
        PreprocessorConfig::parse(json, Path::new("m/preprocessor_config.json"))
    }

    #[test]
    fn defaults_are_hf_siglip_gemma3() {
        let c = parse("{}").unwrap();
        assert!(c.do_resize && c.do_rescale && c.do_normalize);
        assert_eq!(c.size, ImageSize::Exact { height: 224, width: 224 });
        assert_eq!(c.rescale_factor, 1.0 / 255.0);
        assert_eq!((c.image_mean, c.image_std), ([0.5; 3], [0.5; 3]));
        assert_eq!(c.filter(), Filter::Bilinear);
        let s = parse(r#"{"image_processor_type": "SiglipImageProcessor", "do_resize": null}"#).unwrap();
        assert_eq!(s.filter(), Filter::Bicubic);
        assert!(s.do_resize);
    }

    #[test]
    fn gemma3_config_parses() {
        let c = parse(
            r#"{"do_convert_rgb": null, "do_normalize": true, "do_pan_and_scan": null, "do_rescale": true,
                "do_resize": true, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
                "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5], "processor_class": "Gemma3Processor",
                "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 896, "width": 896}}"#,
        )
        .unwrap();
        assert_eq!(c.size, ImageSize::Exact { height: 896, width: 896 });
        assert_eq!(c.filter(), Filter::Bilinear);
        assert_eq!(c.extra.get("image_seq_length"), Some(&Value::from(256)));
        assert_eq!(
            c.cache_key(),
            "resize=896x896/BILINEAR;rescale=0.00392156862745098;normalize=[0.5, 0.5, 0.5]/[0.5, 0.5, 0.5]"
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        for (json, field) in [
            (r#"{"do_resize": "yes"}"#, "`do_resize`"),
            (r#"{"resample": 9}"#, "`resample`"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "`image_mean`"),
            (r#"{"image_std": [0.5, 0, 0.5]}"#, "`image_std`"),
            (r#"{"size": {"height": 0, "width": 3}}"#, "`size`"),
            (r#"{"size": {"max_height": 3}}"#, "`size`"),
            (r#"{"do_pad": true}"#, "`do_pad`"),
            (r#"{"do_center_crop": true, "crop_size": {"shortest_edge": 3}}"#, "`crop_size`"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.starts_with("m/preprocessor_config.json: field ") && e.contains(field), "{json}: {e}");
        }
        assert!(parse("{").unwrap_err().to_string().starts_with("m/preprocessor_config.json: "));
    }

    #[test]
    fn pixtral_sizes_fit_the_longest_edge_then_round_up_to_patches() {
        let c = parse(
            r#"{"image_processor_type": "PixtralImageProcessor", "patch_size": {"height": 8, "width": 8},
                "size": {"longest_edge": 64}}"#,
        )
        .unwrap();
        assert_eq!((c.patch_multiple, c.filter()), (Some(8), Filter::Bicubic));
        // Smaller than the edge: only rounded up. Larger: floor(70 / (70/64)) = 64,
        // floor(50 / 1.09375) = 45 -> 48.
        assert_eq!(c.output_size(37, 23).unwrap(), (40, 24));
        assert_eq!(c.output_size(50, 70).unwrap(), (48, 64));
        assert_eq!(c.output_size(1, 1000).unwrap(), (8, 64));
        assert_eq!(PreprocessorConfig { patch_multiple: Some(16), ..c.clone() }.output_size(37, 23).unwrap(), (48, 32));
        assert!(c.cache_key().contains("/x8") && c.cache_key().contains("rescale=f32:"), "{}", c.cache_key());
        let e = parse(r#"{"image_processor_type": "PixtralImageProcessor", "size": {"shortest_edge": 64}}"#);
        assert!(e.unwrap_err().to_string().contains("field `size`"));
        let e = parse(r#"{"image_processor_type": "PixtralImageProcessor", "patch_size": {"height": 8, "width": 4}}"#);
        assert!(e.unwrap_err().to_string().contains("field `patch_size`"));
    }

    #[test]
    fn center_crop_follows_hf_numpy_offsets_and_pads_with_zeros() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 9]));
        // (5 - 2) // 2 = 1, (4 - 3) // 2 = 0.
        let c = center_crop(&img, 2, 3);
        assert_eq!((c.width(), c.height()), (2, 3));
        assert_eq!(c.get_pixel(0, 0).0, [1, 0, 9]);
        assert_eq!(c.get_pixel(1, 2).0, [2, 2, 9]);
        // A larger crop: (5 - 8) // 2 = -2 columns of zeros on the left, one on the right.
        let p = center_crop(&img, 8, 4);
        assert_eq!(p.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(p.get_pixel(2, 1).0, [0, 1, 9]);
        assert_eq!(p.get_pixel(6, 3).0, [4, 3, 9]);
        assert_eq!(p.get_pixel(7, 3).0, [0, 0, 0]);
        let cfg = parse(
            r#"{"do_resize": false, "do_center_crop": true, "crop_size": {"height": 3, "width": 2},
                           "do_normalize": false, "do_rescale": false}"#,
        )
        .unwrap();
        let px = cfg.preprocess(&img).unwrap();
        assert_eq!((px.width, px.height), (2, 3));
        assert_eq!(&px.data[..3], &[1.0, 0.0, 9.0]);
        assert!(cfg.cache_key().contains("crop=2x3"), "{}", cfg.cache_key());
    }

    #[test]
    fn output_sizes_follow_hf() {
        let with = |size| PreprocessorConfig { size, ..parse("{}").unwrap() };
        assert_eq!(with(ImageSize::ShortestEdge(224)).output_size(640, 480).unwrap(), (298, 224));
        assert_eq!(with(ImageSize::ShortestEdge(224)).output_size(480, 640).unwrap(), (224, 298));
        assert_eq!(with(ImageSize::LongestEdge(100)).output_size(640, 480).unwrap(), (100, 75));
        // get_size_with_aspect_ratio((480, 640), 800, 1000): 640/480*800 > 1000 -> raw 750.
        let sl = with(ImageSize::ShortestLongest { shortest: 800, longest: 1000 });
        assert_eq!(sl.output_size(640, 480).unwrap(), (1000, 750));
        assert_eq!(sl.output_size(400, 400).unwrap(), (800, 800));
    }
}
