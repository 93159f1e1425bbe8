//! The OpenAI request and response shapes the server speaks (chat completions, completions,
//! models), and the mapping of request fields to the engine's generation request.
//!
//! A body is deserialized twice, as the endpoint's own fields and as [`Common`], rather than
//! with `#[serde(flatten)]`, which would lose the path of a field with the wrong type.
//!
//! Requests deserialize strictly by type (a string where a number belongs is a 400 naming the
//! field) but ignore fields the engine has no use for (`user`, `metadata`, ...), as OpenAI
//! compatible servers commonly do, so that clients sending them keep working.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use crate::generate::{GenerateRequest, StopReason, Token};
use crate::sample::SamplingOverrides;
use crate::tokenizer::ChatMessage;
use crate::vision::ImageInput;

/// Fields that completions and chat completions share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: String,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (mlx-lm, vLLM): keep the k most likely tokens.
    pub top_k: Option<i32>,
    /// Extension: keep tokens at least `min_p` times as likely as the best one.
    pub min_p: Option<f32>,
    pub max_tokens: Option<usize>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    /// Token id (as a string, JSON keys being strings) -> bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Extension (mlx-lm): multiplicative repetition penalty over the recent tokens.
    pub repetition_penalty: Option<f32>,
    /// Extension (mlx-lm): draft tokens per speculative round, when the server drafts.
    pub num_draft_tokens: Option<usize>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<usize>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub response_format: Option<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant turn's calls, for the template to render the conversation so far.
    pub tool_calls: Option<Value>,
    /// A tool result's call id and function name.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    /// OpenAI's `low` / `high` / `auto`: accepted, not used (images are preprocessed to the
    /// model's own size).
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Top alternatives per token (0 to 5 in OpenAI's API); any value returns token logprobs.
    pub logprobs: Option<usize>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// Parses a request body, naming the field at fault in the error.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let what = if syntax { "malformed JSON" } else { "invalid request" };
        let param = (!syntax && path != "." && !path.is_empty()).then_some(path);
        let at = param.as_ref().map(|p| format!(" (field `{p}`)")).unwrap_or_default();
        ApiError::bad_request(format!("{what}{at}: {inner}"), param.as_deref())
    })?;
    // Trailing bytes after the object are malformed JSON too.
    de.end().map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}"), None))?;
    Ok(out)
}

impl Message {
    /// The engine's chat message: the text parts joined, and the number of image parts, which
    /// the template places after the text (the order `generate --image` uses); the images
    /// themselves come from [`Message::images`].
    pub fn to_chat(&self, i: usize) -> Result<ChatMessage, ApiError> {
        let param = format!("messages[{i}].content");
        let (text, images) = match &self.content {
            None => (String::new(), 0),
            Some(Content::Text(t)) => (t.clone(), 0),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                let mut images = 0;
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => return Err(ApiError::bad_request("a text part needs `text`", Some(&param))),
                        ("image_url", _) => images += 1,
                        (other, _) => {
                            return Err(ApiError::bad_request(
                                format!("content parts of type `{other}` are not supported by this server (text and image_url only)"),
                                Some(&format!("{param}[{j}].type")),
                            ))
                        }
                    }
                }
                (text, images)
            }
        };
        let mut m = ChatMessage::with_images(self.role.clone(), text, images);
        if let Some(calls) = &self.tool_calls {
            m.fields.insert("tool_calls".into(), super::tools::for_template(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.fields.insert("tool_call_id".into(), Value::String(id.clone()));
        }
        if let Some(name) = &self.name {
            m.fields.insert("name".into(), Value::String(name.clone()));
        }
        Ok(m)
    }

    /// The message's images (its `image_url` parts), each with the request field it came from.
    /// Only `data:` URLs: the server fetches nothing from the network.
    pub fn images(&self, i: usize) -> Result<Vec<(ImageInput, String)>, ApiError> {
        let Some(Content::Parts(parts)) = &self.content else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (j, p) in parts.iter().enumerate().filter(|(_, p)| p.kind == "image_url") {
            let param = format!("messages[{i}].content[{j}].image_url");
            let Some(image) = &p.image_url else {
                return Err(ApiError::bad_request("an image_url part needs `image_url`", Some(&param)));
            };
            let param = format!("{param}.url");
            let url = image.url.trim();
            if !url.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("data:")) {
                return Err(ApiError::bad_request(
                    "images must be sent as data URLs (data:image/png;base64,...): this server does not fetch URLs",
                    Some(&param),
                ));
            }
            out.push((ImageInput::DataUrl(url.to_string()), param));
        }
        Ok(out)
    }
}

