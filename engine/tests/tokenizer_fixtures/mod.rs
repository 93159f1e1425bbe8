//! Small tokenizers written by the tests themselves: a byte-level BPE (GPT-2 / SmolLM2 style)
//! and a SentencePiece-style BPE with `▁` and `<0xNN>` byte fallback (Llama / Gemma style),
//! each as a `tokenizer.json` and as the GGUF metadata that describes the same vocabulary.
#![allow(dead_code)]

use std::path::Path;

use mlx_engine::api::io::MetaValue;
use mlx_engine::api::Array;
use serde_json::{json, Value};

/// GGUF token types.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const BYTE: i32 = 6;

/// GPT-2's reversible byte -> printable char table: printable Latin-1 bytes map to
/// themselves, the rest to U+0100 onwards in byte order.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let offset = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + offset).expect("valid char")
}

// --- byte-level BPE ---------------------------------------------------------------------------

/// Ids: 0..=2 special, 3..=258 the 256 byte chars (id = 3 + byte), then one id per merge.
pub const BL_SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const BL_MERGES: [(&str, &str); 9] = [
    ("h", "e"),     // 259 he
    ("l", "l"),     // 260 ll
    ("he", "ll"),   // 261 hell
    ("hell", "o"),  // 262 hello
    ("Ġ", "w"),     // 263 Ġw
    ("o", "r"),     // 264 or
    ("Ġw", "or"),   // 265 Ġwor
    ("Ġwor", "l"),  // 266 Ġworl
    ("Ġworl", "d"), // 267 Ġworld
];
pub const BL_HELLO: u32 = 262;
pub const BL_SPACE_WORLD: u32 = 267;

pub fn bl_byte(b: u8) -> u32 {
    3 + b as u32
}

/// Every token of the byte-level fixture, in id order.
pub fn bl_tokens() -> Vec<String> {
    let mut t: Vec<String> = BL_SPECIAL.iter().map(|s| s.to_string()).collect();
    t.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    t.extend(BL_MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    t
}

fn vocab_json(tokens: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        m.insert(t.clone(), json!(i));
    }
    Value::Object(m)
}

fn added(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// The byte-level fixture as `tokenizer.json` (SmolLM2's pipeline: digits split, then GPT-2's
/// byte-level regex; no BOS).
pub fn bl_tokenizer_json() -> Value {
    let tokens = bl_tokens();
    json!({
        "version": "1.0",
        "added_tokens": BL_SPECIAL.iter().enumerate().map(|(i, s)| added(i, s)).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab_json(&tokens),
                  "merges": BL_MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    })
}

/// The byte-level fixture as GGUF metadata.
pub fn bl_gguf_meta(pre: &str) -> Vec<(String, MetaValue)> {
    let tokens = bl_tokens();
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i < BL_SPECIAL.len() { CONTROL } else { NORMAL }).collect();
    vec![
        ("tokenizer.ggml.model".into(), MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Strings(tokens)),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(ints(&types))),
        (
            "tokenizer.ggml.merges".into(),
            MetaValue::Strings(BL_MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::Array(scalar_u32(1))),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::Array(scalar_u32(2))),
        ("tokenizer.ggml.add_bos_token".into(), MetaValue::Array(scalar_bool(false))),
    ]
}

// --- SentencePiece-style BPE ------------------------------------------------------------------

/// Ids: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..=258 `<0x00>`..`<0xFF>` (id = 3 + byte), then the
/// pieces below with their scores, then `<end_of_turn>` (control).
pub const SP_PIECES: [(&str, f32); 19] = [
    ("▁", -100.0),     // 259
    ("h", -100.0),     // 260
    ("e", -100.0),     // 261
    ("l", -100.0),     // 262
    ("o", -100.0),     // 263
    ("w", -100.0),     // 264
    ("r", -100.0),     // 265
    ("d", -100.0),     // 266
    ("!", -100.0),     // 267
    ("ll", -1.0),      // 268
    ("he", -2.0),      // 269
    ("▁w", -3.0),      // 270
    ("or", -4.0),      // 271
    ("hell", -5.0),    // 272
    ("hello", -6.0),   // 273
    ("▁hello", -7.0),  // 274
    ("▁wor", -8.0),    // 275
    ("ld", -9.0),      // 276
    ("▁world", -10.0), // 277
];
pub const SP_END_OF_TURN: u32 = 278;
pub const SP_HELLO_: u32 = 274;
pub const SP_WORLD_: u32 = 277;
pub const SP_HELLO: u32 = 273;
pub const SP_SPACE: u32 = 259;
pub const SP_BANG: u32 = 267;

