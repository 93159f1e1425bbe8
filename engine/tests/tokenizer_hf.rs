//! Tokenizers loaded from model folders: encode/decode ids, the EOS set, chat templates, and
//! the streaming detokenizer, on small tokenizer.json files written by the tests.

mod tokenizer_fixtures;

use mlx_engine::tokenizer::{ChatMessage, ChatTemplate, StreamingDetokenizer, Tokenizer};
use serde_json::{json, Map, Value};
use tokenizer_fixtures::*;

fn load(files: &[(&str, Value)]) -> (tempfile::TempDir, Tokenizer) {
    let dir = folder(files);
    let tok = Tokenizer::from_dir(dir.path()).expect("tokenizer loads");
    (dir, tok)
}

fn byte_level() -> (tempfile::TempDir, Tokenizer) {
    load(&[("tokenizer.json", bl_tokenizer_json()), ("config.json", json!({"eos_token_id": 2}))])
}

fn sentencepiece() -> (tempfile::TempDir, Tokenizer) {
    load(&[
        ("tokenizer.json", sp_tokenizer_json(true)),
        ("tokenizer_config.json", json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true})),
    ])
}

fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
    list.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

// --- encode / decode --------------------------------------------------------------------------

#[test]
fn byte_level_encode_decode_exact_ids() {
    let (_d, tok) = byte_level();
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![BL_HELLO, BL_SPACE_WORLD]);
    // Digits are split one by one, the space before them stays a lone `Ġ`.
    assert_eq!(
        tok.encode("hello 123", false).unwrap(),
        vec![BL_HELLO, bl_byte(b' '), bl_byte(b'1'), bl_byte(b'2'), bl_byte(b'3')]
    );
    // Special-token text is recognised.
    let user: Vec<u32> = "user".bytes().map(bl_byte).collect();
    let mut expected = vec![1];
    expected.extend(&user);
    expected.push(2);
    assert_eq!(tok.encode("<|im_start|>user<|im_end|>", false).unwrap(), expected);
    // A 4-byte emoji is four byte tokens.
    let emoji: Vec<u32> = "😀".bytes().map(bl_byte).collect();
    assert_eq!(tok.encode("😀", false).unwrap(), emoji);

    assert_eq!(tok.decode(&[BL_HELLO, BL_SPACE_WORLD], false).unwrap(), "hello world");
    assert_eq!(tok.decode(&[1, BL_HELLO, 2], false).unwrap(), "<|im_start|>hello<|im_end|>");
    assert_eq!(tok.decode(&[1, BL_HELLO, 2], true).unwrap(), "hello");
    assert_eq!(tok.decode(&emoji, false).unwrap(), "😀");
    assert_eq!(tok.token_to_id("Ġworld"), Some(BL_SPACE_WORLD));
    assert_eq!(tok.id_to_token(BL_HELLO).as_deref(), Some("hello"));
    assert_eq!(tok.vocab_size(), bl_tokens().len());
}

#[test]
fn sentencepiece_encode_decode_exact_ids() {
    let (_d, tok) = sentencepiece();
    assert_eq!(tok.encode("hello world!", true).unwrap(), vec![1, SP_HELLO_, SP_WORLD_, SP_BANG]);
    assert_eq!(tok.encode("hello world", false).unwrap(), vec![SP_HELLO_, SP_WORLD_]);
    assert_eq!(tok.encode("hello  world", false).unwrap(), vec![SP_HELLO_, SP_SPACE, SP_WORLD_]);
    // No piece for the emoji: byte fallback.
    let mut expected = vec![SP_HELLO_];
    expected.extend("😀".bytes().map(sp_byte));
    assert_eq!(tok.encode("hello😀", false).unwrap(), expected);

    assert_eq!(tok.decode(&[1, SP_HELLO_, SP_WORLD_, SP_BANG], true).unwrap(), "hello world!");
    assert_eq!(tok.decode(&expected, false).unwrap(), "hello😀");
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<s>"));
    assert_eq!(tok.eos_token(), Some("</s>"));
    assert_eq!(tok.add_bos_token(), Some(true));
}

