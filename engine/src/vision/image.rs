//! Where images come from (a file, bytes, a `data:` URL) and decoding them to 8-bit RGB.
//!
//! Decoding accepts PNG, JPEG and WebP (the `image` crate's decoders), applies the EXIF
//! orientation (as mlx-vlm's `load_image` does with `ImageOps.exif_transpose`) and converts to
//! RGB8 the way PIL's `convert("RGB")` does: **alpha is dropped, not composited**, grey is
//! replicated into three channels, 16-bit samples are scaled to 8 bits. Limits on the encoded
//! size and the decoded pixel count are checked before the bytes are read and before the pixel
//! buffer is allocated, so a decompression bomb is refused cheaply.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use sha2::{Digest, Sha256};

use super::resample::{self, Filter};
use crate::error::{Error, Result};

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageInput {
    /// A PNG, JPEG or WebP file.
    Path(PathBuf),
    /// The encoded bytes of a PNG, JPEG or WebP image.
    Bytes(Vec<u8>),
    /// A `data:image/<type>;base64,<payload>` URL.
    DataUrl(String),
}

impl ImageInput {
    /// Reads a command-line argument: a `data:` URL (any case) is a [`ImageInput::DataUrl`],
    /// anything else a path.
    pub fn from_arg(s: &str) -> ImageInput {
        if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("data:")) {
            ImageInput::DataUrl(s.to_string())
        } else {
            ImageInput::Path(PathBuf::from(s))
        }
    }

    /// How errors name this image: the file path, `image bytes` or `data URL`.
    pub fn label(&self) -> String {
        match self {
            ImageInput::Path(p) => p.display().to_string(),
            ImageInput::Bytes(_) => "image bytes".to_string(),
            ImageInput::DataUrl(_) => "data URL".to_string(),
        }
    }
}

/// A decoded image, ready for preprocessing.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels, EXIF orientation applied, alpha dropped, scaled to `max_image_size`.
    pub rgb: RgbImage,
    /// SHA-256 of the encoded source bytes (the file's bytes, or the decoded base64 payload).
    pub hash: [u8; 32],
    /// [`ImageInput::label`] of the source.
    pub label: String,
}

/// Bounds on what [`decode`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded image in bytes (after base64 decoding).
    pub max_bytes: usize,
    /// Largest decoded image in pixels (width x height).
    pub max_pixels: u64,
    /// `--max-image-size`: when the long side is larger, the image is scaled down (Lanczos,
    /// aspect ratio kept) so that the long side equals this.
    pub max_image_size: Option<u32>,
}

impl ImageLimits {
    /// 64 MiB encoded.
    pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
    /// 64 megapixels decoded.
    pub const DEFAULT_MAX_PIXELS: u64 = 64 << 20;
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_bytes: Self::DEFAULT_MAX_BYTES, max_pixels: Self::DEFAULT_MAX_PIXELS, max_image_size: None }
    }
}

/// Reads, checks and decodes one image.
pub fn decode(input: &ImageInput, limits: &ImageLimits) -> Result<DecodedImage> {
    let label = input.label();
    let bytes = match input {
        ImageInput::Path(p) => read_file(p, limits.max_bytes)?,
        ImageInput::Bytes(b) => {
            check_bytes(&label, b.len() as u64, limits.max_bytes)?;
            b.clone()
        }
        ImageInput::DataUrl(url) => data_url_bytes(url, limits.max_bytes)?,
    };
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let mut rgb = decode_bytes(&label, &bytes, limits.max_pixels)?;
    if let Some(max) = limits.max_image_size {
        rgb = fit_long_side(&label, rgb, max)?;
    }
    Ok(DecodedImage { rgb, hash, label })
}

fn err(image: &str, reason: impl Into<String>) -> Error {
    Error::Image { image: image.to_string(), reason: reason.into() }
}

fn check_bytes(label: &str, len: u64, max: usize) -> Result<()> {
    if len > max as u64 {
        return Err(err(label, format!("{len} bytes is over the image size limit of {max} bytes")));
    }
    Ok(())
}

fn read_file(path: &Path, max_bytes: usize) -> Result<Vec<u8>> {
    let label = path.display().to_string();
    let io = |e: std::io::Error| err(&label, format!("cannot read the image file: {e}"));
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(err(&label, "is a directory, expected a PNG, JPEG or WebP file"));
    }
    check_bytes(&label, meta.len(), max_bytes)?;
    // Read one byte past the limit so a file that grew after the check is still refused.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    check_bytes(&label, bytes.len() as u64, max_bytes)?;
    Ok(bytes)
}

