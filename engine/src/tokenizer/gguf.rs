//! Building a tokenizer from GGUF metadata, so a single-file GGUF model needs no
//! `tokenizer.json`.
//!
//! Supported `tokenizer.ggml.model` values:
//! - `gpt2`: byte-level BPE from `tokens` + `merges`. The pre-tokenizer regex is chosen by
//!   `tokenizer.ggml.pre` (the name llama.cpp's converter gives each known tokenizer family):
//!   `gpt2` (GPT-2's regex), `smollm` / `starcoder` / `refact` (every digit split off, then
//!   GPT-2's regex), `llama-bpe` / `llama3` (Llama 3's regex, up to 3 digits per piece, and
//!   whole-word vocabulary hits skip merging), `qwen2` (Llama 3's regex with single digits).
//!   Unknown names fall back to GPT-2's regex with a warning.
//! - `llama`: SentencePiece-style BPE from `tokens` + `scores` (merges are derived from the
//!   scores: a pair merges earlier when the piece it forms scores higher), with byte fallback
//!   through `<0xNN>` tokens and `▁` for spaces (`tokenizer.ggml.add_space_prefix`, default
//!   true, prepends one).
//!
//! `token_type` control tokens become special added tokens (matched whole, skippable when
//! decoding); user-defined tokens become plain added tokens. `add_bos_token` defaults to false
//! for `gpt2` and true for `llama`, as llama.cpp assumes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};

use super::files::{tok_err, ChatTemplate, Templates};
use super::Parts;
use crate::api::io::MetaValue;
use crate::error::Result;

/// GGUF `token_type` values.
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Typed access to the metadata list, with errors naming the file and key.
struct Meta<'a> {
    entries: &'a [(String, MetaValue)],
    source: &'a Path,
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn err(&self, key: &str, what: &str) -> crate::Error {
        tok_err(self.source, format!("GGUF metadata `{key}`: {what}"))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None | Some(MetaValue::Empty) => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<&'a [String]>> {
        match self.get(key) {
            None | Some(MetaValue::Empty) => Ok(None),
            Some(MetaValue::Strings(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "expected a list of strings")),
        }
    }

    /// Integers (or booleans) of any width; scalars come back as one element.
    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let a = match self.get(key) {
            None | Some(MetaValue::Empty) => return Ok(None),
            Some(MetaValue::Array(a)) => a,
            Some(_) => return Err(self.err(key, "expected a number or an array of numbers")),
        };
        if a.dtype().is_float() {
            return Err(self.err(key, &format!("expected integers, found {}", a.dtype())));
        }
        // Converted on the host: some backends (MLX's CUDA) have no 64-bit device ops.
        Ok(Some(a.to_f64_host()?.into_iter().map(|v| v as i64).collect()))
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        match self.get(key) {
            None | Some(MetaValue::Empty) => Ok(None),
            Some(MetaValue::Array(a)) => Ok(Some(a.to_f64_host()?.into_iter().map(|v| v as f32).collect())),
            Some(_) => Err(self.err(key, "expected an array of numbers")),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.ints(key)? {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(self.err(key, &format!("expected one number, found {}", v.len()))),
        }
    }

    fn id(&self, key: &str) -> Result<Option<u32>> {
        match self.int(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| self.err(key, &format!("{n} is not a token id"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        Ok(self.int(key)?.map(|n| n != 0))
    }
}

/// Deserializes a pipeline component from its `tokenizer.json` form.
fn component<T: serde::de::DeserializeOwned>(source: &Path, what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| tok_err(source, format!("building the {what}: {e}")))
}

pub(super) fn build(source: &Path, entries: &[(String, MetaValue)]) -> Result<Parts> {
    let meta = Meta { entries, source };
    let model = meta
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| meta.err("tokenizer.ggml.model", "missing: the file has no tokenizer"))?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| meta.err("tokenizer.ggml.tokens", "missing"))?;
    let types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(
            meta.err("tokenizer.ggml.token_type", &format!("has {} entries for {} tokens", types.len(), tokens.len()))
        );
    }
    let mut vocab = Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        // Keep the first id of a duplicated spelling so ids stay stable.
        vocab.entry(t.clone()).or_insert(id as u32);
    }

    let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?;
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let bos_id = meta.id("tokenizer.ggml.bos_token_id")?;
    let eos_id = meta.id("tokenizer.ggml.eos_token_id")?;

    let (mut tok, add_bos_default) = match model {
        "gpt2" => (byte_level(&meta, vocab)?, false),
        "llama" => (sentencepiece(&meta, vocab, tokens, &types)?, true),
        other => {
            return Err(meta.err("tokenizer.ggml.model", &format!("`{other}` is not supported (gpt2 and llama are)")))
        }
    };

    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED)
        .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TYPE_CONTROL).normalized(false))
        .collect();
    let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    tok.add_special_tokens(special).map_err(|e| tok_err(source, format!("adding control tokens: {e}")))?;
    tok.add_tokens(plain).map_err(|e| tok_err(source, format!("adding user-defined tokens: {e}")))?;

    let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    let bos_token = name_of(bos_id);
    let eos_token = name_of(eos_id);
    let add_bos_effective = add_bos.unwrap_or(add_bos_default);
    let bos_added = bos_token.as_deref().zip(bos_id).filter(|_| add_bos_effective);
    let eos_added = eos_token.as_deref().zip(eos_id).filter(|_| add_eos);
    if let Some(pp) = post_processor(bos_added, eos_added) {
        tok.with_post_processor(Some(component::<PostProcessorWrapper>(source, "post-processor", pp)?));
    }

    let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        eos_ids.extend(meta.id(key)?);
    }

    let mut templates = Templates::default();
    if let Some(t) = meta.string("tokenizer.chat_template")? {
        templates.default = Some(ChatTemplate::new(source, t));
    }
    let mut named = BTreeMap::new();
    for (k, v) in entries {
        if let (Some(name), MetaValue::String(t)) = (k.strip_prefix("tokenizer.chat_template."), v) {
            named.insert(name.to_string(), ChatTemplate::new(source, t.clone()));
        }
    }
    templates.named = named;

    Ok(Parts {
        tok,
        source: source.to_path_buf(),
        bos_token,
        eos_token,
        bos_id,
        eos_ids,
        add_bos_token: add_bos,
        templates,
        model_type: meta.string("general.architecture")?.map(str::to_string),
    })
}

