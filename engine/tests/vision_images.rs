//! Images in: decoding (sources, formats, orientation, alpha, limits, errors), the PIL-exact
//! resampler against Pillow's own output, and HF-style preprocessing against numbers computed
//! with Pillow and NumPy.
//!
//! Goldens: `tests/goldens/pil_resize.json` and `tests/goldens/images/`, written by
//! `scripts/goldens/pil_resize.py` (Pillow 13.0.0, as the vision reference's venv pins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use mlx_engine::vision::{
    decode, resize, DecodedImage, Filter, ImageInput, ImageLimits, ImageSize, PreprocessorConfig,
};
use mlx_engine::Error;
use serde_json::Value;
use sha2::{Digest, Sha256};

// --- helpers ------------------------------------------------------------------------------------

fn goldens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/goldens")
}

fn golden_json() -> Value {
    let text = std::fs::read_to_string(goldens().join("pil_resize.json")).expect("read pil_resize.json");
    serde_json::from_str(&text).expect("parse pil_resize.json")
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s.as_str().expect("base64 string")).expect("base64")
}

/// The test pattern of `scripts/goldens/pil_resize.py` (`pixel`), bit for bit.
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb(std::array::from_fn(|c| {
            let c = c as u32;
            if (x / 5 + y / 4) % 4 == 0 {
                return if (x / 5) % 2 == 0 { 255 } else { 0 };
            }
            let grad = (x * 255 / (w - 1).max(1) + y * 128 / (h - 1).max(1) + c * 85) % 256;
            let noise = (x * 73 + y * 151 + c * 29).wrapping_mul(2654435761) >> 24;
            ((grad * 3 + noise) / 4) as u8
        }))
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn decode_bytes(bytes: Vec<u8>) -> mlx_engine::Result<DecodedImage> {
    decode(&ImageInput::Bytes(bytes), &ImageLimits::default())
}

/// The `Error::Image` message, or a panic naming what came instead.
fn image_err(r: mlx_engine::Result<DecodedImage>) -> String {
    match r {
        Err(e @ Error::Image { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Image, got {e:?}"),
        Ok(d) => panic!("expected an error, decoded {}x{}", d.rgb.width(), d.rgb.height()),
    }
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

// --- the resampler against Pillow ---------------------------------------------------------------

#[test]
fn resize_matches_pillow_byte_for_byte_for_every_filter() {
    let g = golden_json();
    let mut images = BTreeMap::new();
    for (name, wh) in g["images"].as_object().unwrap() {
        let (w, h) = (wh[0].as_u64().unwrap() as u32, wh[1].as_u64().unwrap() as u32);
        images.insert(name.clone(), pattern(w, h));
    }
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 66);
    // filter -> (cases, cases differing, worst |diff|)
    let mut per_filter: BTreeMap<String, (usize, usize, u8)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let filter = Filter::from_pil_code(case["code"].as_u64().unwrap()).unwrap();
        assert_eq!(filter.name(), case["filter"].as_str().unwrap());
        let (w, h) = (case["size"][0].as_u64().unwrap() as u32, case["size"][1].as_u64().unwrap() as u32);
        let name = case["image"].as_str().unwrap();
        let out = resize(&images[name], w, h, filter).unwrap();
        let want = b64(&case["rgb"]);
        assert_eq!(out.as_raw().len(), want.len());
        let e = per_filter.entry(filter.name().to_string()).or_default();
        e.0 += 1;
        if out.as_raw() != &want {
            let d = max_diff(out.as_raw(), &want);
            e.1 += 1;
            e.2 = e.2.max(d);
            let n = out.as_raw().iter().zip(&want).filter(|(a, b)| a != b).count();
            failures.push(format!("{name} -> {w}x{h} {}: {n} bytes differ, max |diff| {d}", filter.name()));
        }
    }
    for (f, (n, bad, worst)) in &per_filter {
        println!("{f:>8}: {n} cases, {bad} differ, max |diff| {worst}");
    }
    assert!(failures.is_empty(), "differs from Pillow:\n{}", failures.join("\n"));
}

#[test]
fn resize_to_the_same_size_is_a_copy_and_one_axis_keeps_the_other() {
    let img = pattern(37, 23);
    for f in Filter::ALL {
        assert_eq!(resize(&img, 37, 23, f).unwrap(), img, "{f:?}");
        // Only the height changes: every column is filtered on its own.
        let tall = resize(&img, 37, 11, f).unwrap();
        let col = RgbImage::from_fn(1, 23, |_, y| *img.get_pixel(4, y));
        let col = resize(&col, 1, 11, f).unwrap();
        assert!((0..11).all(|y| tall.get_pixel(4, y) == col.get_pixel(0, y)), "{f:?}");
    }
}

// --- decoding -----------------------------------------------------------------------------------

#[test]
fn golden_png_decodes_to_the_pattern_with_its_hash() {
    let path = goldens().join("images/grad37x23.png");
    let d = decode(&ImageInput::Path(path.clone()), &ImageLimits::default()).unwrap();
    assert_eq!(d.rgb, pattern(37, 23));
    let want = golden_json()["preprocess"]["png_sha256"].as_str().unwrap().to_string();
    let got: String = d.hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, want);
    assert_eq!(d.label, path.display().to_string());
}

