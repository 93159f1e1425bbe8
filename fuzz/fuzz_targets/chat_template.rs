//! Hostile chat templates and messages -> `Tokenizer::apply_chat_template`: never panics, never
//! runs away (the template's fuel budget stops loops; libFuzzer's -timeout and -rss_limit_mb
//! catch whatever escapes it), and a failure is a chat-template error naming the template.
//!
//! Input: one flags byte (bit 0: add_generation_prompt, bits 1-2: images on each user turn),
//! then NUL-separated fields: the template, the `chat_template_args` JSON (ignored unless it is
//! an object), then role / content pairs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mlx_engine::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use mlx_engine::Error;

#[path = "../../engine/tests/tokenizer_fixtures/mod.rs"]
mod tokenizer_fixtures;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = tokenizer_fixtures::folder(&[
            ("tokenizer.json", tokenizer_fixtures::bl_tokenizer_json()),
            ("tokenizer_config.json", serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})),
        ]);
        Tokenizer::from_dir(dir.path()).expect("fixture tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut fields = rest.split(|&b| b == 0).map(String::from_utf8_lossy);
    let Some(source) = fields.next() else { return };
    let extra = match fields.next().map(|s| serde_json::from_str(&s)) {
        Some(Ok(serde_json::Value::Object(m))) => m,
        _ => serde_json::Map::new(),
    };
    let images = usize::from((flags >> 1) & 3);
    let mut messages = Vec::new();
    while let (Some(role), Some(content)) = (fields.next(), fields.next()) {
        let n = if role == "user" { images } else { 0 };
        messages.push(ChatMessage::with_images(role, content, n));
    }
    let template = ChatTemplate::new("fuzz.jinja", source.into_owned());
    match tokenizer().apply_chat_template(&messages, flags & 1 == 1, &extra, Some(&template)) {
        Ok(_) => {}
        Err(Error::ChatTemplate { path, reason }) => {
            assert_eq!(path, template.source);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("a template failure that is not a chat-template error: {other}"),
    }
});
