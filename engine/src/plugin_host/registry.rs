//! `registry.toml`: which plugin provides which model type.
//!
//! The registry exists so that the choice of architecture is data, not code: several model
//! types share one implementation (`mistral`, `qwen2` -> the llama plugin), and when two plugins
//! claim one type the user settles it here instead of by deleting files. Format:
//!
//! ```toml
//! [text]            # model_type -> plugin providing the text architecture (ModelArch)
//! mistral = "llama" # loads lib<plugin>.so / lib<plugin>.dylib from the plugin folders
//!
//! [vision]          # model_type -> plugin providing the vision add-on (VisionAddOn)
//! mistral3 = "mistral3"
//! ```
//!
//! Nothing else is accepted: an unknown table, a value that is not a string, or a plugin name
//! that cannot be a file name is an error with the line it is on, so a typo never silently turns
//! an entry off.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

/// The registry shipped with the engine, used when no `registry.toml` is found on disk, so an
/// installed binary alone still knows the standard mapping.
pub const EMBEDDED_REGISTRY: &str = include_str!("../../../registry.toml");

/// Environment variable naming the `registry.toml` to use (after `--registry`).
pub const REGISTRY_ENV: &str = "MLX_ENGINE_REGISTRY";

/// The file name looked up beside the executable and in the workspace.
pub const REGISTRY_FILE: &str = "registry.toml";

/// Where the registry in use came from; shown by `mlx-engine plugins` so users know which file
/// to edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrySource {
    /// A file on disk (and how it was found).
    File { path: PathBuf, found_by: &'static str },
    /// The copy compiled into the engine.
    Embedded,
    /// No registry (library hosts that resolve only by what plugins declare).
    Empty,
}

impl fmt::Display for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrySource::File { path, found_by } => write!(f, "{} ({found_by})", path.display()),
            RegistrySource::Embedded => write!(f, "the copy compiled into the engine"),
            RegistrySource::Empty => write!(f, "none"),
        }
    }
}

impl RegistrySource {
    /// The file, for error messages and for the plugin folder beside it.
    pub fn path(&self) -> Option<&Path> {
        match self {
            RegistrySource::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The name used in `file:line` error locations.
    fn display_path(&self) -> PathBuf {
        match self {
            RegistrySource::File { path, .. } => path.clone(),
            RegistrySource::Embedded => PathBuf::from("<embedded registry.toml>"),
            RegistrySource::Empty => PathBuf::from("<no registry>"),
        }
    }
}

/// Which of the two lookups an entry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Text,
    Vision,
}

impl Kind {
    pub fn table(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Vision => "vision",
        }
    }
}

/// One `model_type = "plugin"` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub model_type: String,
    pub plugin: String,
    /// 1-based line in the registry file, so resolution errors can point at the entry.
    pub line: usize,
}

/// A parsed registry.
#[derive(Clone, Debug)]
pub struct Registry {
    pub source: RegistrySource,
    text: BTreeMap<String, Entry>,
    vision: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    text: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    vision: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Rewords the deserializer's messages into what to change in the file.
fn explain(message: &str) -> String {
    if message.starts_with("unknown field") {
        let name = message.split('`').nth(1).unwrap_or("?");
        format!("unknown table or key `{name}`: registry.toml has only the tables [text] and [vision]")
    } else if message.contains("expected a string") {
        format!("{message}: each entry is model_type = \"plugin name\"")
    } else if message.contains("expected a map") {
        format!("{message}: `text` and `vision` must be tables ([text] / [vision])")
    } else if message.trim().is_empty() {
        // toml gives no text for some syntax errors (a control character in a comment, found
        // by the registry fuzz target); never print an empty reason.
        "invalid TOML here (a syntax error, or a control character such as NUL)".to_string()
    } else {
        message.to_string()
    }
}

/// Whether a plugin name can become `lib<name>.so` without escaping the folder.
fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !name.starts_with('.')
}

impl Registry {
    /// A registry with no entries.
    pub fn empty() -> Registry {
        Registry { source: RegistrySource::Empty, text: BTreeMap::new(), vision: BTreeMap::new() }
    }

