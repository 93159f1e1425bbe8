//! Tokenizers built from GGUF metadata: synthetic byte-level (`gpt2`) and SentencePiece
//! (`llama`) vocabularies must encode exactly like the equivalent tokenizer.json, and the real
//! SmolLM2 GGUF exactly like its tokenizer.json (when the model files are present).

mod measured;
mod tokenizer_fixtures;

use std::path::{Path, PathBuf};

use mlx_engine::api::io::MetaValue;
use mlx_engine::tokenizer::{ChatMessage, StreamingDetokenizer, Tokenizer};
use serde_json::Map;
use tokenizer_fixtures::*;

/// Links the engine's MLX backend, which GGUF metadata arrays are read through.
fn init() {
    let _ = mlx_engine::mlx::ffi::ops_table();
}

fn gguf(meta: &[(String, MetaValue)]) -> Tokenizer {
    init();
    Tokenizer::from_gguf(Path::new("test.gguf"), meta).expect("tokenizer from GGUF metadata")
}

fn from_json(v: serde_json::Value, config: serde_json::Value) -> (tempfile::TempDir, Tokenizer) {
    let dir = folder(&[("tokenizer.json", v), ("config.json", config)]);
    let tok = Tokenizer::from_dir(dir.path()).expect("tokenizer.json loads");
    (dir, tok)
}

fn assert_same_encoding(a: &Tokenizer, b: &Tokenizer, texts: &[&str]) {
    for t in texts {
        for special in [false, true] {
            let ia = a.encode(t, special).unwrap();
            let ib = b.encode(t, special).unwrap();
            assert_eq!(ia, ib, "encode({t:?}, add_special_tokens={special})");
            assert_eq!(a.decode(&ia, false).unwrap(), b.decode(&ib, false).unwrap(), "decode of {t:?}");
        }
    }
}

fn set(t: &Tokenizer) -> Vec<u32> {
    t.eos_token_ids().iter().copied().collect()
}

fn replace(meta: &mut Vec<(String, MetaValue)>, key: &str, value: Option<MetaValue>) {
    meta.retain(|(k, _)| k != key);
    if let Some(v) = value {
        meta.push((key.to_string(), v));
    }
}

#[test]
fn gpt2_metadata_matches_tokenizer_json() {
    let tok = gguf(&bl_gguf_meta("smollm"));
    let (_d, reference) = from_json(bl_tokenizer_json(), serde_json::json!({"eos_token_id": 2}));
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![BL_HELLO, BL_SPACE_WORLD]);
    assert_same_encoding(
        &tok,
        &reference,
        &["hello world", "hello 123", "<|im_start|>user\nhi<|im_end|>\n", "😀 héllo", "  spaces  \n\n", "it's 3.14"],
    );
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.add_bos_token(), Some(false));
    // eos_token_id 2 plus the end-of-turn markers <|endoftext|> (0) and <|im_end|> (2).
    assert_eq!(set(&tok), vec![0, 2]);
    assert_eq!(tok.decode(&[1, BL_HELLO], true).unwrap(), "hello");
}

#[test]
fn gpt2_pre_tokenizer_variants_and_bos() {
    for pre in ["gpt2", "llama-bpe", "qwen2", "some-new-model"] {
        let tok = gguf(&bl_gguf_meta(pre));
        assert_eq!(tok.encode("hello world", false).unwrap(), vec![BL_HELLO, BL_SPACE_WORLD], "pre = {pre}");
        assert_eq!(tok.decode(&[BL_HELLO, BL_SPACE_WORLD], false).unwrap(), "hello world");
    }
    let mut meta = bl_gguf_meta("llama-bpe");
    replace(&mut meta, "tokenizer.ggml.add_bos_token", Some(MetaValue::Array(scalar_bool(true))));
    let tok = gguf(&meta);
    assert_eq!(tok.encode("hello", true).unwrap(), vec![1, BL_HELLO]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![BL_HELLO]);
}

#[test]
fn llama_metadata_matches_tokenizer_json() {
    let tok = gguf(&sp_gguf_meta());
    let (_d, reference) = from_json(sp_tokenizer_json(true), serde_json::json!({"eos_token_id": 2}));
    assert_eq!(tok.encode("hello world!", true).unwrap(), vec![1, SP_HELLO_, SP_WORLD_, SP_BANG]);
    assert_same_encoding(
        &tok,
        &reference,
        &["hello world!", "hello😀", " hello  world", "<end_of_turn>hello", "héllo wörld", "", "!!"],
    );
    assert_eq!(tok.add_bos_token(), None);
    assert_eq!(set(&tok), vec![2, SP_END_OF_TURN]);
    let none = Map::new();
    let out = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true, &none, None).unwrap();
    assert_eq!(out, "<s>hi");

    // Streaming over byte-fallback pieces.
    let ids = tok.encode("hello😀 world", false).unwrap();
    let mut d = StreamingDetokenizer::new(tok.clone(), false);
    let chunks: Vec<String> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert_eq!(chunks.concat() + &d.finish().unwrap(), "hello😀 world");
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
}

