//! Models by Hugging Face name (`--model org/name`), found in the local Hugging Face cache that
//! mlx-lm, transformers and `huggingface-cli download` fill:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
//! `models--org--name/refs/<revision>` (a file with the commit hash) and
//! `models--org--name/snapshots/<commit>/` (the files).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache folder the environment points at.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Whether `spec` reads as a repository id (`org/name`) rather than a path: exactly one `/`,
/// no leading `.` or `/`, and nothing at that path.
pub fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let ok = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(org) && ok(name) && !Path::new(spec).exists()
}

/// The snapshot folder of `repo` at `revision` (a branch or tag under `refs/`, or a commit
/// hash) in `cache`.
pub fn resolve_in(cache: &Path, repo: &str, revision: &str) -> Result<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let missing = |what: String| Error::Param {
        name: "model".into(),
        reason: format!(
            "`{repo}` is not a local path, and {what} (download it with `huggingface-cli download {repo}`)"
        ),
    };
    if !root.is_dir() {
        return Err(missing(format!("the Hugging Face cache has no copy of it ({} is missing)", root.display())));
    }
    let commit = match std::fs::read_to_string(root.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = root.join("snapshots").join(&commit);
    if !snapshot.join("config.json").is_file() && !has_gguf(&snapshot) {
        return Err(missing(format!(
            "revision `{revision}` is not in the cache ({} has no config.json)",
            snapshot.display()
        )));
    }
    tracing::debug!("model `{repo}` at `{revision}` resolved to {}", snapshot.display());
    Ok(snapshot)
}

fn has_gguf(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "gguf")))
}

/// `spec` as a model path: itself when it exists or is not a repository id, else the cached
/// snapshot of that repository.
pub fn model_path(spec: &Path, revision: &str) -> Result<PathBuf> {
    match spec.to_str() {
        Some(s) if is_repo_id(s) => {
            let cache = cache_dir().ok_or_else(|| Error::Param {
                name: "model".into(),
                reason: format!(
                    "`{s}` is not a local path, and no Hugging Face cache is set (HF_HUB_CACHE, HF_HOME or HOME)"
                ),
            })?;
            resolve_in(&cache, s, revision)
        }
        _ => Ok(spec.to_path_buf()),
    }
}