impl Common {
    /// Checks what the engine does not check itself, then builds the generation request
    /// (prompt tokens are filled in by the caller).
    pub fn to_request(&self, max_tokens: Option<usize>, top_logprobs: usize) -> Result<GenerateRequest, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(format!("n = {n} is not supported: only n = 1"), Some("n")));
        }
        let mut logit_bias = BTreeMap::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| {
                ApiError::bad_request(format!("logit_bias keys must be token ids, got `{k}`"), Some("logit_bias"))
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::bad_request(
                    format!("logit_bias values must be in [-100, 100], got {v} for token {id}"),
                    Some("logit_bias"),
                ));
            }
            logit_bias.insert(id, v);
        }
        let stop_strings = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let sampling = SamplingOverrides {
            temp: self.temperature,
            top_p: self.top_p,
            min_p: self.min_p,
            top_k: self.top_k,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: (!logit_bias.is_empty()).then_some(logit_bias),
            top_logprobs: (top_logprobs > 0).then_some(top_logprobs),
            ..Default::default()
        };
        let num_draft_tokens = self.num_draft_tokens;
        Ok(GenerateRequest { sampling, max_tokens, stop_strings, num_draft_tokens, ..Default::default() })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// OpenAI's `finish_reason` for a stop reason.
pub fn finish_reason(reason: Option<StopReason>) -> &'static str {
    match reason {
        Some(StopReason::TokenLimit) => "length",
        _ => "stop",
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

fn entry(t: &Token) -> Value {
    json!({"token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes()})
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
pub fn chat_logprobs(tokens: &[Token], top: &[Vec<Token>]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut e = entry(t);
            e["top_logprobs"] = top.get(i).map(|alts| alts.iter().map(entry).collect()).unwrap_or_default();
            e
        })
        .collect();
    json!({"content": content})
}

/// Completions' `logprobs`: parallel lists, with text offsets counted from `offset` (the
/// characters of completion text before these tokens).
pub fn completion_logprobs(tokens: &[Token], top: &[Vec<Token>], mut offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.text.chars().count();
    }
    let tops: Vec<Value> = (0..tokens.len())
        .map(|i| match top.get(i) {
            Some(alts) => Value::Object(alts.iter().map(|a| (a.text.clone(), json!(a.logprob))).collect()),
            None => Value::Null,
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse::<Common>(br#"{"model":"m","messages":[],"temperature":"hot"}"#).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[{"role":1}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn malformed_json_is_a_400() {
        let e = parse::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse::<Common>(br#"{"model":"m"} x"#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }

    #[test]
    fn n_other_than_one_is_refused() {
        let c = Common { n: Some(2), ..Default::default() };
        assert_eq!(c.to_request(None, 0).unwrap_err().param.as_deref(), Some("n"));
        let c = Common { n: Some(1), ..Default::default() };
        assert!(c.to_request(None, 0).is_ok());
    }

    #[test]
    fn logit_bias_keys_and_ranges_are_checked() {
        let mut bias = BTreeMap::new();
        bias.insert("abc".to_string(), 1.0);
        let c = Common { logit_bias: Some(bias), ..Default::default() };
        assert!(c.to_request(None, 0).is_err());
        let mut bias = BTreeMap::new();
        bias.insert("5".to_string(), 101.0);
        let c = Common { logit_bias: Some(bias), ..Default::default() };
        assert!(c.to_request(None, 0).is_err());
        let mut bias = BTreeMap::new();
        bias.insert("5".to_string(), -100.0);
        let c = Common { logit_bias: Some(bias), ..Default::default() };
        assert_eq!(c.to_request(None, 0).unwrap().sampling.logit_bias.unwrap()[&5], -100.0);
    }

    #[test]
    fn text_offsets_count_characters() {
        let t = |s: &str| Token { id: 0, text: s.into(), logprob: -1.0, from_draft: None };
        let v = completion_logprobs(&[t("é"), t("ab")], &[], 3);
        assert_eq!(v["text_offset"], json!([3, 4]));
    }

    #[test]
    fn image_parts_count_and_only_data_urls_are_taken() {
        let m: Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}"#,
        )
        .unwrap();
        let c = m.to_chat(0).unwrap();
        assert_eq!((c.content.as_str(), c.images), ("hi", 1));
        let images = m.images(0).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].1, "messages[0].content[1].image_url.url");
        let m: Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}"#,
        )
        .unwrap();
        let e = m.images(3).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[3].content[0].image_url.url"));
        assert!(e.message.contains("does not fetch URLs"), "{}", e.message);
        let m: Message = serde_json::from_str(r#"{"role":"user","content":[{"type":"audio"}]}"#).unwrap();
        assert_eq!(m.to_chat(0).unwrap_err().param.as_deref(), Some("messages[0].content[0].type"));
    }
}
