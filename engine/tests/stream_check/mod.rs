//! The streaming text path of `generate` (ids -> `StreamingDetokenizer` -> `StopStrings`,
//! drained at the end) run over a whole id sequence and checked against a one-shot decode.
//! Shared by the proptest properties (`stream_props.rs`) and the cargo-fuzz target
//! (`fuzz/fuzz_targets/detokenizer_stop.rs`), so both hold the pipeline to the same rules.
#![allow(dead_code)]

use mlx_engine::stop::{StopHit, StopStrings};
use mlx_engine::tokenizer::{StreamingDetokenizer, Tokenizer};
use serde_json::{json, Value};

use crate::tokenizer_fixtures::{self as fx, byte_char};

/// Byte strings added to the byte-level fixture's vocabulary (no merges produce them; a model
/// can still sample them). Several end or start inside a character, so the stream sees
/// characters split across tokens in every way, and tokens that mix ASCII with a partial
/// character.
pub const BL_EXTRA: [&[u8]; 16] = [
    "€".as_bytes(),
    &[0xE2, 0x82],
    &[0x82, 0xAC],
    "é".as_bytes(),
    &[b'a', 0xE2],
    &[0xAC, b'b'],
    "😀".as_bytes(),
    &[0xF0, 0x9F],
    &[0x98, 0x80],
    &[0x9F, 0x98],
    "日本".as_bytes(),
    &[0xE6, 0x97],
    &[0xA5, 0xE6],
    b" STOP",
    b"<|",
    b"|>",
];

/// Pieces added to the SentencePiece fixture (after its `<end_of_turn>`).
pub const SP_EXTRA: [&str; 7] = ["€", "é", "日本", "▁the", "STOP", "▁STOP", "|>"];

/// A fixture tokenizer and what the checks need to know about it.
pub struct Fixture {
    pub tok: Tokenizer,
    /// SentencePiece's byte fallback decodes a run of byte tokens as one unit (all of it U+FFFD
    /// when the run is not valid UTF-8), so an invalid run can change text a stream already
    /// showed: exactness is only claimed for streams whose full decode is valid there.
    pub byte_runs: bool,
    /// An id that decodes to plain ASCII, to tell which ids add no text.
    anchor: u32,
}

fn load(tokenizer_json: Value, byte_runs: bool) -> Fixture {
    let dir = fx::folder(&[("tokenizer.json", tokenizer_json)]);
    let tok = Tokenizer::from_dir(dir.path()).expect("fixture tokenizer loads");
    let anchor = tok.token_to_id("h").expect("`h` is in the fixture");
    // The tokenizer is in memory now; the folder goes.
    Fixture { tok, byte_runs, anchor }
}

fn add_vocab(mut v: Value, first_id: usize, tokens: impl IntoIterator<Item = String>) -> Value {
    let vocab = v["model"]["vocab"].as_object_mut().expect("fixture has a vocab");
    for (i, t) in tokens.into_iter().enumerate() {
        vocab.insert(t, json!(first_id + i));
    }
    v
}

/// The byte-level (GPT-2 / SmolLM2 style) fixture plus [`BL_EXTRA`].
pub fn byte_level() -> Fixture {
    let base = fx::bl_tokens().len();
    let extra = BL_EXTRA.iter().map(|b| b.iter().map(|&x| byte_char(x)).collect::<String>());
    load(add_vocab(fx::bl_tokenizer_json(), base, extra), false)
}

/// The SentencePiece-style (Llama / Gemma style) fixture plus [`SP_EXTRA`].
pub fn sentencepiece() -> Fixture {
    let base = fx::sp_tokens().len();
    load(add_vocab(fx::sp_tokenizer_json(true), base, SP_EXTRA.map(String::from)), true)
}

/// The bytes of every non-special id of the byte-level fixture, for turning text into ids.
pub fn bl_vocab_bytes(f: &Fixture) -> Vec<(Vec<u8>, u32)> {
    let mut inverse = std::collections::HashMap::new();
    for b in 0..=255u8 {
        inverse.insert(byte_char(b), b);
    }
    (fx::BL_SPECIAL.len() as u32..f.tok.vocab_size() as u32)
        .filter_map(|id| {
            let token = f.tok.id_to_token(id)?;
            let bytes: Option<Vec<u8>> = token.chars().map(|c| inverse.get(&c).copied()).collect();
            Some((bytes?, id))
        })
        .collect()
}

/// Splits `text` into byte-level ids, picking among the tokens that match at each position
/// with `pick(number_of_candidates)`, so one text yields many different splits.
pub fn bl_split(vocab: &[(Vec<u8>, u32)], text: &[u8], mut pick: impl FnMut(usize) -> usize) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let candidates: Vec<&(Vec<u8>, u32)> = vocab.iter().filter(|(b, _)| rest.starts_with(b)).collect();
        let (bytes, id) = candidates[pick(candidates.len()) % candidates.len()];
        ids.push(*id);
        at += bytes.len();
    }
    ids
}

/// What the pipeline produced for one id sequence.
#[derive(Debug)]
pub struct Streamed {
    /// The detokenizer's output per id, then what `finish` returned (all of them, also past a
    /// stop, so the detokenizer is checked on its own).
    pub chunks: Vec<String>,
    /// The text a client receives: stop-string output up to the hit, or everything plus the
    /// held-back text when no stop string matched.
    pub text: String,
    pub hit: Option<StopHit>,
}

