//! Downloading a model from the Hugging Face hub (`$HF_ENDPOINT`, default huggingface.co) into
//! the local cache, in the layout huggingface_hub writes (blobs, snapshots, refs), so that the
//! next run, mlx-lm and transformers all find it there. Only what the engine loads is fetched:
//! the configs, tokenizer and chat template files and the safetensors weights (those the index
//! names), or one GGUF file. The token comes from `HF_TOKEN`, `HF_TOKEN_PATH` or
//! `$HF_HOME/token`, as huggingface_hub finds it.

use std::io::IsTerminal;
use std::path::Path;

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::hub::var;
use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Small files the engine reads beside the weights, when the repository has them.
const SIDE_FILES: [&str; 8] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
];
const INDEX: &str = "model.safetensors.index.json";

/// A file name at the top of a repository (no folders, `..` or absolute paths): what the
/// listing, an index or `--hf-file` name is joined to the snapshot folder, so a hostile server
/// must not steer it elsewhere.
pub fn plain_name(name: &str) -> bool {
    matches!(Path::new(name).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)])
        && !name.contains('\\')
}

fn endpoint() -> String {
    var("HF_ENDPOINT").map_or(DEFAULT_ENDPOINT.to_string(), |e| e.trim_end_matches('/').to_string())
}

/// The token huggingface_hub would send: `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else
/// `$HF_HOME/token` (`~/.cache/huggingface/token`), which `huggingface-cli login` writes.
fn token() -> Option<String> {
    if let Some(t) = var("HF_TOKEN") {
        return Some(t.trim().to_string());
    }
    let file = var("HF_TOKEN_PATH").map(std::path::PathBuf::from).or_else(|| {
        var("HF_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/huggingface")))
            .map(|h| h.join("token"))
    })?;
    std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// Downloads what the model `repo` at `revision` needs into `cache` (or, with `file`, that
/// GGUF file alone). `config.json` comes last, so an interrupted download is never taken for a
/// cached model: the next run resumes it (hf-hub keeps `.part` files) instead.
pub fn download(cache: &Path, repo: &str, revision: &str, file: Option<&str>) -> Result<()> {
    let endpoint = endpoint();
    let token = token();
    let hub = Hub { repo, revision, endpoint: &endpoint, has_token: token.is_some() };
    let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(endpoint.clone())
        .with_token(token)
        .with_progress(false)
        .with_user_agent("mlx-engine", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| hub.error(&e, &endpoint))?;
    let at = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let cached = Cache::new(cache.to_path_buf()).repo(at.clone());
    let api = api.repo(at);
    let listing_url = format!("{endpoint}/api/models/{repo}/revision/{}", revision.replace('/', "%2F"));
    let info = api.info().map_err(|e| hub.error(&e, &listing_url))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|n| plain_name(n)).collect();
    let announced = std::cell::Cell::new(false);
    let fetch = |name: &str| {
        if cached.get(name).is_some() {
            return Ok(()); // From an earlier download that stopped part way.
        }
        if !announced.replace(true) {
            eprintln!("downloading {repo} (revision {revision}) from {endpoint} into {}", cache.display());
        }
        hub.fetch(&api, name)
    };
    if let Some(f) = file {
        if !names.iter().any(|n| n == f) {
            return Err(hub.fail(format!("the repository has no file `{f}`; {}", gguf_list(&names))));
        }
        return fetch(f);
    }
    if !names.iter().any(|n| n == "config.json") {
        let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
        return match ggufs[..] {
            [only] => fetch(only),
            [] => Err(hub.fail(
                "the repository has neither config.json nor a .gguf file: it is not a model mlx-engine loads".into(),
            )),
            _ => {
                Err(hub
                    .fail(format!("the repository has no config.json and several GGUF files; {}", gguf_list(&names))))
            }
        };
    }
    let weights = if names.iter().any(|n| n == INDEX) {
        fetch(INDEX)?;
        let index =
            cached.get(INDEX).ok_or_else(|| hub.fail(format!("{INDEX} is not in the cache after its download")))?;
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io { path: index.clone(), source })?;
        let files = super::parse_index(&text).map_err(|reason| Error::Model { path: index.clone(), reason })?;
        if let Some(f) = files.iter().find(|f| !names.contains(f)) {
            return Err(hub.fail(format!("{INDEX} lists `{f}`, and the repository has no such file")));
        }
        files
    } else {
        names.iter().filter(|n| n.ends_with(".safetensors")).cloned().collect()
    };
    if weights.is_empty() {
        return Err(hub.fail(
            "the repository has no safetensors weights (mlx-engine loads safetensors or GGUF, not PyTorch .bin files)"
                .into(),
        ));
    }
    for name in
        weights.iter().map(String::as_str).chain(SIDE_FILES.into_iter().filter(|f| names.iter().any(|n| n == f)))
    {
        fetch(name)?;
    }
    fetch("config.json")
}

