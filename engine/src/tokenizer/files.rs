//! Reading the JSON side files of a Hugging Face model folder: `tokenizer_config.json`,
//! `config.json`, `generation_config.json`, and the chat template files.
//!
//! Every field is optional and typed loosely in the wild (a token may be a string or an
//! `{"content": ...}` object, an id an integer or a list), so each reader accepts the known
//! shapes and reports anything else with the file and field name rather than guessing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

pub(super) fn tok_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads a JSON file, `None` when it does not exist.
pub(super) fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { path: path.to_path_buf(), source: e }),
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| tok_err(path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(tok_err(path, "expected a JSON object at the top level"));
    }
    Ok(Some(value))
}

/// Reads a text file, `None` when it does not exist.
pub(super) fn read_text(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path: path.to_path_buf(), source: e }),
    }
}

/// A special-token field: `"<s>"` or `{"content": "<s>", ...}` (null or absent -> None).
pub(super) fn token_field(obj: &Value, field: &str, path: &Path) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(m)) => match m.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(tok_err(path, format!("field `{field}` is an object without a string `content`"))),
        },
        Some(_) => Err(tok_err(path, format!("field `{field}` must be a string or an object with `content`"))),
    }
}

/// A token id field: an integer or a list of integers (null or absent -> empty).
pub(super) fn ids_field(obj: &Value, field: &str, path: &Path) -> Result<Vec<u32>> {
    let bad = || tok_err(path, format!("field `{field}` must be a token id or a list of token ids"));
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad);
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// `eos_token_id` / `bos_token_id` of `config.json`: top level, else the `text_config` of a
/// multimodal model (where the language model's ids live).
pub(super) fn config_ids(config: &Value, field: &str, path: &Path) -> Result<Vec<u32>> {
    let ids = ids_field(config, field, path)?;
    if !ids.is_empty() {
        return Ok(ids);
    }
    match config.get("text_config") {
        Some(tc @ Value::Object(_)) => ids_field(tc, field, path),
        _ => Ok(ids),
    }
}

/// A chat template and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The file the template was read from (or a description of its origin).
    pub source: PathBuf,
    /// The Jinja source.
    pub text: String,
}

impl ChatTemplate {
    pub fn new(source: impl Into<PathBuf>, text: impl Into<String>) -> ChatTemplate {
        ChatTemplate { source: source.into(), text: text.into() }
    }

    /// Reads a template file (e.g. `--chat-template FILE`): a raw Jinja file, or a JSON file
    /// holding `{"chat_template": "..."}` as some repositories ship it.
    pub fn from_file(path: &Path) -> Result<ChatTemplate> {
        let text = read_text(path)?.ok_or_else(|| tok_err(path, "chat template file not found"))?;
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&text).map_err(|e| tok_err(path, format!("invalid JSON: {e}")))?;
            let t = v
                .get("chat_template")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(path, "field `chat_template` (a string) is missing"))?;
            return non_empty(path, t);
        }
        non_empty(path, &text)
    }
}

/// An empty template renders nothing, which would silently drop every message.
fn non_empty(path: &Path, template: &str) -> Result<ChatTemplate> {
    if template.trim().is_empty() {
        return Err(tok_err(path, "the chat template is empty (it would render no messages)"));
    }
    Ok(ChatTemplate::new(path, template))
}

/// The templates a folder offers: the one used by default and any named ones.
#[derive(Debug, Clone, Default)]
pub(super) struct Templates {
    pub default: Option<ChatTemplate>,
    pub named: BTreeMap<String, ChatTemplate>,
}

/// Parses a `chat_template` value: a string, or a list of `{name, template}` (the entry named
/// `default` is the default, as in transformers).
pub(super) fn parse_template_field(v: &Value, path: &Path) -> Result<Templates> {
    let mut out = Templates::default();
    match v {
        Value::Null => {}
        Value::String(s) => out.default = Some(ChatTemplate::new(path, s.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(Value::as_str);
                let text = item.get("template").and_then(Value::as_str);
                let (Some(name), Some(text)) = (name, text) else {
                    return Err(tok_err(
                        path,
                        format!("field `chat_template`[{i}] must be an object with string `name` and `template`"),
                    ));
                };
                out.named.insert(name.to_string(), ChatTemplate::new(path, text));
            }
            out.default = out.named.get("default").cloned();
        }
        _ => return Err(tok_err(path, "field `chat_template` must be a string or a list of {name, template}")),
    }
    Ok(out)
}

/// The chat templates of a model folder. Precedence follows transformers: `chat_template.jinja`
/// over `chat_template.json` over `tokenizer_config.json`'s `chat_template`; named templates
/// of `tokenizer_config.json` stay available under their names.
pub(super) fn folder_templates(dir: &Path, tokenizer_config: Option<&Value>) -> Result<Templates> {
    let config_path = dir.join("tokenizer_config.json");
    let mut t = match tokenizer_config.and_then(|c| c.get("chat_template")) {
        Some(v) => parse_template_field(v, &config_path)?,
        None => Templates::default(),
    };
    let json_path = dir.join("chat_template.json");
    if let Some(v) = read_json(&json_path)? {
        if let Some(field) = v.get("chat_template") {
            let from_json = parse_template_field(field, &json_path)?;
            if from_json.default.is_some() {
                t.default = from_json.default;
            }
            t.named.extend(from_json.named);
        }
    }
    let jinja_path = dir.join("chat_template.jinja");
    if let Some(text) = read_text(&jinja_path)? {
        t.default = Some(ChatTemplate::new(jinja_path, text));
    }
    Ok(t)
}