/// The merges a SentencePiece BPE with these scores performs, best first.
pub const SP_MERGES: [(&str, &str); 10] = [
    ("l", "l"),
    ("h", "e"),
    ("▁", "w"),
    ("o", "r"),
    ("he", "ll"),
    ("hell", "o"),
    ("▁", "hello"),
    ("▁w", "or"),
    ("l", "d"),
    ("▁wor", "ld"),
];

pub fn sp_byte(b: u8) -> u32 {
    3 + b as u32
}

pub fn sp_tokens() -> Vec<String> {
    let mut t: Vec<String> = ["<unk>", "<s>", "</s>"].iter().map(|s| s.to_string()).collect();
    t.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    t.extend(SP_PIECES.iter().map(|(p, _)| p.to_string()));
    t.push("<end_of_turn>".into());
    t
}

/// The SentencePiece fixture as `tokenizer.json` (Llama's pipeline: prepend `▁`, spaces to
/// `▁`, byte fallback, BOS added, leading space stripped when decoding). With
/// `with_end_of_turn` false, `<end_of_turn>` is an ordinary piece rather than a special token.
pub fn sp_tokenizer_json(with_end_of_turn: bool) -> Value {
    let tokens = sp_tokens();
    let mut added_tokens = vec![added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")];
    if with_end_of_turn {
        added_tokens.push(added(SP_END_OF_TURN as usize, "<end_of_turn>"));
    }
    json!({
        "version": "1.0",
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_json(&tokens),
                  "merges": SP_MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    })
}

/// The SentencePiece fixture as GGUF metadata (`tokenizer.ggml.model = "llama"`).
pub fn sp_gguf_meta() -> Vec<(String, MetaValue)> {
    let tokens = sp_tokens();
    let mut scores = vec![0.0f32; 3];
    scores.extend(std::iter::repeat_n(0.0, 256));
    scores.extend(SP_PIECES.iter().map(|(_, s)| *s));
    scores.push(0.0);
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    types.extend(std::iter::repeat_n(BYTE, 256));
    types.extend(std::iter::repeat_n(NORMAL, SP_PIECES.len()));
    types.push(CONTROL);
    vec![
        ("tokenizer.ggml.model".into(), MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Strings(tokens)),
        (
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(Array::from_slice(&scores, &[scores.len() as i32]).expect("array")),
        ),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(ints(&types))),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::Array(scalar_u32(1))),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::Array(scalar_u32(2))),
        (
            "tokenizer.chat_template".into(),
            MetaValue::String("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        ),
    ]
}

// --- helpers ----------------------------------------------------------------------------------

pub fn ints(v: &[i32]) -> Array {
    Array::from_slice(v, &[v.len() as i32]).expect("array")
}

/// A GGUF scalar as MLX gives it back: a 0-d array.
pub fn scalar_u32(v: u32) -> Array {
    Array::from_slice(&[v], &[]).expect("array")
}

pub fn scalar_bool(v: bool) -> Array {
    Array::from_slice(&[v], &[]).expect("array")
}

pub fn write_json(dir: &Path, name: &str, v: &Value) {
    std::fs::write(dir.join(name), serde_json::to_vec_pretty(v).expect("json")).expect("write fixture");
}

/// A model folder with the given files.
pub fn folder(files: &[(&str, Value)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, v) in files {
        write_json(dir.path(), name, v);
    }
    dir
}