#[test]
fn png_jpeg_and_webp_decode() {
    let img = pattern(20, 12);
    assert_eq!(decode_bytes(png(&img)).unwrap().rgb, img);
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(img.as_raw(), 20, 12, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(decode_bytes(webp).unwrap().rgb, img);
    // JPEG is lossy: a smooth image comes back close.
    let smooth = RgbImage::from_fn(32, 16, |x, y| Rgb([(x * 8) as u8, (y * 16) as u8, 128]));
    let d = decode_bytes(jpeg(&smooth)).unwrap();
    assert_eq!(d.rgb.dimensions(), (32, 16));
    assert!(max_diff(d.rgb.as_raw(), smooth.as_raw()) <= 12);
}

#[test]
fn hash_is_sha256_of_the_encoded_bytes() {
    let bytes = png(&pattern(5, 4));
    let d = decode_bytes(bytes.clone()).unwrap();
    assert_eq!(d.hash, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert_eq!(d.label, "image bytes");
}

#[test]
fn alpha_is_dropped_not_composited_as_pil_convert_rgb() {
    let rgba = RgbaImage::from_fn(3, 2, |x, _| Rgba([200, 100, 50, (x * 100) as u8]));
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(rgba.as_raw(), 3, 2, image::ExtendedColorType::Rgba8)
        .unwrap();
    let d = decode_bytes(bytes).unwrap();
    assert!(d.rgb.pixels().all(|p| p.0 == [200, 100, 50]));
}

#[test]
fn grey_is_replicated_into_rgb() {
    let grey = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(grey.as_raw(), 4, 3, image::ExtendedColorType::L8)
        .unwrap();
    let d = decode_bytes(bytes).unwrap();
    assert_eq!(d.rgb.get_pixel(2, 1).0, [81, 81, 81]);
}

/// A JPEG with an EXIF APP1 segment carrying only the Orientation tag.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    // 32x16: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise, so
    // the result is 16x32 with red on top.
    let img = RgbImage::from_fn(32, 16, |x, _| if x < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
    let plain = jpeg(&img);
    assert_eq!(decode_bytes(plain.clone()).unwrap().rgb.dimensions(), (32, 16));
    let d = decode_bytes(with_exif_orientation(&plain, 6)).unwrap();
    assert_eq!(d.rgb.dimensions(), (16, 32));
    let top = d.rgb.get_pixel(8, 4).0;
    let bottom = d.rgb.get_pixel(8, 28).0;
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
}

#[test]
fn max_image_size_scales_the_long_side_with_lanczos() {
    let img = pattern(64, 48);
    let limits = ImageLimits { max_image_size: Some(32), ..ImageLimits::default() };
    let d = decode(&ImageInput::Bytes(png(&img)), &limits).unwrap();
    assert_eq!(d.rgb, resize(&img, 32, 24, Filter::Lanczos).unwrap());
    // Portrait: the height is the long side; int(32 * 37/41) = 28.
    let d = decode(&ImageInput::Bytes(png(&pattern(37, 41))), &limits).unwrap();
    assert_eq!(d.rgb.dimensions(), (28, 32));
    // Already within the bound: unchanged.
    let d = decode(&ImageInput::Bytes(png(&pattern(20, 30))), &limits).unwrap();
    assert_eq!(d.rgb, pattern(20, 30));
}

// --- sources and data URLs ----------------------------------------------------------------------

#[test]
fn from_arg_tells_data_urls_from_paths() {
    assert_eq!(
        ImageInput::from_arg("data:image/png;base64,AAAA"),
        ImageInput::DataUrl("data:image/png;base64,AAAA".into())
    );
    assert_eq!(
        ImageInput::from_arg("DATA:image/png;base64,AA"),
        ImageInput::DataUrl("DATA:image/png;base64,AA".into())
    );
    assert_eq!(ImageInput::from_arg("photos/cat.png"), ImageInput::Path("photos/cat.png".into()));
    assert_eq!(ImageInput::from_arg("photos/cat.png").label(), "photos/cat.png");
    assert_eq!(ImageInput::from_arg("data:x").label(), "data URL");
}

#[test]
fn data_url_decodes_like_the_bytes() {
    let bytes = png(&pattern(9, 7));
    let enc = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let url = format!("data:image/png;base64,{enc}");
    let d = decode(&ImageInput::from_arg(&url), &ImageLimits::default()).unwrap();
    assert_eq!(d.rgb, pattern(9, 7));
    assert_eq!(d.hash, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert_eq!(d.label, "data URL");
    // Line breaks inside the payload and missing padding are accepted.
    let wrapped: String =
        enc.trim_end_matches('=').as_bytes().chunks(60).map(|c| String::from_utf8_lossy(c) + "\n").collect();
    let d2 = decode(&ImageInput::DataUrl(format!("data:image/png;base64,{wrapped}")), &ImageLimits::default()).unwrap();
    assert_eq!(d2.rgb, d.rgb);
}

#[test]
fn invalid_base64_is_an_error() {
    let e = image_err(decode(&ImageInput::DataUrl("data:image/png;base64,iVBOR*w0K".into()), &ImageLimits::default()));
    assert!(e.contains("data URL") && e.contains("invalid base64"), "{e}");
}

#[test]
fn malformed_data_urls_are_errors() {
    for (url, says) in [
        ("data:image/png;base64", "no `,`"),
        ("data:text/plain;base64,aGVsbG8=", "not an image type"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:;base64,aGVsbG8=", "not an image type"),
    ] {
        let e = image_err(decode(&ImageInput::DataUrl(url.into()), &ImageLimits::default()));
        assert!(e.starts_with("image data URL: ") && e.contains(says), "{url}: {e}");
    }
    // Well-formed, but the payload is not an image.
    let e = image_err(decode(
        &ImageInput::DataUrl("data:image/png;base64,aGVsbG8gd29ybGQ=".into()),
        &ImageLimits::default(),
    ));
    assert!(e.contains("not a PNG, JPEG or WebP image"), "{e}");
}

// --- decode errors ------------------------------------------------------------------------------

#[test]
fn unreadable_file_names_the_path() {
    let path = PathBuf::from("/nonexistent/dir/cat.png");
    let e = image_err(decode(&ImageInput::Path(path), &ImageLimits::default()));
    assert!(e.starts_with("image /nonexistent/dir/cat.png: cannot read the image file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = image_err(decode(&ImageInput::Path(dir.path().to_path_buf()), &ImageLimits::default()));
    assert!(e.contains(&dir.path().display().to_string()) && e.contains("is a directory"), "{e}");
}

#[test]
fn text_file_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, "just some text, not pixels\n").unwrap();
    let e = image_err(decode(&ImageInput::Path(path.clone()), &ImageLimits::default()));
    assert_eq!(e, format!("image {}: not a PNG, JPEG or WebP image", path.display()));
    // A real image in a format we do not accept (GIF) reads the same.
    let e = image_err(decode_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()));
    assert!(e.contains("not a PNG, JPEG or WebP image"), "{e}");
    assert!(image_err(decode_bytes(Vec::new())).contains("not a PNG, JPEG or WebP image"));
}

#[test]
fn truncated_png_is_an_error() {
    let bytes = png(&pattern(37, 23));
    for cut in [bytes.len() / 2, 40, bytes.len() - 13] {
        let e = image_err(decode_bytes(bytes[..cut].to_vec()));
        assert!(e.starts_with("image image bytes: cannot decode the PNG image"), "cut at {cut}: {e}");
    }
}

#[test]
fn truncated_jpeg_is_an_error() {
    let bytes = jpeg(&pattern(64, 48));
    for cut in [bytes.len() / 2, 200, bytes.len() - 2] {
        let e = image_err(decode_bytes(bytes[..cut].to_vec()));
        assert!(e.contains("cannot decode the JPEG image"), "cut at {cut}: {e}");
    }
    // Bytes after the end-of-image marker are ignored, as by every decoder.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"trailing junk");
    assert_eq!(decode_bytes(trailing).unwrap().rgb.dimensions(), (64, 48));
}

#[test]
fn file_over_the_byte_limit_names_limit_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    let bytes = png(&pattern(64, 48));
    std::fs::write(&path, &bytes).unwrap();
    let limits = ImageLimits { max_bytes: 1000, ..ImageLimits::default() };
    let e = image_err(decode(&ImageInput::Path(path.clone()), &limits));
    assert_eq!(
        e,
        format!("image {}: {} bytes is over the image size limit of 1000 bytes", path.display(), bytes.len())
    );
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes));
    assert!(image_err(decode(&ImageInput::DataUrl(url), &limits)).contains("over the image size limit of 1000 bytes"));
}

