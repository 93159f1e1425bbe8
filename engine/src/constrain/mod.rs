//! Structured output: a grammar (any JSON object, a JSON schema, a Lark grammar, a regex)
//! constrains which tokens a generation may sample, through `llguidance`.
//!
//! A request's [`Constraint`] is compiled once, when the request is checked, into a
//! [`SequenceMatcher`] over the model's vocabulary. Per decode step the matcher yields the
//! allowed-token mask, which is added to the logits (0 for allowed tokens, -inf for the others,
//! the padding rows of an embedding larger than the tokenizer included) before the processors
//! and the sampler; every committed token advances it; when the grammar admits no more text
//! the generation ends with [`crate::generate::StopReason::GrammarComplete`] (finish reason
//! `stop`).
//!
//! The mask is computed on the host while the device runs the forward pass whose logits it
//! applies to: the decoder queues the forward (`async_eval`) before asking the matcher, so
//! the matcher's work is hidden behind the model's (see `generate::step::Decoder::sample` and
//! docs/structured-output.md).

mod env;
mod matcher;

use std::path::Path;

use serde_json::{json, Value};

pub use env::ConstraintEnv;
pub(crate) use env::EnvSlot;
pub use matcher::SequenceMatcher;

use crate::error::{Error, Result};

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON schema (draft 2020-12 as `llguidance` supports it).
    JsonSchema(Value),
    /// A grammar in `llguidance`'s Lark syntax (which may embed `%json {schema}`).
    Lark(String),
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
}

/// A grammar and the request parameter it came from, which errors name.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub grammar: Grammar,
    /// E.g. `response_format`, `--json-schema`; named in compile errors.
    pub param: String,
}

impl Constraint {
    pub fn new(grammar: Grammar, param: impl Into<String>) -> Constraint {
        Constraint { grammar, param: param.into() }
    }

    /// A JSON schema read from `path` (named in the error when it is not JSON).
    pub fn json_schema_file(path: &Path, param: &str) -> Result<Constraint> {
        let text = read(path)?;
        let schema = serde_json::from_str(&text).map_err(|e| Error::Param {
            name: param.into(),
            reason: format!("{}: not valid JSON: {e}", path.display()),
        })?;
        Ok(Constraint::new(Grammar::JsonSchema(schema), param))
    }

    /// A Lark grammar read from `path`.
    pub fn lark_file(path: &Path, param: &str) -> Result<Constraint> {
        Ok(Constraint::new(Grammar::Lark(read(path)?), param))
    }

    /// The `llguidance` grammar, with JSON laid out as models usually write it.
    fn top_level(&self) -> Result<llguidance::api::TopLevelGrammar> {
        use llguidance::api::TopLevelGrammar;
        Ok(match &self.grammar {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"}))),
            Grammar::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(self.error(format!("a JSON schema is an object (or true/false), got {schema}")));
                }
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Param { name: self.param.clone(), reason: reason.into() }
    }

    /// Compiles the grammar for one sequence over `env`'s vocabulary.
    pub fn compile(&self, env: &ConstraintEnv) -> Result<SequenceMatcher> {
        let what = match self.grammar {
            Grammar::JsonObject | Grammar::JsonSchema(_) => "JSON schema",
            Grammar::Lark(_) => "Lark grammar",
            Grammar::Regex(_) => "regex",
        };
        let parser =
            env.factory().create_parser(self.top_level()?).map_err(|e| self.error(format!("invalid {what}: {e}")))?;
        SequenceMatcher::new(parser, env, &self.param)
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}

/// JSON without free whitespace: a small model offered "any whitespace" can write newlines
/// forever. Items and keys are separated as `json.dumps` does. A schema that sets its own
/// `x-guidance` options keeps them.
pub(crate) fn with_layout(schema: Value) -> Value {
    let layout = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    match schema {
        Value::Object(mut m) => {
            m.entry("x-guidance").or_insert(layout);
            Value::Object(m)
        }
        Value::Bool(true) => json!({"x-guidance": layout}),
        other => other,
    }
}

/// A Lark string literal for `text` (JSON string escapes, which Lark reads the same way).
pub fn lark_literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}
