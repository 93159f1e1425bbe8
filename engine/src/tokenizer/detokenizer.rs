//! Streaming detokenization: token ids in one at a time, finished text out.
//!
//! Decoding token by token is wrong for two reasons: a character may be split across tokens
//! (byte-level BPE bytes, SentencePiece `<0xNN>` byte fallback), and SentencePiece decoders
//! treat the first token of a sequence specially (the `▁` word marker becomes a space except at
//! the very start). So each step decodes a short *window* of ids — the ids of the last emitted
//! chunk plus the pending ones — and emits what the pending ids added to the window's text.
//! The window restarts after every emission, so a step costs O(1) however long the stream is.
//! Text whose tail is U+FFFD (an incomplete UTF-8 sequence) is held until the character
//! completes, or until [`MAX_PENDING`] ids make it likely that the bytes are really invalid;
//! even then only text that no later id can change is emitted (see `emit_stable`), since
//! invalid bytes may be followed by the first bytes of a real character.

use super::Tokenizer;
use crate::error::Result;

/// A UTF-8 character spans at most 4 bytes and every byte-carrying token holds at least one,
/// so this many pending ids that still end in U+FFFD are invalid bytes, not a partial char.
pub const MAX_PENDING: usize = 8;

/// Pending ids that decode to nothing are kept (they may show once more ids arrive) up to this
/// many; past it they are dropped so a step stays O(1).
const MAX_SILENT: usize = 64;

/// Turns a stream of token ids into text chunks that never end inside a character.
#[derive(Debug, Clone)]
pub struct StreamingDetokenizer {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// The window: the ids of the last emitted chunk (`..read`), then the pending ids.
    ids: Vec<u32>,
    read: usize,
    /// Decoded text of `ids[..read]` alone (the prefix of every decode in this window).
    prefix: String,
}

impl StreamingDetokenizer {
    /// `skip_special_tokens` drops special tokens (e.g. `<|im_end|>`) from the text, as
    /// `decode(ids, true)` would.
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> StreamingDetokenizer {
        StreamingDetokenizer { tokenizer, skip_special_tokens, ids: Vec::new(), read: 0, prefix: String::new() }
    }

    /// Adds one id and returns the text it completed ("" when it is still pending).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let pending = self.ids.len() - self.read;
        if full.ends_with('\u{FFFD}') {
            if pending < MAX_PENDING {
                return Ok(String::new());
            }
            if let Some(text) = self.emit_stable(&full)? {
                return Ok(text);
            }
            // No safe cut yet (ids that add no bytes sit inside the character): keep holding,
            // up to the window bound, then give the bytes up as U+FFFD.
            if pending < MAX_SILENT {
                return Ok(String::new());
            }
        }
        let new_text = self.new_text(&full);
        if new_text.is_empty() {
            // The pending ids decode to nothing so far (skipped special tokens, or a lone `▁`
            // that a SentencePiece decoder strips at the start). They stay pending, since a
            // later id can make them show; a long run of them is dropped to bound the window.
            if pending >= MAX_SILENT {
                self.ids.truncate(self.read);
            }
            return Ok(String::new());
        }
        // The just-emitted ids become the new window's prefix; their text is decoded on their
        // own, since a window's first token may decode differently (SentencePiece strips its
        // leading space).
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok(new_text)
    }

    /// Adds several ids; returns the text they completed.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// Ends the stream: returns the text of any pending ids (an incomplete character comes out
    /// as U+FFFD) and resets the detokenizer.
    pub fn finish(&mut self) -> Result<String> {
        let out = if self.ids.len() > self.read {
            let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
            self.new_text(&full)
        } else {
            String::new()
        };
        self.reset();
        Ok(out)
    }

    /// Forgets everything (e.g. before the next request).
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
    }

    /// Whether ids are waiting for more bytes.
    pub fn has_pending(&self) -> bool {
        self.ids.len() > self.read
    }

    /// Emits the text of the longest run of pending ids whose decode is a *strict* prefix of
    /// `full` (the window's text), keeping the ids after it pending. More text following it
    /// means its last bytes were already settled: a complete character, or a U+FFFD that a
    /// later byte closed. A U+FFFD for an incomplete tail may still become a character, and
    /// the tail spans at most 3 bytes, so a cut within the last [`MAX_PENDING`] ids is enough.
    fn emit_stable(&mut self, full: &str) -> Result<Option<String>> {
        let n = self.ids.len();
        for cut in (self.read + 1..n).rev().take(MAX_PENDING) {
            let text = self.tokenizer.decode(&self.ids[..cut], self.skip_special_tokens)?;
            let settled = text.len() < full.len() && full.starts_with(&text);
            if !settled || text.len() <= self.prefix.len() || !text.starts_with(self.prefix.as_str()) {
                continue;
            }
            let new_text = text[self.prefix.len()..].to_string();
            let emitted = cut - self.read;
            self.ids.drain(..self.read);
            self.read = emitted;
            self.prefix = self.tokenizer.decode(&self.ids[..self.read], self.skip_special_tokens)?;
            return Ok(Some(new_text));
        }
        Ok(None)
    }

    /// What `full` (the window's text) adds to the already emitted prefix. Decoders extend
    /// text, so `full` starts with the prefix; if one ever rewrote earlier text, only the part
    /// after the common prefix is emitted (emitted text cannot be taken back).
    fn new_text(&self, full: &str) -> String {
        if let Some(rest) = full.strip_prefix(self.prefix.as_str()) {
            return rest.to_string();
        }
        let common = full
            .char_indices()
            .zip(self.prefix.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map(|((i, c), _)| i + c.len_utf8())
            .unwrap_or(0);
        full[common..].to_string()
    }
}
