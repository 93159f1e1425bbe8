//! Images in a prompt: each image decoded and preprocessed once per request, the chat
//! template's placeholders expanded to the add-on's image-token spans, the spans found again in
//! the tokenized prompt, the key the prompt cache sees (image tokens replaced by ids derived
//! from the image's content, so a changed image never matches a cached one), the feature memo,
//! and the merged input embeddings of the part of the prompt that is not cached.

use std::ops::Range;

use mlx_engine_plugin_api::{Array, Dtype, DynModel, DynVision, ImagePrompt};

use super::image::{decode, ImageInput, ImageLimits};
use super::preprocess::{PixelValues, PreprocessorConfig};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What a model needs to take images: its add-on and its image processor settings.
pub struct VisionModel {
    pub addon: Box<dyn DynVision>,
    pub preprocessor: PreprocessorConfig,
}

/// One image of a request, ready for the vision tower.
pub struct PreparedImage {
    pub label: String,
    /// The memo key: the encoded bytes' sha256 and the preprocessing.
    pub key: String,
    /// Derived from the content hash: the ids the prompt cache sees at this image's tokens.
    key_seed: u32,
    pub pixels: PixelValues,
    pub prompt: ImagePrompt,
}

fn param(name: &str, reason: String) -> Error {
    Error::Param { name: name.into(), reason }
}

/// Decodes and preprocesses each image and asks the add-on for its prompt expansion.
pub fn prepare_images(vision: &VisionModel, inputs: &[ImageInput], limits: &ImageLimits) -> Result<Vec<PreparedImage>> {
    let preprocess_key = vision.preprocessor.cache_key();
    inputs
        .iter()
        .map(|input| {
            let img = decode(input, limits)?;
            let pixels = vision.preprocessor.preprocess(&img.rgb)?;
            let prompt = vision.addon.image_prompt(pixels.height as i32, pixels.width as i32)?;
            let hex: String = img.hash.iter().map(|b| format!("{b:02x}")).collect();
            Ok(PreparedImage {
                label: img.label,
                key: format!("{hex}|{preprocess_key}"),
                key_seed: u32::from_le_bytes([img.hash[0], img.hash[1], img.hash[2], img.hash[3]]),
                pixels,
                prompt,
            })
        })
        .collect()
}