/// The payload of a `data:image/<type>;base64,<payload>` URL. ASCII whitespace in the payload
/// is skipped and `=` padding is optional.
fn data_url_bytes(url: &str, max_bytes: usize) -> Result<Vec<u8>> {
    const LABEL: &str = "data URL";
    let expected = "expected data:image/<type>;base64,<payload>";
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])
        .ok_or_else(|| err(LABEL, format!("does not start with `data:`; {expected}")))?;
    let (meta, payload) =
        rest.split_once(',').ok_or_else(|| err(LABEL, format!("has no `,` before the payload; {expected}")))?;
    let mut parts = meta.split(';').map(str::trim);
    let mime = parts.next().unwrap_or_default();
    if !mime.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("image/")) {
        return Err(err(LABEL, format!("media type `{}` is not an image type; {expected}", short(mime))));
    }
    if !parts.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(err(LABEL, format!("is not base64-encoded (no `;base64`); {expected}")));
    }
    let payload: Vec<u8> = payload.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    // Base64 holds 3 bytes in 4 characters: refuse an oversized payload before decoding it.
    check_bytes(LABEL, payload.len() as u64 / 4 * 3, max_bytes)?;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(&payload).map_err(|e| err(LABEL, format!("invalid base64 payload: {e}")))?;
    check_bytes(LABEL, bytes.len() as u64, max_bytes)?;
    Ok(bytes)
}

/// The first 40 characters of `s`, for messages.
fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn decode_bytes(label: &str, bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let not_image = || err(label, "not a PNG, JPEG or WebP image");
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|_| not_image())?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        _ => return Err(not_image()),
    }
    let format = reader.format().map(|f| format!("{f:?}").to_uppercase()).unwrap_or_default();
    let bad = |e: image::ImageError| err(label, format!("cannot decode the {format} image: {e}"));
    // zune-jpeg fills in what is missing from a cut-off JPEG; PIL refuses it ("image file is
    // truncated"), and so do we.
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(err(label, "cannot decode the JPEG image: truncated (no end-of-image marker)"));
    }
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(side);
    lim.max_image_height = Some(side);
    // RGBA with 16-bit samples is the widest buffer a decoder makes: 8 bytes a pixel.
    lim.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| over_limit(label, e, max_pixels).unwrap_or_else(bad))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(pixels_over(label, w, h, max_pixels));
    }
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| over_limit(label, e, max_pixels).unwrap_or_else(bad))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Whether a JPEG's segments and entropy-coded data run to an end-of-image marker (bytes after
/// it are allowed, as decoders ignore them).
fn jpeg_is_complete(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 2; // after SOI
    loop {
        while i < n && b[i] == 0xFF && b.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        if i + 1 >= n || b[i] != 0xFF {
            return false;
        }
        let marker = b[i + 1];
        i += 2;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { return false };
        if len < 2 || i + len > n {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: up to the next marker that is not a stuffed 0x00 or a restart.
            loop {
                if i + 1 >= n {
                    return false;
                }
                if b[i] == 0xFF && !matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                    break;
                }
                i += 1;
            }
        }
    }
}

/// A limit error from the decoder, reworded; any other error is handed back.
fn over_limit(label: &str, e: image::ImageError, max_pixels: u64) -> std::result::Result<Error, image::ImageError> {
    match e {
        image::ImageError::Limits(l) => {
            Ok(err(label, format!("image is over the decoded size limit of {max_pixels} pixels ({l})")))
        }
        other => Err(other),
    }
}

fn pixels_over(label: &str, w: u32, h: u32, max_pixels: u64) -> Error {
    let n = u64::from(w) * u64::from(h);
    err(label, format!("{w}x{h} = {n} pixels is over the decoded size limit of {max_pixels} pixels"))
}

/// `--max-image-size`: scales the image down (Lanczos) so that its long side is `max`, as
/// mlx-engine's `custom_resize` does: the short side is `int(max / aspect)` (or
/// `int(max * aspect)`), at least 1.
fn fit_long_side(label: &str, img: RgbImage, max: u32) -> Result<RgbImage> {
    if max == 0 {
        return Err(err(label, "--max-image-size must be at least 1"));
    }
    let (w, h) = img.dimensions();
    if w <= max && h <= max {
        return Ok(img);
    }
    let aspect = f64::from(w) / f64::from(h);
    let (nw, nh) = if w > h {
        (max, ((f64::from(max) / aspect) as u32).max(1))
    } else {
        (((f64::from(max) * aspect) as u32).max(1), max)
    };
    resample::resize(&img, nw, nh, Filter::Lanczos)
}