/// A `TemplateProcessing` that puts `bos` before and `eos` after the text (and around the second
/// text of a pair), or None when neither is added.
fn post_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Option<Value> {
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let mut specials = serde_json::Map::new();
    for (t, id) in bos.iter().chain(eos.iter()) {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    let part = |type_id: u32, seq: &str| {
        let mut v = Vec::new();
        if let Some((t, _)) = bos {
            v.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        if let Some((t, _)) = eos {
            v.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        v
    };
    let single = part(0, "A");
    let pair: Vec<Value> = part(0, "A").into_iter().chain(part(1, "B")).collect();
    Some(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
}

fn byte_level(meta: &Meta<'_>, vocab: Vocab) -> Result<tokenizers::Tokenizer> {
    let source = meta.source;
    let merges_raw = meta
        .strings("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.err("tokenizer.ggml.merges", "missing (needed by the gpt2 tokenizer model)"))?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            meta.err("tokenizer.ggml.merges", &format!("entry {i} `{m}` is not two tokens separated by a space"))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let (pre_tokenizer, ignore_merges) = match pre {
        "gpt2" | "default" => (byte_level(true), false),
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" => {
            (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}), true)
        }
        "qwen2" => (json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}), false),
        other => {
            crate::diagnostics::warn_once(format!(
                "{}: GGUF pre-tokenizer `{other}` is not known; using GPT-2's regex (token ids may differ from the original tokenizer)",
                source.display()
            ));
            (byte_level(true), false)
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tok_err(source, format!("building the BPE model from GGUF tokens and merges: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(component::<PreTokenizerWrapper>(source, "pre-tokenizer", pre_tokenizer)?));
    tok.with_decoder(Some(component::<DecoderWrapper>(source, "decoder", byte_level(true))?));
    Ok(tok)
}

fn sentencepiece(meta: &Meta<'_>, vocab: Vocab, tokens: &[String], types: &[i64]) -> Result<tokenizers::Tokenizer> {
    let source = meta.source;
    let scores = meta
        .floats("tokenizer.ggml.scores")?
        .ok_or_else(|| meta.err("tokenizer.ggml.scores", "missing (needed by the llama tokenizer model)"))?;
    if scores.len() != tokens.len() {
        return Err(
            meta.err("tokenizer.ggml.scores", &format!("has {} entries for {} tokens", scores.len(), tokens.len()))
        );
    }
    let merges = merges_from_scores(tokens, types, &scores, &vocab);
    let unk = tokens.iter().zip(types).find(|(_, &ty)| ty == TYPE_UNKNOWN).map(|(t, _)| t.clone());
    let byte_fallback = types.contains(&TYPE_BYTE);
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(byte_fallback).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| tok_err(source, format!("building the BPE model from GGUF tokens and scores: {e}")))?;

    let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace_space]})
    } else {
        replace_space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_normalizer(Some(component::<NormalizerWrapper>(source, "normalizer", normalizer)?))
        .map_err(|e| tok_err(source, format!("setting the normalizer: {e}")))?;
    let decoder = json!({"type": "Sequence", "decoders": decoders});
    tok.with_decoder(Some(component::<DecoderWrapper>(source, "decoder", decoder)?));
    Ok(tok)
}

/// SentencePiece BPE merges the adjacent pair whose joined piece has the highest score. As
/// ranked merges: every split of a normal piece into two vocabulary pieces is a merge, ordered
/// by the joined piece's score (higher first), then by ids for a stable order.
fn merges_from_scores(tokens: &[String], types: &[i64], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mergeable = |id: u32| matches!(types.get(id as usize), Some(&TYPE_NORMAL) | Some(&TYPE_USER_DEFINED));
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    let lookup: HashMap<&str, u32> = vocab.iter().map(|(k, &v)| (k.as_str(), v)).collect();
    for (id, piece) in tokens.iter().enumerate() {
        let id = id as u32;
        if !mergeable(id) || lookup.get(piece.as_str()) != Some(&id) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (lookup.get(l), lookup.get(r)) {
                if mergeable(li) && mergeable(ri) {
                    ranked.push((scores[id as usize], id, li, ri));
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    ranked.into_iter().map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect()
}
