//! Arbitrary token ids and stop strings through the streaming detokenizer and the stop-string
//! matcher, as `generate` runs them; `stream_check::check` says what must hold (nothing lost,
//! nothing shown that the full decode does not have, the stop found however it is split).
//!
//! Input: a flags byte (bit 0: SentencePiece fixture instead of byte-level, bit 1: skip
//! special tokens, bits 2-3: number of stop strings), then per stop string a length byte
//! (high bit set: that many raw bytes follow as the stop string; clear: a run of characters
//! of the full decode, starting where the next byte says), then the ids as little-endian u16s
//! (a few past the vocabulary, as a model with a padded embedding can sample).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../engine/tests/stream_check/mod.rs"]
mod stream_check;
#[path = "../../engine/tests/tokenizer_fixtures/mod.rs"]
mod tokenizer_fixtures;

use stream_check::Fixture;

fn fixtures() -> &'static [Fixture; 2] {
    static F: OnceLock<[Fixture; 2]> = OnceLock::new();
    F.get_or_init(|| [stream_check::byte_level(), stream_check::sentencepiece()])
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let f = &fixtures()[usize::from(flags & 1)];
    let skip = flags & 2 != 0;
    let mut specs = Vec::new();
    for _ in 0..(flags >> 2) & 3 {
        let Some((&len, tail)) = rest.split_first() else { return };
        let n = usize::from(len & 0x0F) + 1;
        if len & 0x80 != 0 {
            let Some((raw, tail)) = tail.split_at_checked(n) else { return };
            specs.push(Err(String::from_utf8_lossy(raw).into_owned()));
            rest = tail;
        } else {
            let Some((&start, tail)) = tail.split_first() else { return };
            specs.push(Ok((usize::from(start), n)));
            rest = tail;
        }
    }
    let limit = f.tok.vocab_size() as u32 + 2;
    let ids: Vec<u32> = rest.chunks_exact(2).map(|p| u32::from(u16::from_le_bytes([p[0], p[1]])) % limit).collect();
    let full = f.tok.decode(&ids, skip).expect("decode");
    let chars: Vec<char> = full.chars().collect();
    let stops: Vec<String> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            Err(raw) => Some(raw),
            Ok(_) if chars.is_empty() => None,
            Ok((start, n)) => {
                let start = start % chars.len();
                Some(chars[start..(start + n).min(chars.len())].iter().collect())
            }
        })
        .filter(|s: &String| !s.is_empty())
        .collect();
    if let Err(e) = stream_check::check(f, &ids, &stops, skip) {
        panic!("{e}");
    }
});
