//! Stop strings over streamed text, with partial-match hold-back.
//!
//! Works on *text* (what the streaming detokenizer emits), not on token ids, so a stop string
//! that spans several tokens, or a token that ends half-way through a stop string, or a stop
//! string made of multi-byte characters, are all handled the same way.
//!
//! Rules (see `mlx-engine-features.md` 2.3 for the behaviour we mirror, and section 9 for the
//! bug we do not copy):
//! - On a full match, the text emitted is cut right before the **earliest** occurrence of any
//!   stop string in the pending text; when two stop strings start at the same place, the one
//!   listed first wins.
//! - Text that could still become the start of a stop string is held back, and only that: the
//!   rest is emitted as soon as it arrives, so a stream is not stalled by a long pending match.
//! - [`StopStrings::flush`] hands back the held text when the stream ends for another reason
//!   (EOS, token limit, cancel). mlx-engine drops that text; we must not lose data.

use crate::error::{Error, Result};

/// A stop string was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopHit {
    /// The stop string that matched (as given).
    pub stop_string: String,
    /// Its position in the list given to [`StopStrings::new`].
    pub index: usize,
    /// The pending text from the start of the match on (the stop string itself and whatever
    /// followed it in the same chunk); it is not emitted.
    pub discarded: String,
}

/// What one [`StopStrings::push`] yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is safe to show now.
    pub text: String,
    /// Set when a stop string completed; generation should end and `text` is the last text.
    pub hit: Option<StopHit>,
}

/// Matches a list of stop strings against a stream of text chunks.
#[derive(Debug, Clone)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet emitted: always a (possibly empty) prefix of some stop string
    /// between calls, so it stays shorter than the longest stop string.
    held: String,
    /// Set once a stop string matched: later input is ignored.
    stopped: bool,
}

impl StopStrings {
    /// Builds the matcher. An empty stop string would match everywhere, so it is rejected; an
    /// empty list is allowed and never matches (callers may also skip the matcher then).
    pub fn new(stops: Vec<String>) -> Result<StopStrings> {
        if stops.iter().any(String::is_empty) {
            return Err(Error::Param { name: "stop".into(), reason: "empty stop string".into() });
        }
        Ok(StopStrings { stops, held: String::new(), stopped: false })
    }

    /// The stop strings, in the order given.
    pub fn stop_strings(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The text currently held back as a possible stop-string prefix.
    pub fn held(&self) -> &str {
        &self.held
    }

    /// Feeds the next chunk of text and returns what may be emitted now.
    pub fn push(&mut self, chunk: &str) -> StopOutput {
        if self.stopped {
            return StopOutput::default();
        }
        self.held.push_str(chunk);
        if let Some((pos, index)) = self.earliest_match() {
            self.stopped = true;
            let discarded = self.held.split_off(pos);
            let text = std::mem::take(&mut self.held);
            let hit = StopHit { stop_string: self.stops[index].clone(), index, discarded };
            return StopOutput { text, hit: Some(hit) };
        }
        let keep_from = self.partial_start();
        let rest = self.held.split_off(keep_from);
        let text = std::mem::replace(&mut self.held, rest);
        StopOutput { text, hit: None }
    }

    /// Returns the held-back text (the stream ended without completing a stop string) and
    /// resets the hold-back. After a match there is nothing held, so this returns "".
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The byte position and list index of the earliest full match in `held` (ties: list order).
    fn earliest_match(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (index, stop) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(stop.as_str()) {
                match best {
                    Some((p, _)) if p <= pos => {}
                    _ => best = Some((pos, index)),
                }
            }
        }
        best
    }

