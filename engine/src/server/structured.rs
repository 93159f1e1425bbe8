//! Structured output on the server: `response_format` (`json_object`, `json_schema`) and a
//! forced tool call (`tool_choice` `required` or a named function) as grammars for the
//! request's row.
//!
//! A forced call is constrained to exactly the text the model's template family writes and
//! `tools::parse` reads back: hermes/Qwen `<tool_call>\n{"name": ..., "arguments": ...}\n
//! </tool_call>`, mistral `[TOOL_CALLS][{"name": ..., "arguments": ...}]` or, for templates
//! that write `[ARGS]`, `[TOOL_CALLS]name[ARGS]{...}`; the arguments follow the tool's
//! `parameters` schema. So the response always carries parseable `tool_calls`.

use serde_json::{json, Value};

use super::errors::ApiError;
use super::tools::ToolFormat;
use crate::constrain::{lark_literal, Constraint, Grammar};
use crate::tokenizer::Tokenizer;

/// The grammar `response_format` asks for (`None` for `text` or no format).
pub fn response_format(format: Option<&Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(f) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    let bad = |msg: String| ApiError::bad_request(msg, Some("response_format"));
    let kind = f
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("response_format needs a `type`: \"text\", \"json_object\" or \"json_schema\"".into()))?;
    let grammar = match kind {
        "text" => return Ok(None),
        "json_object" => Grammar::JsonObject,
        "json_schema" => {
            let spec = f.get("json_schema").filter(|s| s.is_object()).ok_or_else(|| {
                bad("response_format `json_schema` needs a `json_schema` object with `name` and `schema`".into())
            })?;
            if !spec.get("name").is_some_and(Value::is_string) {
                return Err(bad("response_format.json_schema.name must be a string".into()));
            }
            match spec.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => Grammar::JsonSchema(s.clone()),
                // OpenAI treats a missing schema as any JSON object.
                None | Some(Value::Null) => Grammar::JsonObject,
                Some(other) => {
                    return Err(bad(format!(
                        "response_format.json_schema.schema must be a JSON schema object, got {other}"
                    )))
                }
            }
        }
        other => {
            return Err(bad(format!(
                "response_format type `{other}` is not supported (\"text\", \"json_object\" or \"json_schema\")"
            )))
        }
    };
    Ok(Some(Constraint::new(grammar, "response_format")))
}

/// What `tool_choice` asks for.
pub enum ToolChoice {
    /// The model decides (`auto`, the default).
    Auto,
    /// No tools: they are not rendered, and no call is parsed.
    None,
    /// A call must be made: to one of these tools (names), or to any (`required`: all of them).
    Forced(Vec<String>),
}

pub fn tool_choice(choice: Option<&Value>, tools: Option<&[Value]>) -> Result<ToolChoice, ApiError> {
    let bad = |msg: String| ApiError::bad_request(msg, Some("tool_choice"));
    let names: Vec<String> = tools.unwrap_or_default().iter().filter_map(|t| name_of(t).map(str::to_string)).collect();
    let forced = |names: Vec<String>| {
        if tools.is_none_or(<[Value]>::is_empty) {
            return Err(bad("tool_choice forces a tool call, but the request has no `tools`".into()));
        }
        Ok(ToolChoice::Forced(names))
    };
    match choice {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(c)) if c == "auto" => Ok(ToolChoice::Auto),
        Some(Value::String(c)) if c == "none" => Ok(ToolChoice::None),
        Some(Value::String(c)) if c == "required" => forced(names),
        Some(v @ Value::Object(_)) if v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                bad("a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}".into())
            })?;
            if !names.iter().any(|n| n == name) {
                return Err(bad(format!("tool_choice names `{name}`, which is not in `tools` ({})", names.join(", "))));
            }
            forced(vec![name.to_string()])
        }
        Some(other) => {
            Err(bad(format!("tool_choice must be \"auto\", \"none\", \"required\" or a named function, got {other}")))
        }
    }
}

fn name_of(tool: &Value) -> Option<&str> {
    tool.pointer("/function/name").and_then(Value::as_str)
}

/// The schema of a tool's arguments (`function.parameters`; any object when it has none).
fn parameters(tools: &[Value], name: &str) -> Value {
    let tool = tools.iter().find(|t| name_of(t) == Some(name));
    match tool.and_then(|t| t.pointer("/function/parameters")) {
        Some(p @ (Value::Object(_) | Value::Bool(_))) => p.clone(),
        _ => json!({"type": "object"}),
    }
}

/// `text` as a Lark terminal: the special token it is, when the tokenizer has it as one
/// (a special token's text is never produced byte by byte), else the literal bytes.
fn marker(tokenizer: &Tokenizer, text: &str) -> String {
    let hf = tokenizer.hf();
    match hf.token_to_id(text) {
        Some(id) if hf.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special) => format!("<[{id}]>"),
        _ => lark_literal(text),
    }
}

/// The grammar of one call to one of `names` (several: `required`, any tool) in `format`.
/// One call, not several: a small model offered "more calls" tends to repeat the call until
/// the budget runs out. `template` is the chat template's source (mistral's two layouts differ).
pub fn tool_call_constraint(
    tokenizer: &Tokenizer,
    format: ToolFormat,
    template: &str,
    tools: &[Value],
    names: &[String],
) -> Result<Constraint, ApiError> {
    let mut rules = Vec::new();
    let mut alternatives = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let args = crate::constrain::with_layout(parameters(tools, name));
        let args = serde_json::to_string(&args).map_err(|e| ApiError::internal(e.to_string()))?;
        let quoted = serde_json::to_string(name).map_err(|e| ApiError::internal(e.to_string()))?;
        let body = match format {
            ToolFormat::Mistral if template.contains("[ARGS]") => {
                format!("{} {} %json {args}", lark_literal(name), marker(tokenizer, "[ARGS]"))
            }
            _ => format!(
                "{} %json {args} {}",
                lark_literal(&format!("{{\"name\": {quoted}, \"arguments\": ")),
                lark_literal("}")
            ),
        };
        rules.push(format!("tool_{i}: {body}"));
        alternatives.push(format!("tool_{i}"));
    }
    let one = alternatives.join(" | ");
    let start = match format {
        ToolFormat::Hermes => {
            format!("start: {} ({one}) {}", lark_literal("<tool_call>\n"), lark_literal("\n</tool_call>"))
        }
        ToolFormat::Mistral if template.contains("[ARGS]") => {
            format!("start: {} ({one})", marker(tokenizer, "[TOOL_CALLS]"))
        }
        ToolFormat::Mistral => format!("start: {} \"[\" ({one}) \"]\"", marker(tokenizer, "[TOOL_CALLS]")),
    };
    let lark = format!("{start}\n{}\n", rules.join("\n"));
    Ok(Constraint::new(Grammar::Lark(lark), "tools"))
}