#[test]
fn gguf_metadata_errors_name_the_key() {
    init();
    let path = Path::new("bad.gguf");
    let err_of = |meta: &[(String, MetaValue)]| Tokenizer::from_gguf(path, meta).unwrap_err().to_string();

    let mut meta = bl_gguf_meta("gpt2");
    replace(&mut meta, "tokenizer.ggml.model", None);
    let e = err_of(&meta);
    assert!(e.contains("bad.gguf") && e.contains("tokenizer.ggml.model"), "{e}");

    replace(&mut meta, "tokenizer.ggml.model", Some(MetaValue::String("bert".into())));
    assert!(err_of(&meta).contains("`bert` is not supported"));

    let mut meta = bl_gguf_meta("gpt2");
    replace(&mut meta, "tokenizer.ggml.merges", None);
    assert!(err_of(&meta).contains("tokenizer.ggml.merges"));

    let mut meta = bl_gguf_meta("gpt2");
    replace(&mut meta, "tokenizer.ggml.token_type", Some(MetaValue::Array(ints(&[1, 1]))));
    let e = err_of(&meta);
    assert!(e.contains("token_type") && e.contains("2 entries"), "{e}");

    let mut meta = bl_gguf_meta("gpt2");
    replace(&mut meta, "tokenizer.ggml.tokens", Some(MetaValue::String("x".into())));
    assert!(err_of(&meta).contains("expected a list of strings"));

    let mut meta = sp_gguf_meta();
    replace(&mut meta, "tokenizer.ggml.scores", None);
    assert!(err_of(&meta).contains("tokenizer.ggml.scores"));
}

// --- the real SmolLM2 files -------------------------------------------------------------------

fn first_gguf(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    files.into_iter().next()
}

#[test]
fn smollm2_gguf_tokenizer_matches_tokenizer_json() {
    let root = measured::models_dir().join("smollm2-135m-instruct");
    let name = "smollm2_gguf_tokenizer_matches_tokenizer_json";
    let gguf = first_gguf(&root.join("gguf")).unwrap_or_else(|| root.join("gguf/*.gguf"));
    if !measured::have_models(name, &[&gguf, &root.join("f32/tokenizer.json")]) {
        return;
    }
    let gguf_path = gguf;
    init();
    let loaded = mlx_engine::api::io::load_gguf(&gguf_path).expect("GGUF loads");
    let from_gguf = Tokenizer::from_gguf(&gguf_path, &loaded.metadata).expect("tokenizer from GGUF");
    let from_json = Tokenizer::from_dir(&root.join("f32")).expect("tokenizer from folder");

    assert_eq!(from_gguf.vocab_size(), from_json.vocab_size());
    let texts = [
        "Hello, world!",
        "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
        "héllo wörld — naïve café 日本語のテキスト 🤖👍🏽",
        "fn main() {\n    println!(\"hi\");\n}\n\n\n",
        "  leading and trailing  ",
        "I'll say it's 3.14159, isn't it? 1,000,000",
    ];
    assert_same_encoding(&from_gguf, &from_json, &texts);
    // Spot checks against ids known from the original SmolLM2 vocabulary.
    assert_eq!(from_gguf.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(from_gguf.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(from_gguf.encode("12", false).unwrap().len(), 2, "digits are split one by one");
    assert_eq!(set(&from_gguf), set(&from_json));
    assert!(from_gguf.is_eos(2) && from_gguf.is_eos(0));

    let expected =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                    <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
    let none = Map::new();
    let m = [ChatMessage::new("user", "Hi there")];
    for tok in [&from_gguf, &from_json] {
        assert_eq!(tok.apply_chat_template(&m, true, &none, None).unwrap(), expected);
    }

    // Streaming decode of a unicode-heavy text gives it back exactly.
    let text = texts[2];
    let ids = from_gguf.encode(text, false).unwrap();
    let mut d = StreamingDetokenizer::new(from_gguf.clone(), false);
    let chunks: Vec<String> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
    assert_eq!(chunks.concat() + &d.finish().unwrap(), text);
}

#[test]
fn gemma3_tokenizer_json_from_folder() {
    let dir = measured::models_dir().join("gemma3-270m/f32");
    if !measured::have_models("gemma3_tokenizer_json_from_folder", &[&dir.join("tokenizer.json")]) {
        return;
    }
    let tok = Tokenizer::from_dir(&dir).expect("gemma3 tokenizer");
    assert_eq!(tok.bos_token_id(), Some(2));
    assert!(tok.is_eos(1), "<eos>");
    let eot = tok.token_to_id("<end_of_turn>").expect("<end_of_turn> in the vocabulary");
    assert!(tok.is_eos(eot), "<end_of_turn> counts as end of turn");
    let ids = tok.encode("Hello world", true).unwrap();
    assert_eq!(ids[0], 2, "BOS added by the post-processor");
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world");

    let text = "Gemma spaces:  two, tabs\tand emoji 🧪 plus 日本語 text";
    let ids = tok.encode(text, false).unwrap();
    let mut d = StreamingDetokenizer::new(tok.clone(), false);
    let chunks: Vec<String> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
    assert_eq!(chunks.concat() + &d.finish().unwrap(), text);
}
