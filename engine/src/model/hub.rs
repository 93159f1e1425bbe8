//! Models by Hugging Face name (`--model org/name`), found in the local Hugging Face cache that
//! mlx-lm, transformers and `huggingface-cli download` fill:
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, holding
//! `models--org--name/refs/<revision>` (a file with the commit hash) and
//! `models--org--name/snapshots/<commit>/` (the files). A model that is not there is downloaded
//! into it (see [`super::hub_download`]) unless `HF_HUB_OFFLINE` is set.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache folder the environment points at.
pub fn cache_dir() -> Option<PathBuf> {
    var("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")))
}

/// A non-empty environment variable.
pub(crate) fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Whether `HF_HUB_OFFLINE` forbids the network, read as huggingface_hub reads it.
pub fn offline() -> bool {
    var("HF_HUB_OFFLINE").is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.to_ascii_lowercase().as_str()))
}

/// Whether `spec` reads as a repository id (`org/name`) rather than a path: exactly one `/`,
/// no leading `.` or `/`, nothing at that path, and no folder named `org` here (so that a
/// mistyped `models/name` is a missing path, not a download).
pub fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let ok = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(org) && ok(name) && !Path::new(spec).exists() && !Path::new(org).is_dir()
}

/// The repository's folder in `cache`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The model of `repo` at `revision` (a branch or tag under `refs/`, or a commit hash) in
/// `cache`: the snapshot folder, or `file` in it. `Err` says what is missing.
pub fn find_cached(cache: &Path, repo: &str, revision: &str, file: Option<&str>) -> Result<PathBuf, String> {
    let root = repo_dir(cache, repo);
    if !root.is_dir() {
        return Err(format!("the Hugging Face cache has no copy of it ({} is missing)", root.display()));
    }
    let commit = match std::fs::read_to_string(root.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = root.join("snapshots").join(&commit);
    let found = match file {
        Some(f) => Some(snapshot.join(f)).filter(|p| p.is_file()),
        // config.json is written last by a download (hub_download): with it, the rest is there.
        None => Some(snapshot.clone()).filter(|s| s.join("config.json").is_file() || has_gguf(s)),
    };
    match found {
        Some(p) => {
            tracing::debug!("model `{repo}` at `{revision}` resolved to {}", p.display());
            Ok(p)
        }
        None => Err(format!(
            "revision `{revision}` is not in the cache ({} has no {})",
            snapshot.display(),
            file.unwrap_or("config.json")
        )),
    }
}

fn has_gguf(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "gguf")))
}

/// `spec` as a model path: itself when it exists or is not a repository id, else the cached
/// snapshot of that repository (or its file `hf_file`), downloaded first when it is not cached.
pub fn model_path(spec: &Path, revision: &str, hf_file: Option<&str>) -> Result<PathBuf> {
    let Some(repo) = spec.to_str().filter(|s| is_repo_id(s)) else {
        if hf_file.is_some() {
            let reason =
                format!("applies to a Hugging Face repository id (`org/name`), and {} is a path", spec.display());
            return Err(Error::Param { name: "--hf-file".into(), reason });
        }
        return Ok(spec.to_path_buf());
    };
    if let Some(f) = hf_file {
        if !super::hub_download::plain_name(f) || !f.ends_with(".gguf") {
            let reason = format!("`{f}` is not the name of a .gguf file at the top of the repository");
            return Err(Error::Param { name: "--hf-file".into(), reason });
        }
    }
    let not_here = |what: String| Error::Param {
        name: "model".into(),
        reason: format!("`{repo}` is not a local path, and {what}"),
    };
    let cache =
        cache_dir().ok_or_else(|| not_here("no Hugging Face cache is set (HF_HUB_CACHE, HF_HOME or HOME)".into()))?;
    let missing = match find_cached(&cache, repo, revision, hf_file) {
        Ok(p) => return Ok(p),
        Err(missing) => missing,
    };
    if offline() {
        return Err(not_here(format!(
            "{missing}; HF_HUB_OFFLINE is set, so it was not downloaded (unset it, or fetch it with \
             `huggingface-cli download {repo}`)"
        )));
    }
    tracing::debug!("`{repo}` at `{revision}` is not cached ({missing}): downloading");
    super::hub_download::download(&cache, repo, revision, hf_file)?;
    find_cached(&cache, repo, revision, hf_file)
        .map_err(|m| not_here(format!("the download finished but {m} (is HF_ENDPOINT a Hugging Face hub?)")))
}