#[test]
fn missing_or_invalid_tokenizer_json_names_the_file() {
    let dir = folder(&[("config.json", json!({}))]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()) && err.contains("no tokenizer.json"), "{err}");

    let dir = folder(&[("tokenizer.json", json!({"model": {"type": "Nope"}}))]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().join("tokenizer.json").display().to_string()), "{err}");

    let dir = folder(&[("tokenizer.json", bl_tokenizer_json()), ("config.json", json!({"eos_token_id": "two"}))]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("eos_token_id"), "{err}");
}

// --- EOS set ----------------------------------------------------------------------------------

#[test]
fn eos_set_is_the_union_of_configs_and_single_token_end_of_turn_markers() {
    let (_d, tok) = load(&[
        ("tokenizer.json", bl_tokenizer_json()),
        ("config.json", json!({"eos_token_id": 2})),
        ("generation_config.json", json!({"eos_token_id": [2, 100, 999_999]})),
    ]);
    // 2 and 100 from the configs (999999 is outside the vocabulary), <|im_end|> = 2 and
    // <|endoftext|> = 0 as end-of-turn markers; "<|eot_id|>" etc. would be several byte
    // tokens here, so they do not count.
    assert_eq!(tok.eos_token_ids().iter().copied().collect::<Vec<_>>(), vec![0, 2, 100]);
    assert!(tok.is_eos(100) && !tok.is_eos(1));
}

