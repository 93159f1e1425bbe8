//! Text <-> token ids: a [`Tokenizer`] over the Hugging Face `tokenizers` crate, built either
//! from a model folder (`tokenizer.json` + side files) or from GGUF metadata, plus chat
//! templates and the end-of-sequence set generation stops on.
//!
//! Submodules: `files` (the JSON side files), `gguf` (building a tokenizer from GGUF
//! metadata), `template` (chat template rendering), `detokenizer` (streaming decode).

mod detokenizer;
mod files;
mod gguf;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

pub use detokenizer::StreamingDetokenizer;
pub use files::ChatTemplate;
pub use template::{ChatMessage, TEMPLATE_SECONDS};

use crate::error::{Error, Result};
use files::{config_ids, folder_templates, ids_field, read_json, tok_err, token_field, Templates};

/// End-of-turn tokens that chat models emit instead of (or besides) their configured EOS; a
/// candidate counts only if it is a single token of the vocabulary. (Same list as llama.cpp
/// and mlx-engine use.)
pub const DEFAULT_EOT_TOKENS: [&str; 8] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// Models whose end-of-turn markers differ: their list replaces [`DEFAULT_EOT_TOKENS`].
fn eot_tokens_for(model_type: Option<&str>) -> &'static [&'static str] {
    match model_type {
        Some("gpt_oss" | "gpt-oss") => &["<|return|>", "<|call|>"],
        _ => &DEFAULT_EOT_TOKENS,
    }
}

/// A loaded tokenizer with its special tokens and chat templates. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    /// The model folder or GGUF file, named in errors.
    source: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    eos_ids: BTreeSet<u32>,
    add_bos_token: Option<bool>,
    templates: Templates,
    /// The vocabulary compiled for constrained decoding, built on first use.
    constraint: crate::constrain::EnvSlot,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.inner.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.inner.bos_id)
            .field("eos_ids", &self.inner.eos_ids)
            .finish()
    }
}

/// What a builder (folder or GGUF) found besides the `tokenizers` pipeline.
struct Parts {
    tok: tokenizers::Tokenizer,
    source: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    /// EOS ids from configuration (before adding end-of-turn tokens).
    eos_ids: Vec<u32>,
    add_bos_token: Option<bool>,
    templates: Templates,
    /// `model_type` of config.json (`general.architecture` of a GGUF), for per-model EOS rules.
    model_type: Option<String>,
}