/// Replaces the `i`-th image placeholder of `text` by image `i`'s expansion. With `prepend`
/// (a raw prompt), a text without any placeholder gets one per image at its start (as
/// `generate --image` expects); a count that differs otherwise is an error, also when a chat
/// template wrote none (it does not know images).
pub fn expand_placeholders(text: &str, images: &[PreparedImage], prepend: bool) -> Result<String> {
    let Some(first) = images.first() else { return Ok(text.to_string()) };
    let placeholder = first.prompt.placeholder.as_str();
    let found = text.matches(placeholder).count();
    let text = if found == 0 && prepend {
        format!("{}{text}", placeholder.repeat(images.len()))
    } else if found != images.len() {
        return Err(param(
            "images",
            format!(
                "the prompt has {found} image placeholder(s) `{placeholder}` but {} image(s) were given",
                images.len()
            ),
        ));
    } else {
        text.to_string()
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    for img in images {
        let at = rest.find(placeholder).expect("counted above");
        out.push_str(&rest[..at]);
        out.push_str(&img.prompt.expansion);
        rest = &rest[at + placeholder.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The token span of each image in `tokens`, in order: where the tokens of its expansion (without
/// the surrounding whitespace, which may merge with neighbouring text) occur.
pub fn find_spans(tokens: &[u32], images: &[PreparedImage], tokenizer: &Tokenizer) -> Result<Vec<Range<usize>>> {
    let mut spans = Vec::with_capacity(images.len());
    let mut from = 0;
    for (i, img) in images.iter().enumerate() {
        let core = tokenizer.encode(img.prompt.expansion.trim(), false)?;
        let at = (!core.is_empty())
            .then(|| tokens[from..].windows(core.len()).position(|w| w == core.as_slice()))
            .flatten()
            .ok_or_else(|| {
                param(
                    "images",
                    format!(
                        "{} image(s) were given but the prompt holds the image tokens of only {i} (expand the \
                         placeholders with the model's image prompt, as tokenize_chat does)",
                        images.len()
                    ),
                )
            })?;
        spans.push(from + at..from + at + core.len());
        from += at + core.len();
    }
    if let Some(first) = images.first() {
        let core = tokenizer.encode(first.prompt.expansion.trim(), false)?;
        if !core.is_empty() && tokens[from..].windows(core.len()).any(|w| w == core.as_slice()) {
            return Err(param(
                "images",
                format!("the prompt holds more image spans than the {} image(s) given", images.len()),
            ));
        }
    }
    Ok(spans)
}

/// The prompt as the prompt cache sees it: every token of image `i`'s span replaced by an id
/// derived from its content and its index in the span, with the top bit set (no vocabulary is
/// that large). Equal images give equal keys, a changed image a different key from its first
/// token on, so a cached prefix never extends into a changed image.
///
/// The text before the first image is what a text-only prompt can share with this one, so it
/// must mean the same there: a token whose merged embedding is not its text embedding (Gemma 3
/// zeroes the pad token's in image prompts, as mlx-vlm does) gets a key id of its own too.
/// Later text only ever meets image prompts with the same images, merged the same way.
pub fn cache_key(
    model: &dyn DynModel,
    vision: &VisionModel,
    tokens: &[u32],
    spans: &[Range<usize>],
    images: &[PreparedImage],
) -> Result<Vec<u32>> {
    let mut key = tokens.to_vec();
    for (span, img) in spans.iter().zip(images) {
        for (j, t) in key[span.clone()].iter_mut().enumerate() {
            *t = 0x8000_0000
                | (img.key_seed.rotate_left(7).wrapping_add((j as u32).wrapping_mul(0x9e37_79b9)) & 0x7fff_ffff);
        }
    }
    let prefix = spans.first().map_or(0, |s| s.start);
    for i in merged_differently(model, vision, &tokens[..prefix])? {
        key[i] = 0x8000_0000 | (tokens[i].wrapping_mul(0x2545_f491).rotate_left(13) & 0x7fff_ffff);
    }
    Ok(key)
}

/// The positions of text-only `tokens` whose embedding the add-on's merge changes.
fn merged_differently(model: &dyn DynModel, vision: &VisionModel, tokens: &[u32]) -> Result<Vec<usize>> {
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let ids = Array::from_slice(&ids, &[1, ids.len() as i32])?;
    let text = model.embed_tokens(&ids)?;
    let merged = vision.addon.merge(&ids, &text, &[], model.embeddings_scale()?)?;
    let differs = merged.not_equal(&text)?.astype(Dtype::I32)?.max(&[-1], false)?.reshape(&[-1])?;
    let differs: Vec<i32> = differs.to_vec()?;
    Ok(differs.iter().enumerate().filter(|(_, &d)| d != 0).map(|(i, _)| i).collect())
}

/// `n` moved back to the start of the span it falls strictly inside, if any.
pub fn outside_spans(n: usize, spans: &[Range<usize>]) -> usize {
    spans.iter().find(|s| s.start < n && n < s.end).map_or(n, |s| s.start)
}

/// Projected features of recently seen images, keyed by [`PreparedImage::key`]; evaluated
/// before they are stored (mlx-engine's memo keeps 20).
pub struct FeatureMemo {
    entries: Vec<(String, Array)>,
    capacity: usize,
    /// Lookups answered from the memo, and encodes run, since load.
    pub hits: usize,
    pub encodes: usize,
}

pub const FEATURE_MEMO_CAPACITY: usize = 20;

impl FeatureMemo {
    pub fn new(capacity: usize) -> FeatureMemo {
        FeatureMemo { entries: Vec::new(), capacity, hits: 0, encodes: 0 }
    }

    /// The features of `img`, from the memo or encoded now.
    pub fn features(&mut self, vision: &VisionModel, img: &PreparedImage) -> Result<Array> {
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == img.key) {
            let entry = self.entries.remove(i);
            let f = entry.1.clone();
            self.entries.push(entry);
            self.hits += 1;
            tracing::debug!("vision: features of image {} from the memo", img.label);
            return Ok(f);
        }
        let f = vision
            .addon
            .encode(&img.pixels.to_array()?)
            .map_err(|e| Error::Image { image: img.label.clone(), reason: format!("the vision tower failed: {e}") })?;
        f.eval()?;
        tracing::debug!("vision: image {} encoded", img.label);
        self.encodes += 1;
        if self.capacity > 0 {
            if self.entries.len() == self.capacity {
                self.entries.remove(0);
            }
            self.entries.push((img.key.clone(), f.clone()));
        }
        Ok(f)
    }
}

/// The input embeddings `[1, L - from, D]` of `tokens[from..]`, with the features of the
/// images whose spans lie there (`from` must not cut a span).
pub fn embeddings(
    model: &dyn DynModel,
    vision: &VisionModel,
    memo: &mut FeatureMemo,
    tokens: &[u32],
    from: usize,
    spans: &[Range<usize>],
    images: &[PreparedImage],
) -> Result<Array> {
    let ids: Vec<i32> = tokens[from..].iter().map(|&t| t as i32).collect();
    let ids = Array::from_slice(&ids, &[1, ids.len() as i32])?;
    let mut feats = Vec::new();
    for (span, img) in spans.iter().zip(images) {
        if span.start >= from {
            feats.push(memo.features(vision, img)?);
        }
    }
    let text = model.embed_tokens(&ids)?;
    Ok(vision.addon.merge(&ids, &text, &feats, model.embeddings_scale()?)?)
}