#[test]
fn eos_from_text_config_and_end_of_turn_presence() {
    let (_d, tok) = load(&[
        ("tokenizer.json", sp_tokenizer_json(true)),
        ("config.json", json!({"text_config": {"eos_token_id": [2]}})),
    ]);
    assert_eq!(tok.eos_token_ids().iter().copied().collect::<Vec<_>>(), vec![2, SP_END_OF_TURN]);

    // `<end_of_turn>` as an ordinary piece encodes to several ids: not an end-of-turn token.
    let (_d, tok) = load(&[("tokenizer.json", sp_tokenizer_json(false)), ("config.json", json!({"eos_token_id": 2}))]);
    assert_eq!(tok.eos_token_ids().iter().copied().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn gpt_oss_replaces_the_end_of_turn_list() {
    // gpt-oss ends turns with <|return|> / <|call|>: <|im_end|> and <|endoftext|> are not added.
    let (_d, tok) = load(&[
        ("tokenizer.json", bl_tokenizer_json()),
        ("config.json", json!({"model_type": "gpt_oss", "eos_token_id": 1})),
    ]);
    assert_eq!(tok.eos_token_ids().iter().copied().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn no_eos_at_all_is_an_error_naming_the_folder() {
    let dir = folder(&[("tokenizer.json", sp_tokenizer_json(false))]);
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()) && err.contains("no end-of-sequence token"), "{err}");
}

// --- chat templates ---------------------------------------------------------------------------

const CHATML: &str = "{%- for message in messages %}\n\
{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}\n\
{%- endfor %}\n\
{%- if add_generation_prompt %}\n\
{{- '<|im_start|>assistant\\n' }}\n\
{%- endif %}\n";

/// Gemma-style: BOS, the system prompt folded into the first user turn, `model` as the
/// assistant role, alternation enforced with raise_exception; written without `-` markers
/// so trim_blocks / lstrip_blocks do the whitespace work.
const GEMMA_LIKE: &str = "{{ bos_token }}
{%- if messages[0].role == 'system' %}
  {% set prefix = messages[0].content + '\\n\\n' %}
  {% set rest = messages[1:] %}
{% else %}
  {% set prefix = '' %}
  {% set rest = messages %}
{% endif %}
{% for m in rest %}
  {% if (m.role == 'user') != (loop.index0 % 2 == 0) %}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {% endif %}
  {% set role = 'model' if m.role == 'assistant' else m.role %}
<start_of_turn>{{ role }}
{{ (prefix if loop.first else '') + m.content | trim }}<end_of_turn>
{% endfor %}
{% if add_generation_prompt %}
<start_of_turn>model
{% endif %}
";

#[test]
fn chatml_template_with_and_without_generation_prompt() {
    let (_d, tok) = load(&[
        ("tokenizer.json", bl_tokenizer_json()),
        ("config.json", json!({"eos_token_id": 2})),
        ("tokenizer_config.json", json!({"chat_template": CHATML, "eos_token": "<|im_end|>"})),
    ]);
    let m = msgs(&[("system", "You are terse."), ("user", " Hi! ")]);
    let base = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n";
    let none = Map::new();
    assert_eq!(tok.apply_chat_template(&m, true, &none, None).unwrap(), format!("{base}<|im_start|>assistant\n"));
    assert_eq!(tok.apply_chat_template(&m, false, &none, None).unwrap(), base);
    // The rendered prompt holds the special tokens as single ids.
    let ids = tok.encode(base, false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
}

#[test]
fn gemma_style_template_uses_bos_and_alternation() {
    let dir = folder(&[
        ("tokenizer.json", sp_tokenizer_json(true)),
        ("tokenizer_config.json", json!({"bos_token": "<s>", "eos_token": "</s>"})),
    ]);
    std::fs::write(dir.path().join("chat_template.jinja"), GEMMA_LIKE).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let m = msgs(&[("system", "Be brief."), ("user", " Hi "), ("assistant", "Hello!"), ("user", "Bye")]);
    let base = "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
                <start_of_turn>user\nBye<end_of_turn>\n";
    let none = Map::new();
    assert_eq!(tok.apply_chat_template(&m, true, &none, None).unwrap(), format!("{base}<start_of_turn>model\n"));
    assert_eq!(tok.apply_chat_template(&m, false, &none, None).unwrap(), base);

    let err = tok.apply_chat_template(&msgs(&[("user", "a"), ("user", "b")]), true, &none, None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("raised an exception: Conversation roles must alternate user/assistant/user/assistant/..."),
        "{text}"
    );
    assert!(text.contains("chat_template.jinja"), "{text}");
}

#[test]
fn python_methods_tojson_extra_args_and_strftime() {
    let (_d, tok) = byte_level();
    let template = ChatTemplate::new(
        "test.jinja",
        "{{ messages[0].content.strip().upper() }}|{{ messages[0].content.startswith(' a') }}|\
         {{ messages[1].content.split(',') | join('+') }}|{{ 'x-y'.replace('-', '_') }}|\
         {{ messages[1].content.endswith('c') }}|{{ tools | tojson }}|{% if not enable_thinking %}no-think{% endif %}|\
         {{ {'b': 1, 'a': [1, 'x']} | tojson(indent=2) }}|{{ '\"q\"\\n' | tojson }}|{{ strftime_now('%Y') }}",
    );
    let mut extra = Map::new();
    extra.insert("tools".into(), json!([{"name": "f", "parameters": {"a<b": 1, "list": [1, 2.5, true, null]}}]));
    extra.insert("enable_thinking".into(), json!(false));
    let out = tok
        .apply_chat_template(&msgs(&[("user", " abc "), ("user", "a,b,c")]), false, &extra, Some(&template))
        .unwrap();
    let parts: Vec<&str> = out.split('|').collect();
    assert_eq!(parts[0], "ABC");
    assert_eq!(parts[1], "True"); // printed like Python
    assert_eq!(parts[2], "a+b+c");
    assert_eq!(parts[3], "x_y");
    assert_eq!(parts[4], "True");
    assert_eq!(parts[5], r#"[{"name": "f", "parameters": {"a<b": 1, "list": [1, 2.5, true, null]}}]"#);
    assert_eq!(parts[6], "no-think");
    assert_eq!(parts[7], "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"x\"\n  ]\n}");
    assert_eq!(parts[8], r#""\"q\"\n""#);
    let year: i32 = parts[9].parse().expect("a year");
    assert!(year >= 2024, "{year}");
}

#[test]
fn template_sources_and_precedence() {
    let cfg = json!({"chat_template": [
        {"name": "default", "template": "D{{ messages | length }}"},
        {"name": "tool_use", "template": "T"}], "eos_token": "<|im_end|>"});
    let (dir, tok) = load(&[("tokenizer.json", bl_tokenizer_json()), ("tokenizer_config.json", cfg)]);
    let none = Map::new();
    let one = msgs(&[("user", "x")]);
    assert_eq!(tok.apply_chat_template(&one, true, &none, None).unwrap(), "D1");
    let tool = tok.named_chat_templates().get("tool_use").expect("named template");
    assert_eq!(tok.apply_chat_template(&one, true, &none, Some(tool)).unwrap(), "T");

    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(dir.path().join("chat_template.jinja"), "J{{ bos_token }}").unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.apply_chat_template(&one, true, &none, None).unwrap(), "J");

    // An override file, raw or as chat_template.json.
    let file = dir.path().join("override.json");
    std::fs::write(&file, r#"{"chat_template": "O{{ eos_token }}"}"#).unwrap();
    let t = ChatTemplate::from_file(&file).unwrap();
    assert_eq!(tok.apply_chat_template(&one, true, &none, Some(&t)).unwrap(), "O<|im_end|>");

    // Named templates but no default.
    let cfg = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
    let (_d, tok) = load(&[("tokenizer.json", bl_tokenizer_json()), ("tokenizer_config.json", cfg)]);
    let err = tok.apply_chat_template(&one, true, &none, None).unwrap_err().to_string();
    assert!(err.contains("tool_use") && err.contains("--chat-template"), "{err}");
}

#[test]
fn no_template_and_bad_template_errors() {
    let (dir, tok) = byte_level();
    let none = Map::new();
    let err = tok.apply_chat_template(&msgs(&[("user", "x")]), true, &none, None).unwrap_err().to_string();
    assert!(err.contains("has no chat template") && err.contains(&dir.path().display().to_string()), "{err}");

    let bad = ChatTemplate::new("bad.jinja", "{% for %}");
    let err = tok.apply_chat_template(&[], true, &none, Some(&bad)).unwrap_err().to_string();
    assert!(err.contains("bad.jinja") && err.contains("cannot compile"), "{err}");
}

// --- streaming detokenizer --------------------------------------------------------------------

fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> Vec<String> {
    let mut d = StreamingDetokenizer::new(tok.clone(), skip);
    let mut out: Vec<String> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    out.push(d.finish().unwrap());
    out
}

#[test]
fn detokenizer_never_splits_a_character() {
    let (_d, tok) = byte_level();
    let mut ids = vec![BL_HELLO];
    ids.extend("😀".bytes().map(bl_byte));
    ids.push(BL_SPACE_WORLD);
    let out = stream(&tok, &ids, false);
    assert_eq!(out, vec!["hello", "", "", "", "😀", " world", ""]);
    assert!(out.iter().all(|s| !s.contains('\u{FFFD}')));
    assert_eq!(out.concat(), tok.decode(&ids, false).unwrap());
}

#[test]
fn detokenizer_sentencepiece_spaces_and_byte_fallback() {
    let (_d, tok) = sentencepiece();
    let ids = tok.encode("hello world! hello😀 world", false).unwrap();
    let out = stream(&tok, &ids, false);
    assert_eq!(out.concat(), "hello world! hello😀 world");
    assert_eq!(out[..3], ["hello", " world", "!"]);
    assert!(out.iter().all(|s| !s.contains('\u{FFFD}')));
    // A lone `▁` first shows only with what follows it, as in a full decode.
    let out = stream(&tok, &[SP_SPACE, SP_HELLO_], false);
    assert_eq!(out.concat(), tok.decode(&[SP_SPACE, SP_HELLO_], false).unwrap());
}

#[test]
fn detokenizer_finish_flushes_and_special_tokens_are_skipped() {
    let (_d, tok) = byte_level();
    let mut d = StreamingDetokenizer::new(tok.clone(), true);
    assert_eq!(d.push(1).unwrap(), ""); // <|im_start|>, skipped
    assert_eq!(d.push(BL_HELLO).unwrap(), "hello");
    // Half an emoji, then the stream ends: the bytes are not lost.
    assert_eq!(d.push(bl_byte(0xF0)).unwrap(), "");
    assert_eq!(d.push(bl_byte(0x9F)).unwrap(), "");
    assert!(d.has_pending());
    assert_eq!(d.finish().unwrap(), "\u{FFFD}");
    assert!(!d.has_pending());
    assert_eq!(d.finish().unwrap(), "");

    // Invalid bytes are not held forever.
    let mut d = StreamingDetokenizer::new(tok, false);
    let mut got = String::new();
    for _ in 0..10 {
        got.push_str(&d.push(bl_byte(0xFF)).unwrap());
    }
    got.push_str(&d.push(BL_HELLO).unwrap());
    got.push_str(&d.finish().unwrap());
    assert_eq!(got, format!("{}hello", "\u{FFFD}".repeat(10)));
}