fn gguf_list(names: &[String]) -> String {
    let ggufs: Vec<&str> = names.iter().filter(|n| n.ends_with(".gguf")).map(String::as_str).collect();
    if ggufs.is_empty() {
        "it has no .gguf files".into()
    } else {
        format!("choose one with --hf-file: {}", ggufs.join(", "))
    }
}

struct Hub<'a> {
    repo: &'a str,
    revision: &'a str,
    endpoint: &'a str,
    has_token: bool,
}

impl Hub<'_> {
    fn fail(&self, reason: String) -> Error {
        Error::Download { repo: self.repo.into(), reason }
    }

    /// One file into the cache (skipped when the snapshot has it from an earlier, interrupted
    /// download), with a progress bar on a terminal and a line otherwise.
    fn fetch(&self, api: &ApiRepo, name: &str) -> Result<()> {
        let bar = FileBar::new();
        api.download_with_progress(name, bar).map_err(|e| self.error(&e, &api.url(name)))?;
        Ok(())
    }

    /// `e` in words: what the hub answered (and what to do about it), or why it could not be
    /// reached, naming the URL.
    fn error(&self, e: &ApiError, url: &str) -> Error {
        let reason = match e {
            ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(code, response) => {
                    let said = response.header("x-error-message").map(|m| format!(" ({m})")).unwrap_or_default();
                    let hint = match code {
                        401 | 403 if self.has_token => {
                            "; the token (HF_TOKEN or `huggingface-cli login`) has no access to it".to_string()
                        }
                        401 | 403 => "; the model is gated or private, or does not exist: set HF_TOKEN to a token \
                                      with access to it"
                            .to_string(),
                        404 => format!("; check the name and the revision `{}`", self.revision),
                        _ => String::new(),
                    };
                    format!("{url} answered HTTP {code} {}{said}{hint}", response.status_text())
                }
                ureq::Error::Transport(t) => {
                    // Not `t` itself: its text repeats the URL.
                    let why = t.message().map_or(t.kind().to_string(), |m| format!("{}: {m}", t.kind()));
                    format!(
                        "cannot reach {} for {url} ({why}); check the network or HF_ENDPOINT (HF_HUB_OFFLINE=1 \
                         uses the local cache only)",
                        self.endpoint
                    )
                }
            },
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => {
                format!("{url} did not answer as a Hugging Face hub does (header `{h}` is missing or invalid)")
            }
            other => format!("{url}: {other}"),
        };
        self.fail(reason)
    }
}

/// hf-hub's progress hook: a bar per file on a terminal, one line per file otherwise (a log
/// should still say why the command takes minutes).
struct FileBar {
    bar: ProgressBar,
    tty: bool,
}

impl FileBar {
    fn new() -> FileBar {
        let tty = std::io::stderr().is_terminal();
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        FileBar { bar: ProgressBar::with_draw_target(None, target), tty }
    }
}

impl hf_hub::api::Progress for FileBar {
    fn init(&mut self, size: usize, filename: &str) {
        if self.bar.length().is_some() {
            return; // hf-hub calls this again as the transfer starts.
        }
        self.bar.set_length(size as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})")
        {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_message(filename.to_string());
        if !self.tty {
            eprintln!("  {filename} ({})", HumanBytes(size as u64));
        }
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_at_the_top_of_the_repository_are_plain() {
        for ok in ["config.json", "model-00001-of-00002.safetensors", "a..b.gguf"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["../x", "/etc/passwd", "sub/x.json", "..", ".", "", "a\\b"] {
            assert!(!plain_name(bad), "{bad}");
        }
    }
}