/// Runs ids through the detokenizer and the stop strings the way `generate` does: each
/// token's text goes to the stop strings, and at the end the detokenizer's last bytes go
/// through them too before the held-back text is released.
pub fn stream(tok: &Tokenizer, ids: &[u32], stops: &[String], skip_special: bool) -> Result<Streamed, String> {
    let mut detok = StreamingDetokenizer::new(tok.clone(), skip_special);
    let mut matcher = StopStrings::new(stops.to_vec()).map_err(|e| e.to_string())?;
    let (mut chunks, mut text, mut hit) = (Vec::new(), String::new(), None);
    let mut feed = |chunk: &str, hit: &mut Option<StopHit>, text: &mut String| {
        if hit.is_none() {
            let out = matcher.push(chunk);
            text.push_str(&out.text);
            *hit = out.hit;
        }
    };
    for &id in ids {
        let chunk = detok.push(id).map_err(|e| e.to_string())?;
        feed(&chunk, &mut hit, &mut text);
        chunks.push(chunk);
    }
    let last = detok.finish().map_err(|e| e.to_string())?;
    feed(&last, &mut hit, &mut text);
    chunks.push(last);
    if hit.is_none() {
        text.push_str(&matcher.flush());
    }
    Ok(Streamed { chunks, text, hit })
}

/// Ids past this many in a row that add no text (skipped special tokens, ids outside the
/// vocabulary) may be dropped by the detokenizer, which bounds its window; a character split
/// around such a run can then come out as U+FFFD.
pub const SILENT_RUN: usize = 48;

fn silent_run(f: &Fixture, ids: &[u32], skip_special: bool) -> Result<usize, String> {
    let base = f.tok.decode(&[f.anchor], skip_special).map_err(|e| e.to_string())?;
    let (mut longest, mut run) = (0, 0);
    for &id in ids {
        let with = f.tok.decode(&[f.anchor, id], skip_special).map_err(|e| e.to_string())?;
        run = if with == base { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    Ok(longest)
}

/// No stop string contains another (nor repeats one): then where a stream stops does not
/// depend on how its text was chunked.
pub fn substring_free(stops: &[String]) -> bool {
    stops.iter().enumerate().all(|(i, a)| stops.iter().enumerate().all(|(j, b)| i == j || !a.contains(b.as_str())))
}

/// Checks one id sequence; `Err` says which rule broke.
///
/// Always: a hit's discarded text starts with its stop string, the client's text holds no stop
/// string, and client text plus discarded text is what the detokenizer emitted.
/// Where the stream can match a one-shot decode (see [`Fixture::byte_runs`], [`SILENT_RUN`]):
/// after every id the emitted text is a prefix of the full decode (nothing shown is ever
/// wrong, so no U+FFFD stands for a character still arriving), all of it equals the full
/// decode (nothing lost, held text flushed), and the client's text ends right before the
/// first stop string of the full decode.
pub fn check(f: &Fixture, ids: &[u32], stops: &[String], skip_special: bool) -> Result<(), String> {
    let s = stream(&f.tok, ids, stops, skip_special)?;
    let emitted = s.chunks.concat();
    let ctx = || format!("ids {ids:?}, stops {stops:?}, skip {skip_special}, chunks {:?}", s.chunks);
    match &s.hit {
        Some(h) => {
            if !h.discarded.starts_with(&h.stop_string) || stops.get(h.index) != Some(&h.stop_string) {
                return Err(format!("hit {h:?} does not match the stop list; {}", ctx()));
            }
            if !emitted.starts_with(&format!("{}{}", s.text, h.discarded)) {
                return Err(format!(
                    "text {:?} + discarded {:?} is not what was emitted; {}",
                    s.text,
                    h.discarded,
                    ctx()
                ));
            }
        }
        None if s.text != emitted => {
            return Err(format!("no stop, but the text {:?} is not all that was emitted; {}", s.text, ctx()));
        }
        None => {}
    }
    if let Some(st) = stops.iter().find(|st| s.text.contains(st.as_str())) {
        return Err(format!("text {:?} holds stop string {st:?}; {}", s.text, ctx()));
    }

    let full = f.tok.decode(ids, skip_special).map_err(|e| e.to_string())?;
    if (f.byte_runs && full.contains('\u{FFFD}')) || silent_run(f, ids, skip_special)? >= SILENT_RUN {
        return Ok(());
    }
    let mut so_far = String::new();
    for (i, c) in s.chunks.iter().enumerate() {
        so_far.push_str(c);
        if !full.starts_with(&so_far) {
            return Err(format!("after id #{i} the stream shows {so_far:?}, not a prefix of {full:?}; {}", ctx()));
        }
    }
    if so_far != full {
        return Err(format!("the stream lost text: {so_far:?} vs the full decode {full:?}; {}", ctx()));
    }
    let first = stops.iter().enumerate().filter_map(|(i, st)| full.find(st.as_str()).map(|p| (p, i))).min();
    match (first, &s.hit) {
        (None, None) => Ok(()),
        (None, Some(h)) => Err(format!("hit {h:?} but no stop string is in {full:?}; {}", ctx())),
        (Some((p, i)), _) if substring_free(stops) => {
            if s.text != full[..p] || s.hit.as_ref().map(|h| h.index) != Some(i) {
                return Err(format!(
                    "stop {:?} at byte {p} of {full:?}, but the stream gave {:?} / {:?}; {}",
                    stops[i],
                    s.text,
                    s.hit,
                    ctx()
                ));
            }
            Ok(())
        }
        (Some(_), None) => Err(format!("a stop string is in {full:?} but none was hit; {}", ctx())),
        (Some(_), Some(_)) => Ok(()),
    }
}
