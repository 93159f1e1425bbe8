//! The Pixtral image processor's sizes (mlx-vlm's `PixtralImageProcessor`, for pixtral and
//! mistral3): fit the longest edge, then round up to whole patches (times the merge size), with
//! the rounding unit read from the checkpoint as mlx-vlm's processors read it.

use std::path::Path;

use serde_json::Value;

use super::preprocess::ImageSize;
use crate::error::{Error, Result};

/// mlx-vlm's Pixtral `get_resize_output_image_size`, as `(width, height)`: scale down (never up)
/// to fit `size` (a longest edge or a height/width box), flooring each side, then round each side
/// up to a multiple of `unit`. A side that would vanish keeps one unit.
pub(super) fn pixtral_size(w: u64, h: u64, size: ImageSize, unit: u32) -> (u32, u32) {
    let (max_h, max_w) = match size {
        ImageSize::Exact { height, width } => (height, width),
        ImageSize::LongestEdge(l) => (l, l),
        // Refused when the file is parsed.
        ImageSize::ShortestEdge(s) | ImageSize::ShortestLongest { shortest: s, .. } => (s, s),
    };
    let ratio = (h as f64 / f64::from(max_h)).max(w as f64 / f64::from(max_w));
    let (h, w) =
        if ratio > 1.0 { ((h as f64 / ratio).floor() as u64, (w as f64 / ratio).floor() as u64) } else { (h, w) };
    let unit = u64::from(unit.max(1));
    let round_up = |v: u64| u32::try_from(v.max(1).div_ceil(unit) * unit).unwrap_or(u32::MAX);
    (round_up(w), round_up(h))
}

/// A `patch_size` entry: `N` or `{"height": N, "width": N}` (square patches only).
pub(super) fn patch_side(v: &Value) -> Option<u32> {
    let side = |v: &Value| v.as_u64().filter(|&n| n > 0).and_then(|n| u32::try_from(n).ok());
    match v {
        Value::Object(m) => match (m.get("height").and_then(side), m.get("width").and_then(side)) {
            (Some(h), Some(w)) if h == w => Some(h),
            _ => None,
        },
        v => side(v),
    }
}

/// The Pixtral rounding unit of the checkpoint in `dir`: the tower's patch size
/// (`vision_config.patch_size`, else `processor_config.json`'s, else `fallback`, this file's)
/// times `spatial_merge_size` (`config.json`, else `processor_config.json`, else 1), as mlx-vlm's
/// processors compute it.
pub(super) fn pixtral_multiple(dir: &Path, fallback: Option<u32>) -> Result<u32> {
    let read = |name: &str| -> Result<Option<Value>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| Error::Model { path, reason: format!("invalid JSON: {e}") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    };
    let (config, processor) = (read("config.json")?, read("processor_config.json")?);
    let get = |v: &Option<Value>, path: &[&str]| {
        path.iter().try_fold(v.as_ref()?, |v, k| v.get(k)).filter(|v| !v.is_null()).cloned()
    };
    let field = |found: Option<Value>, file: &str, key: &str| -> Result<Option<u32>> {
        found
            .map(|v| {
                patch_side(&v).ok_or_else(|| Error::Model {
                    path: dir.join(file),
                    reason: format!("field `{key}`: expected a positive integer, found {v}"),
                })
            })
            .transpose()
    };
    let patch = match field(get(&config, &["vision_config", "patch_size"]), "config.json", "vision_config.patch_size")?
    {
        Some(p) => p,
        None => {
            field(get(&processor, &["patch_size"]), "processor_config.json", "patch_size")?.or(fallback).unwrap_or(16)
        }
    };
    let merge = match field(get(&config, &["spatial_merge_size"]), "config.json", "spatial_merge_size")? {
        Some(m) => m,
        None => {
            field(get(&processor, &["spatial_merge_size"]), "processor_config.json", "spatial_merge_size")?.unwrap_or(1)
        }
    };
    patch.checked_mul(merge).ok_or_else(|| Error::Model {
        path: dir.join("config.json"),
        reason: format!("patch_size {patch} times spatial_merge_size {merge} is too large"),
    })
}