impl Tokenizer {
    /// Loads a Hugging Face model folder: `tokenizer.json` (required), and when present
    /// `tokenizer_config.json` (special tokens, `add_bos_token`, chat template),
    /// `chat_template.jinja` / `chat_template.json`, `config.json` and
    /// `generation_config.json` (`eos_token_id`, `bos_token_id`).
    ///
    /// Encoding follows `tokenizer.json`'s post-processor (the BOS it adds is what HF's
    /// `encode(text)` adds); `add_bos_token` is only reported.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(tok_err(dir, "no tokenizer.json in the model folder"));
        }
        let text =
            std::fs::read_to_string(&tok_path).map_err(|e| tok_err(&tok_path, format!("cannot read it: {e}")))?;
        let tok = tokenizers::Tokenizer::from_str(&text).map_err(|e| {
            // The tokenizers crate reports a wrong shape as a parse error; say which it is.
            match serde_json::from_str::<serde_json::Value>(&text) {
                Err(syntax) => tok_err(&tok_path, format!("invalid JSON: {syntax}")),
                Ok(_) => {
                    tok_err(&tok_path, format!("valid JSON, but not a tokenizer the `tokenizers` library reads: {e}"))
                }
            }
        })?;

        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?;
        let (mut bos_token, mut eos_token, mut add_bos_token) = (None, None, None);
        if let Some(tc) = &tc {
            bos_token = token_field(tc, "bos_token", &tc_path)?;
            eos_token = token_field(tc, "eos_token", &tc_path)?;
            add_bos_token = match tc.get("add_bos_token") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => {
                    Some(v.as_bool().ok_or_else(|| tok_err(&tc_path, "field `add_bos_token` must be true or false"))?)
                }
            };
        }
        let templates = folder_templates(dir, tc.as_ref())?;

        let mut eos_ids = Vec::new();
        let mut bos_ids = Vec::new();
        if let Some(t) = &eos_token {
            eos_ids.extend(tok.token_to_id(t));
        }
        if let Some(t) = &bos_token {
            bos_ids.extend(tok.token_to_id(t));
        }
        let gc_path = dir.join("generation_config.json");
        if let Some(gc) = read_json(&gc_path)? {
            eos_ids.extend(ids_field(&gc, "eos_token_id", &gc_path)?);
            bos_ids.extend(ids_field(&gc, "bos_token_id", &gc_path)?);
        }
        let cfg_path = dir.join("config.json");
        let mut model_type = None;
        if let Some(cfg) = read_json(&cfg_path)? {
            eos_ids.extend(config_ids(&cfg, "eos_token_id", &cfg_path)?);
            bos_ids.extend(config_ids(&cfg, "bos_token_id", &cfg_path)?);
            let text_type = cfg.get("text_config").and_then(|t| t.get("model_type"));
            model_type = text_type.or(cfg.get("model_type")).and_then(|v| v.as_str()).map(str::to_string);
        }
        let bos_id = bos_ids.first().copied();
        if bos_token.is_none() {
            bos_token = bos_id.and_then(|id| tok.id_to_token(id));
        }
        if eos_token.is_none() {
            eos_token = eos_ids.first().and_then(|&id| tok.id_to_token(id));
        }
        Tokenizer::finish(Parts {
            tok,
            source: dir.to_path_buf(),
            bos_token,
            eos_token,
            bos_id,
            eos_ids,
            add_bos_token,
            templates,
            model_type,
        })
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*` and
    /// `tokenizer.chat_template` metadata). `source` is the GGUF file, named in errors. See
    /// the `gguf` submodule for what is supported.
    pub fn from_gguf(source: &Path, metadata: &[(String, crate::api::io::MetaValue)]) -> Result<Tokenizer> {
        let parts = gguf::build(source, metadata)?;
        Tokenizer::finish(parts)
    }

    /// Validates ids and completes the EOS set: configured ids that exist in the vocabulary,
    /// plus end-of-turn tokens that are single tokens. No EOS at all is an error, since
    /// generation would only ever stop at the token limit.
    fn finish(p: Parts) -> Result<Tokenizer> {
        let vocab = p.tok.get_vocab_size(true);
        let known = |id: u32| p.tok.id_to_token(id).is_some();
        let mut eos_ids = BTreeSet::new();
        for id in p.eos_ids {
            // RNJ-1 (a gemma3_text fine-tune) lists id 1 as EOS although that id is `"` in its
            // vocabulary; stopping on every quote would truncate answers.
            if p.model_type.as_deref() == Some("gemma3_text")
                && id == 1
                && p.tok.id_to_token(1).as_deref() == Some("\"")
            {
                crate::diagnostics::warn_once(format!(
                    "{}: eos token id 1 is `\"` in this vocabulary; ignored",
                    p.source.display()
                ));
                continue;
            }
            if known(id) {
                eos_ids.insert(id);
            } else {
                crate::diagnostics::warn_once(format!(
                    "{}: eos token id {id} is outside the vocabulary ({vocab} tokens); ignored",
                    p.source.display()
                ));
            }
        }
        for candidate in eot_tokens_for(p.model_type.as_deref()) {
            if let Ok(enc) = p.tok.encode_fast(*candidate, false) {
                if let [id] = enc.get_ids() {
                    eos_ids.insert(*id);
                }
            }
        }
        if eos_ids.is_empty() {
            return Err(tok_err(
                &p.source,
                "no end-of-sequence token: no configured EOS (eos_token / eos_token_id) is in the \
                 vocabulary and no known end-of-turn token is a single token",
            ));
        }
        let bos_id = p.bos_id.filter(|&id| known(id));
        // Templates print `eos_token`; without a configured one, name the lowest EOS id.
        let eos_token = p.eos_token.or_else(|| eos_ids.first().and_then(|&id| p.tok.id_to_token(id)));
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                tok: p.tok,
                source: p.source,
                bos_token: p.bos_token,
                eos_token,
                bos_id,
                eos_ids,
                add_bos_token: p.add_bos_token,
                templates: p.templates,
                constraint: Default::default(),
            }),
        })
    }

    /// Text -> ids. With `add_special_tokens` this is HF `encode(text)`: the post-processor adds
    /// what the model expects (e.g. BOS). Special-token text inside `text` is always recognised.
    /// A prompt rendered by a chat template already holds its BOS: encode it with `false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tok
            .encode_fast(text, add_special_tokens)
            .map_err(|e| tok_err(&self.inner.source, format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids -> text. Bytes that do not form valid UTF-8 come out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(&self.inner.source, format!("cannot decode ids: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// The vocabulary entry of `id` (in the model's own spelling, e.g. `Ġhello`, `▁hello`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }

    /// The ids that end generation: configured EOS ids plus single-token end-of-turn markers
    /// (never empty).
    pub fn eos_token_ids(&self) -> &BTreeSet<u32> {
        &self.inner.eos_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.inner.eos_ids.contains(&id)
    }

    /// `add_bos_token` as configured (tokenizer_config.json or GGUF), if it was.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.inner.add_bos_token
    }

    /// The model folder or GGUF file this tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.inner.source
    }

    /// The default chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.templates.default.as_ref()
    }

    /// Named chat templates (e.g. `tool_use`), if the model lists any.
    pub fn named_chat_templates(&self) -> &BTreeMap<String, ChatTemplate> {
        &self.inner.templates.named
    }

    /// The underlying `tokenizers` pipeline (for vocabulary-level work such as grammars).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }

    /// Where [`crate::constrain::ConstraintEnv`] keeps this tokenizer's compiled vocabulary.
    pub(crate) fn constraint_slot(&self) -> &crate::constrain::EnvSlot {
        &self.inner.constraint
    }

    /// Renders a conversation into prompt text with the model's chat template, or with
    /// `template` when given (e.g. from `--chat-template FILE`). The context holds `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, and every entry of `extra`
    /// (`chat_template_args`, e.g. `tools` or `enable_thinking`), which may override the
    /// special tokens but not the conversation.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
        template: Option<&ChatTemplate>,
    ) -> Result<String> {
        self.render_chat(messages, add_generation_prompt, extra, template, None)
    }

    /// [`Tokenizer::apply_chat_template`] that fails with "rendering was cancelled" soon after
    /// another thread sets `cancel` (a server whose client disconnected mid-render).
    pub fn apply_chat_template_cancellable(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
        template: Option<&ChatTemplate>,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<String> {
        self.render_chat(messages, add_generation_prompt, extra, template, Some(cancel))
    }

    fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
        template: Option<&ChatTemplate>,
        cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<String> {
        let template = match template.or(self.inner.templates.default.as_ref()) {
            Some(t) => t,
            None => {
                let named = &self.inner.templates.named;
                let hint = if named.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (it has named templates {:?} but none called `default`)",
                        named.keys().collect::<Vec<_>>()
                    )
                };
                return Err(Error::ChatTemplate {
                    path: self.inner.source.clone(),
                    reason: format!("the model has no chat template{hint}; pass one with --chat-template FILE"),
                });
            }
        };
        let input = template::RenderInput {
            messages,
            add_generation_prompt,
            extra,
            bos_token: self.inner.bos_token.as_deref().unwrap_or(""),
            eos_token: self.inner.eos_token.as_deref().unwrap_or(""),
            cancel,
        };
        template::render(&template.source, &template.text, &input)
    }
}