    /// The start of the longest suffix of `held` that is a proper prefix of some stop string
    /// (`held.len()` when there is none). Only char boundaries are tried, so held text is
    /// always valid UTF-8 and unicode stop strings work.
    fn partial_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let min_start = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= min_start)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        StopStrings::new(list.iter().map(|s| s.to_string()).collect()).expect("valid stop strings")
    }

    /// Feeds chunks until a hit; returns (all emitted text, the hit).
    fn run(s: &mut StopStrings, chunks: &[&str]) -> (String, Option<StopHit>) {
        let mut out = String::new();
        for c in chunks {
            let o = s.push(c);
            out.push_str(&o.text);
            if o.hit.is_some() {
                return (out, o.hit);
            }
        }
        (out, None)
    }

    #[test]
    fn empty_stop_string_is_rejected() {
        let err = StopStrings::new(vec!["ok".into(), String::new()]).unwrap_err();
        assert_eq!(err.to_string(), "invalid parameter `stop`: empty stop string");
    }

    #[test]
    fn simple_match_cuts_before_the_stop_string() {
        let mut s = stops(&["STOP"]);
        let o = s.push("hello STOP world");
        assert_eq!(o.text, "hello ");
        let hit = o.hit.expect("hit");
        assert_eq!(hit.stop_string, "STOP");
        assert_eq!(hit.index, 0);
        assert_eq!(hit.discarded, "STOP world");
        assert!(s.is_stopped());
        assert_eq!(s.push("more"), StopOutput::default());
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn no_stop_strings_passes_everything() {
        let mut s = stops(&[]);
        assert_eq!(s.push("abc").text, "abc");
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn partial_match_that_fails_releases_held_text() {
        let mut s = stops(&["</end>"]);
        assert_eq!(s.push("a <").text, "a ");
        assert_eq!(s.held(), "<");
        assert_eq!(s.push("/e").text, "");
        assert_eq!(s.held(), "</e");
        // The pending "</e" cannot become "</end>" any more: all of it comes out.
        let o = s.push("x>");
        assert_eq!(o.text, "</ex>");
        assert!(o.hit.is_none());
        assert_eq!(s.held(), "");
    }

    #[test]
    fn failed_partial_keeps_a_new_partial() {
        // "<<" : the first "<" fails as a start of "<a>", the second may still start it.
        let mut s = stops(&["<a>"]);
        assert_eq!(s.push("<").text, "");
        assert_eq!(s.push("<").text, "<");
        assert_eq!(s.held(), "<");
        let o = s.push("a>tail");
        assert_eq!(o.text, "");
        assert_eq!(o.hit.expect("hit").discarded, "<a>tail");
    }

    #[test]
    fn match_across_chunks() {
        let mut s = stops(&["<|im_end|>"]);
        let (text, hit) = run(&mut s, &["Hi", " there", "<|", "im", "_end", "|>", "ignored"]);
        assert_eq!(text, "Hi there");
        assert_eq!(hit.expect("hit").stop_string, "<|im_end|>");
    }

    #[test]
    fn earliest_occurrence_wins_then_list_order() {
        let mut s = stops(&["world", "lo"]);
        let o = s.push("hello world");
        assert_eq!(o.text, "hel");
        assert_eq!(o.hit.expect("hit").stop_string, "lo");

        // Same start: the first listed wins.
        let mut s = stops(&["abc", "ab"]);
        let o = s.push("xabcd");
        assert_eq!(o.text, "x");
        assert_eq!(o.hit.expect("hit").index, 0);
        let mut s = stops(&["ab", "abc"]);
        assert_eq!(s.push("xabcd").hit.expect("hit").stop_string, "ab");
    }

    #[test]
    fn overlapping_stop_strings() {
        // "aab" and "ab" overlap; fed one char at a time, "aab" starts first.
        let mut s = stops(&["ab", "aab"]);
        let (text, hit) = run(&mut s, &["x", "a", "a", "b"]);
        assert_eq!(text, "x");
        assert_eq!(hit.expect("hit").stop_string, "aab");

        // A stop string whose own suffix restarts it: "abab" in "ababab".
        let mut s = stops(&["abac"]);
        let (text, hit) = run(&mut s, &["ab", "ab", "ac", "z"]);
        assert_eq!(text, "ab");
        assert_eq!(hit.expect("hit").discarded, "abac");
    }

    #[test]
    fn flush_returns_held_text() {
        let mut s = stops(&["###"]);
        assert_eq!(s.push("answer #").text, "answer ");
        assert_eq!(s.push("#").text, "");
        assert_eq!(s.flush(), "##");
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn unicode_stop_strings_and_text() {
        let mut s = stops(&["终了", "🛑"]);
        assert_eq!(s.push("日本語終").text, "日本語終");
        assert_eq!(s.push("终").text, "");
        assert_eq!(s.held(), "终");
        let o = s.push("了です");
        assert_eq!(o.text, "");
        assert_eq!(o.hit.expect("hit").stop_string, "终了");

        let mut s = stops(&["🛑x"]);
        assert_eq!(s.push("é🛑").text, "é");
        assert_eq!(s.push("y").text, "🛑y");
    }
}