    /// Parses registry text; errors carry the 1-based line and a reason.
    pub fn parse(text: &str, source: RegistrySource) -> Result<Registry> {
        let err = |line: usize, reason: String| Error::Registry { path: source.display_path(), line, reason };
        let raw: RawRegistry = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            err(line, explain(e.message()))
        })?;
        let mut reg = Registry { source: source.clone(), text: BTreeMap::new(), vision: BTreeMap::new() };
        for (kind, table) in [(Kind::Text, raw.text), (Kind::Vision, raw.vision)] {
            for (key, value) in table {
                let line = line_of(text, key.span().start);
                let model_type = key.into_inner();
                let plugin_line = line_of(text, value.span().start);
                let plugin = value.into_inner();
                if model_type.trim().is_empty() {
                    return Err(err(line, format!("empty model type in [{}]", kind.table())));
                }
                if !valid_plugin_name(&plugin) {
                    return Err(err(
                        plugin_line,
                        format!(
                            "`{plugin}` is not a plugin name: use letters, digits, `_`, `-` or `.` \
                             (it becomes the file name lib{plugin}{})",
                            std::env::consts::DLL_SUFFIX
                        ),
                    ));
                }
                let entry = Entry { kind, model_type: model_type.clone(), plugin, line };
                match kind {
                    Kind::Text => reg.text.insert(model_type, entry),
                    Kind::Vision => reg.vision.insert(model_type, entry),
                };
            }
        }
        Ok(reg)
    }

    /// Reads and parses a registry file.
    pub fn load(path: &Path, found_by: &'static str) -> Result<Registry> {
        // Say where the path came from: a stale `$MLX_ENGINE_REGISTRY` is easy to forget.
        let text = std::fs::read_to_string(path).map_err(|e| Error::Param {
            name: found_by.trim_start_matches('$').into(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Registry::parse(&text, RegistrySource::File { path: path.to_path_buf(), found_by })
    }

    /// The copy compiled into the engine.
    pub fn embedded() -> Result<Registry> {
        Registry::parse(EMBEDDED_REGISTRY, RegistrySource::Embedded)
    }

    /// The registry in use: `explicit` (`--registry`), else `$MLX_ENGINE_REGISTRY`, else
    /// `registry.toml` beside the executable, else the workspace's, else the embedded copy.
    ///
    /// An explicitly named file that is missing is an error (the user asked for it); the
    /// implicit locations are simply skipped when absent.
    pub fn discover(explicit: Option<&Path>) -> Result<Registry> {
        if let Some(p) = explicit {
            return Registry::load(p, "--registry");
        }
        if let Some(p) = std::env::var_os(REGISTRY_ENV).filter(|v| !v.is_empty()) {
            return Registry::load(Path::new(&p), "$MLX_ENGINE_REGISTRY");
        }
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            let p = dir.join(REGISTRY_FILE);
            if p.is_file() {
                return Registry::load(&p, "beside the executable");
            }
        }
        let ws = workspace_registry();
        if ws.is_file() {
            return Registry::load(&ws, FOUND_IN_WORKSPACE);
        }
        Registry::embedded()
    }

    /// The entry for a model type, if any.
    pub fn get(&self, kind: Kind, model_type: &str) -> Option<&Entry> {
        match kind {
            Kind::Text => self.text.get(model_type),
            Kind::Vision => self.vision.get(model_type),
        }
    }

    /// Every entry, text first, each table sorted by model type.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.text.values().chain(self.vision.values())
    }

    /// The `file:line` of an entry, for messages that send the user to it.
    pub fn locate(&self, entry: &Entry) -> String {
        format!("{}:{}", self.source.display_path().display(), entry.line)
    }
}

/// `registry.toml` at the root of the workspace this engine was built from.
pub fn workspace_registry() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(REGISTRY_FILE);
    // Canonical when it exists, so messages show `/repo/registry.toml`, not `/repo/engine/..`.
    p.canonicalize().unwrap_or(p)
}

/// How [`Registry::discover`] labels the workspace's registry.
pub const FOUND_IN_WORKSPACE: &str = "the workspace's";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Registry> {
        Registry::parse(s, RegistrySource::Empty)
    }

    fn line_reason(r: Result<Registry>) -> (usize, String) {
        match r {
            Err(Error::Registry { line, reason, .. }) => (line, reason),
            other => panic!("expected a registry error, got {other:?}"),
        }
    }

    #[test]
    fn parses_both_tables_with_lines() {
        let r = parse("# header\n[text]\nmistral = \"llama\"\n\n[vision]\nmistral3 = \"mistral3\"\n").unwrap();
        let e = r.get(Kind::Text, "mistral").unwrap();
        assert_eq!((e.plugin.as_str(), e.line), ("llama", 3));
        assert_eq!(r.get(Kind::Vision, "mistral3").unwrap().line, 6);
        assert!(r.get(Kind::Vision, "mistral").is_none());
    }

    #[test]
    fn errors_carry_line_and_reason() {
        let (l, r) = line_reason(parse("[text]\na = \"b\"\nc = 3\n"));
        assert_eq!(l, 3);
        assert!(r.contains("expected a string"), "{r}");
        let (l, r) = line_reason(parse("[text]\na = \"b\"\n[bogus]\n"));
        assert_eq!(l, 3);
        assert!(r.contains("unknown table or key `bogus`"), "{r}");
        let (l, _) = line_reason(parse("[text]\n\na = \"b\n"));
        assert_eq!(l, 3);
        let (l, r) = line_reason(parse("[text]\na = \"../evil\"\n"));
        assert_eq!(l, 2);
        assert!(r.contains("not a plugin name"), "{r}");
    }

    #[test]
    fn embedded_registry_parses() {
        let r = Registry::embedded().unwrap();
        assert_eq!(r.get(Kind::Text, "mistral").unwrap().plugin, "llama");
        assert_eq!(r.get(Kind::Vision, "mistral3").unwrap().plugin, "mistral3");
    }
}