#[test]
fn image_over_the_pixel_limit_names_limit_and_size() {
    let limits = ImageLimits { max_pixels: 1000, ..ImageLimits::default() };
    let e = image_err(decode(&ImageInput::Bytes(png(&pattern(64, 48))), &limits));
    assert!(e.contains("64x48 = 3072 pixels is over the decoded size limit of 1000 pixels"), "{e}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

#[test]
fn decompression_bomb_is_refused_from_its_header() {
    // A 100 000 x 100 000 RGB PNG header (30 GB decoded) with a tiny body.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut bytes, b"IHDR", &ihdr);
    png_chunk(&mut bytes, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png_chunk(&mut bytes, b"IEND", &[]);
    let e = image_err(decode_bytes(bytes));
    assert!(e.contains("over the decoded size limit of 67108864 pixels"), "{e}");
}

// --- preprocessing ------------------------------------------------------------------------------

fn hf_config(json: &str) -> PreprocessorConfig {
    PreprocessorConfig::parse(json, Path::new("preprocessor_config.json")).unwrap()
}

#[test]
fn preprocess_matches_hf_pil_backend() {
    let g = golden_json();
    let p = &g["preprocess"];
    let d = decode(&ImageInput::Path(goldens().join(p["png"].as_str().unwrap())), &ImageLimits::default()).unwrap();
    let cfg = hf_config(
        r#"{"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 32, "width": 32}, "resample": 2,
            "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
    );
    let px = cfg.preprocess(&d.rgb).unwrap();
    assert_eq!((px.height, px.width), (32, 32));
    let want: Vec<f32> =
        b64(&p["pixel_values_f32le"]).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(want.len(), 32 * 32 * 3);
    let worst = px.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let exact = px.data.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    println!("preprocess: max |diff| {worst:e}, {exact}/{} bit-identical", want.len());
    assert!(worst <= 1e-6, "max |diff| {worst}");
}

#[test]
fn preprocess_steps_can_be_turned_off() {
    let img = RgbImage::from_pixel(2, 1, Rgb([0, 51, 255]));
    let none = hf_config(r#"{"do_resize": false, "do_rescale": false, "do_normalize": false}"#);
    assert_eq!(none.preprocess(&img).unwrap().data, [0.0, 51.0, 255.0, 0.0, 51.0, 255.0]);
    let rescale = hf_config(r#"{"do_resize": false, "do_normalize": false}"#);
    assert_eq!(rescale.preprocess(&img).unwrap().data[..3], [0.0, 0.2, 1.0]);
    let norm = hf_config(r#"{"do_resize": false, "do_rescale": false, "image_mean": 100, "image_std": [1, 2, 4]}"#);
    assert_eq!(norm.preprocess(&img).unwrap().data[..3], [-100.0, -24.5, 38.75]);
}

#[test]
fn preprocess_config_loads_from_a_checkpoint_folder() {
    let dir = tempfile::tempdir().unwrap();
    assert!(PreprocessorConfig::load(dir.path()).unwrap().is_none());
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, r#"{"size": {"shortest_edge": 20}, "resample": 3, "custom_key": [1, 2]}"#).unwrap();
    let cfg = PreprocessorConfig::load(dir.path()).unwrap().unwrap();
    assert_eq!(cfg.size, ImageSize::ShortestEdge(20));
    assert_eq!(cfg.filter(), Filter::Bicubic);
    assert!(cfg.extra.contains_key("custom_key"));
    let px = cfg.preprocess(&pattern(37, 23)).unwrap();
    assert_eq!((px.width, px.height), (32, 20)); // int(20 * 37 / 23) = 32
    let huge = hf_config(r#"{"size": {"height": 100000, "width": 100000}}"#);
    assert!(huge.preprocess(&pattern(3, 3)).unwrap_err().to_string().contains("over the limit"));
    std::fs::write(&path, r#"{"rescale_factor": "1/255"}"#).unwrap();
    let e = PreprocessorConfig::load(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: field `rescale_factor`", path.display())), "{e}");
}

#[test]
fn cache_key_changes_with_every_setting() {
    let base = hf_config("{}");
    let keys: Vec<String> = [
        "{}",
        r#"{"size": {"height": 224, "width": 225}}"#,
        r#"{"resample": 3}"#,
        r#"{"rescale_factor": 0.5}"#,
        r#"{"image_mean": [0.4, 0.5, 0.5]}"#,
        r#"{"image_std": [0.5, 0.5, 0.6]}"#,
        r#"{"do_normalize": false}"#,
        r#"{"do_resize": false}"#,
    ]
    .iter()
    .map(|j| hf_config(j).cache_key())
    .collect();
    assert_eq!(keys[0], base.cache_key());
    let unique: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:#?}");
}

#[test]
fn pixel_values_to_array_is_nhwc_f32() {
    let _ = mlx_engine::mlx::ffi::ops_table();
    let cfg = hf_config(r#"{"size": {"height": 4, "width": 6}}"#);
    let px = cfg.preprocess(&pattern(37, 23)).unwrap();
    let a = px.to_array().unwrap();
    assert_eq!(a.shape(), vec![1, 4, 6, 3]);
    assert_eq!(a.to_vec_f32().unwrap(), px.data);
}
