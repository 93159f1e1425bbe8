//! Properties of the streaming text path (detokenizer, then stop strings, drained as
//! `generate` drains them), over random texts split into tokens in random ways and over
//! arbitrary id sequences: no text lost, never a partial character shown, held-back text
//! flushed at the end, and a stop string found however its text is split across tokens.
//! The rules themselves are in `stream_check` (shared with the cargo-fuzz target).
//!
//! The seed is fixed so `make test` is repeatable; `PROPTEST_RNG_SEED=N` (or
//! `PROPTEST_CASES=N`) explores further.

mod stream_check;
mod tokenizer_fixtures;

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use stream_check::{bl_split, bl_vocab_bytes, check, Fixture};

/// Pieces texts are made of: ASCII, multi-byte characters the extra tokens split, the text of
/// special tokens and of stop-string candidates.
const PIECES: [&str; 14] =
    ["a", "b", "h", "hello", " world", " ", "\n", "é", "€", "😀", "日本", "STOP", "<|im_end|>", "|>"];

/// The byte-level fixture and each of its ids' bytes.
type ByteLevel = (Fixture, Vec<(Vec<u8>, u32)>);

fn byte_level() -> &'static ByteLevel {
    static F: OnceLock<ByteLevel> = OnceLock::new();
    F.get_or_init(|| {
        let f = stream_check::byte_level();
        let vocab = bl_vocab_bytes(&f);
        (f, vocab)
    })
}

fn sentencepiece() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(stream_check::sentencepiece)
}

fn config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0016);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases);
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&PIECES[..]), 0..24).prop_map(|p| p.concat())
}

/// Stop strings: runs of the text's own characters (so they do occur) and pieces (which may).
fn stops_for(text: &str, spans: &[(usize, usize)], pieces: &[&str]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut stops: Vec<String> = Vec::new();
    if !chars.is_empty() {
        for &(start, len) in spans {
            let start = start % chars.len();
            stops.push(chars[start..(start + len).min(chars.len())].iter().collect());
        }
    }
    stops.extend(pieces.iter().map(|p| p.to_string()));
    stops.retain(|s| !s.is_empty());
    stops
}

fn split_text(text: &str, picks: &[usize]) -> Vec<u32> {
    let mut picks = picks.iter().cycle();
    bl_split(&byte_level().1, text.as_bytes(), |_| *picks.next().unwrap_or(&0))
}

fn fail(e: String) -> TestCaseError {
    TestCaseError::fail(e)
}

proptest! {
    #![proptest_config(config(192))]

    /// Any text split any way into byte-level tokens streams back exactly, stop strings cut
    /// it before their first occurrence, and an unfinished stop-string prefix is flushed.
    #[test]
    fn split_text_streams_back_exactly(
        text in text(),
        picks in prop::collection::vec(any::<usize>(), 1..16),
        spans in prop::collection::vec((any::<usize>(), 1usize..6), 0..3),
        pieces in prop::collection::vec(prop::sample::select(&PIECES[..]), 0..2),
        skip in any::<bool>(),
    ) {
        let ids = split_text(&text, &picks);
        let stops = stops_for(&text, &spans, &pieces);
        check(&byte_level().0, &ids, &stops, skip).map_err(fail)?;
        check(&byte_level().0, &ids, &[], skip).map_err(fail)?;
    }

    /// Arbitrary ids (invalid UTF-8, special tokens, ids past the vocabulary) in both
    /// tokenizer styles: `check` holds its exact rules wherever a stream can meet them.
    #[test]
    fn arbitrary_ids_keep_the_stream_rules(
        // Half of them raw bytes past ASCII (byte-level ids 3 + byte), so invalid sequences,
        // lead bytes and their continuations meet often.
        raw in prop::collection::vec(prop_oneof![any::<u16>(), (0x80u16..0xF8).prop_map(|b| b + 3)], 0..40),
        spans in prop::collection::vec((any::<usize>(), 1usize..5), 0..3),
        sp in any::<bool>(),
        skip in any::<bool>(),
    ) {
        let f = if sp { sentencepiece() } else { &byte_level().0 };
        let limit = f.tok.vocab_size() as u32 + 2;
        let ids: Vec<u32> = raw.iter().map(|&r| u32::from(r) % limit).collect();
        let full = f.tok.decode(&ids, skip).map_err(|e| fail(e.to_string()))?;
        check(f, &ids, &stops_for(&full, &spans, &[]), skip).map_err(fail)?;
    }

    /// A stop string is found wherever the token boundaries fall inside it, and nothing of
    /// the text before it is held back or lost.
    #[test]
    fn stop_string_found_however_split(
        before in text(),
        stop in prop::sample::select(&["STOP", "<|im_end|>", "€😀", "日本語", "\n\n", "a€b"][..]),
        after in text(),
        picks in prop::collection::vec(any::<usize>(), 1..16),
    ) {
        let stop = stop.to_string();
        let whole = format!("{before}{stop}{after}");
        let ids = split_text(&whole, &picks);
        let s = stream_check::stream(&byte_level().0.tok, &ids, std::slice::from_ref(&stop), false).map_err(fail)?;
        let first = whole.find(&stop).expect("the stop string is in the text");
        prop_assert_eq!(s.hit.map(|h| h.stop_string), Some(stop.clone()), "ids {:?}", ids);
        prop_assert_eq!(&s.text, &whole[..first], "ids {:?}", ids);
    }

    /// A stream that ends inside a possible stop string gets that text back at the end.
    #[test]
    fn held_text_is_flushed_at_the_end(
        body in text(),
        cut in 1usize..5,
        picks in prop::collection::vec(any::<usize>(), 1..16),
    ) {
        let stop = "<|STOP€|>";
        prop_assume!(!body.contains(stop));
        let partial: String = stop.chars().take(cut).collect();
        let whole = format!("{body}{partial}");
        let ids = split_text(&whole, &picks);
        let s = stream_check::stream(&byte_level().0.tok, &ids, &[stop.to_string()], false).map_err(fail)?;
        prop_assert!(s.hit.is_none());
        prop_assert_eq!(&s.text, &whole, "ids {:?}", ids);
    }
}

/// Invalid bytes held up to the pending limit, then a character whose first byte arrived just
/// before the limit: the stream must not show that byte as U+FFFD (it used to, and then
/// showed the character too).
#[test]
fn invalid_bytes_then_a_character_split_at_the_pending_limit() {
    let f = &byte_level().0;
    let byte = |b: u8| 3 + u32::from(b);
    for invalid in 1..12 {
        let mut ids: Vec<u32> = std::iter::repeat_n(byte(0x80), invalid).collect();
        ids.extend("€".bytes().map(byte));
        ids.push(byte(b'a'));
        check(f, &ids, &[], false).unwrap();
        check(f, &ids, &["€a".to_string()], false).unwrap();
    }
}
