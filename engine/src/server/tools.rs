//! Tool calling: which format a model writes its calls in (from its chat template), and the
//! parsers that turn that text into OpenAI `tool_calls`.
//!
//! Formats:
//! - hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of
//!   them, with free text around;
//! - mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (v3 tokenizers) or
//!   `[TOOL_CALLS]name[ARGS]{...}` repeated (v11 and later).
//!
//! Text that looks like a call but does not parse stays content: a malformed call is better
//! shown to the client than silently dropped.

use serde_json::{json, Value};

/// A model's tool-call format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Mistral,
}

impl ToolFormat {
    /// The format a chat template asks for, from the markers its source writes; templates
    /// with neither get hermes, the most common convention.
    pub fn of_template(source: &str) -> ToolFormat {
        if source.contains("[TOOL_CALLS]") && !source.contains("<tool_call>") {
            ToolFormat::Mistral
        } else {
            ToolFormat::Hermes
        }
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// What the model wrote: the text outside the calls (`None` when only whitespace) and the calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        // Some models write the arguments already encoded.
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    Some(ToolCall { name, arguments })
}

fn content(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Parses `text` in `format`; text without any well-formed call is all content.
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let parsed = match format {
        ToolFormat::Hermes => parse_hermes(text),
        ToolFormat::Mistral => parse_mistral(text),
    };
    parsed.unwrap_or_else(|| Parsed { content: content(text), calls: Vec::new() })
}

fn parse_hermes(text: &str) -> Option<Parsed> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut at = 0;
    while let Some(start) = text[at..].find(OPEN).map(|i| at + i) {
        let body_start = start + OPEN.len();
        // A call cut off by the token limit has no closing tag: take what is there.
        let body_end = text[body_start..].find(CLOSE).map_or(text.len(), |i| body_start + i);
        let v: Value = serde_json::from_str(text[body_start..body_end].trim()).ok()?;
        calls.push(call_of(&v)?);
        rest.push_str(&text[at..start]);
        at = (body_end + CLOSE.len()).min(text.len());
    }
    rest.push_str(&text[at..]);
    (!calls.is_empty()).then(|| Parsed { content: content(&rest), calls })
}

fn parse_mistral(text: &str) -> Option<Parsed> {
    const MARK: &str = "[TOOL_CALLS]";
    let start = text.find(MARK)?;
    let before = &text[..start];
    let body = text[start + MARK.len()..].trim();
    let mut calls = Vec::new();
    if body.starts_with('[') {
        let list: Vec<Value> = serde_json::from_str(body).ok()?;
        for v in &list {
            calls.push(call_of(v)?);
        }
    } else {
        // name[ARGS]{...}, each call after its own marker.
        for part in body.split(MARK) {
            let (name, args) = part.split_once("[ARGS]")?;
            let args: Value = serde_json::from_str(args.trim()).ok()?;
            calls.push(ToolCall { name: name.trim().to_string(), arguments: args.to_string() });
        }
    }
    (!calls.is_empty()).then(|| Parsed { content: content(before), calls })
}

/// The OpenAI `tool_calls` list; ids are the completion id with the call's index.
pub fn tool_calls_json(calls: &[ToolCall], id: &str, streaming: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": format!("call_{id}_{i}"), "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if streaming {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// An assistant turn's `tool_calls` as chat templates read them: `function.arguments` as an
/// object when the client sent a JSON string (the Hugging Face convention templates follow).
pub fn for_template(tool_calls: &Value) -> Value {
    let mut v = tool_calls.clone();
    if let Some(list) = v.as_array_mut() {
        for call in list {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
                    *args = parsed;
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_calls_and_the_text_around_them() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": {}}</tool_call>";
        let p = parse(ToolFormat::Hermes, text);
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].name, "weather");
        let args: Value = serde_json::from_str(&p.calls[0].arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(p.calls[1].arguments, "{}");
    }

    #[test]
    fn a_cut_off_hermes_call_still_parses_when_its_json_is_whole() {
        let p = parse(ToolFormat::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}");
        assert_eq!(p.calls, vec![ToolCall { name: "f".into(), arguments: "{\"x\":1}".into() }]);
        assert_eq!(p.content, None);
    }

    #[test]
    fn malformed_calls_stay_content() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": </tool_call>";
        let p = parse(ToolFormat::Hermes, text);
        assert!(p.calls.is_empty());
        assert_eq!(p.content.as_deref(), Some(text));
        assert_eq!(parse(ToolFormat::Hermes, "just text").content.as_deref(), Some("just text"));
        assert!(parse(ToolFormat::Mistral, "[TOOL_CALLS][{\"nam").calls.is_empty());
    }

    #[test]
    fn mistral_list_and_args_formats() {
        let p = parse(
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"b\", \"arguments\": {}}]",
        );
        assert_eq!(p.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let p = parse(ToolFormat::Mistral, "[TOOL_CALLS]a[ARGS]{\"q\": 1}[TOOL_CALLS]b[ARGS]{}");
        assert_eq!(p.calls[0], ToolCall { name: "a".into(), arguments: "{\"q\":1}".into() });
        assert_eq!(p.calls[1].name, "b");
    }

    #[test]
    fn the_format_follows_the_template() {
        assert_eq!(ToolFormat::of_template("{{ '[TOOL_CALLS]' }}"), ToolFormat::Mistral);
        assert_eq!(ToolFormat::of_template("<tool_call>"), ToolFormat::Hermes);
        assert_eq!(ToolFormat::of_template("plain"), ToolFormat::Hermes);
    }

    #[test]
    fn template_tool_calls_get_object_arguments() {
        let v = json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]);
        assert_eq!(for_template(&v)[0]["function"]["arguments"], json!({"x": 1}));
        let j = tool_calls_json(&[ToolCall { name: "f".into(), arguments: "{}".into() }], "cmpl-1", true);
        assert_eq!(j[0]["index"], 0);
        assert_eq!(j[0]["id"], "call_cmpl-1_0");
    }
}
