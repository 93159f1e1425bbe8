//! Prompt lookup (llama.cpp's lookup decoding; mlx-lm and mlx-engine have no equivalent): the
//! draft is whatever followed the latest earlier occurrence of the sequence's last `n` tokens.
//! It needs no second model, and pays off where the output repeats the input: editing,
//! summarising with quotes, code.

use super::{DraftSampling, Drafter};
use crate::error::Result;

/// Proposes continuations found in the prompt and the output so far.
pub struct PromptLookup {
    min_ngram: usize,
    max_ngram: usize,
}

impl PromptLookup {
    /// Matches n-grams of `min_ngram..=max_ngram` tokens, longest first (sizes checked by
    /// [`super::Speculation::validate`]).
    pub fn new(min_ngram: usize, max_ngram: usize) -> PromptLookup {
        PromptLookup { min_ngram: min_ngram.max(1), max_ngram: max_ngram.max(min_ngram.max(1)) }
    }
}

/// Up to `n` tokens that followed the latest earlier occurrence of `history`'s last `ngram`
/// tokens, trying the longest n-gram first: a longer match is better evidence that the text
/// is being repeated. Empty when no n-gram recurs.
pub fn lookup(history: &[u32], n: usize, min_ngram: usize, max_ngram: usize) -> Vec<u32> {
    let len = history.len();
    for size in (min_ngram.max(1)..=max_ngram).rev() {
        if size >= len {
            continue;
        }
        let pattern = &history[len - size..];
        // Latest first: recent text predicts the next tokens best. A match must end before the
        // pattern itself, so something follows it.
        for start in (0..len - size).rev() {
            if &history[start..start + size] == pattern {
                let from = start + size;
                return history[from..(from + n).min(len)].to_vec();
            }
        }
    }
    Vec::new()
}

impl Drafter for PromptLookup {
    fn name(&self) -> &'static str {
        "prompt lookup"
    }

    fn draft(&mut self, history: &[u32], n: usize, _sampling: &mut DraftSampling<'_>) -> Result<Vec<u32>> {
        Ok(lookup(history, n, self.min_ngram, self.max_ngram))
    }

    fn accept(&mut self, _history: &[u32], _drafted: usize, _accepted: usize) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn proposes_what_followed_the_latest_match() {
        // "1 2 3" occurs twice before the end; the latest one is followed by 9 9.
        let h = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 7, 1, 2, 3];
        assert_eq!(lookup(&h, 2, 1, 3), vec![9, 9]);
        assert_eq!(lookup(&h, 5, 1, 3), vec![9, 9, 7, 1, 2]);
    }

    #[test]
    fn falls_back_to_shorter_ngrams_and_stops_at_the_end() {
        // No earlier "8 3", but an earlier "3" (followed by 4).
        let h = [1, 3, 4, 8, 3];
        assert_eq!(lookup(&h, 3, 1, 2), vec![4, 8, 3]);
        assert_eq!(lookup(&h, 3, 2, 2), Vec::<u32>::new());
        // A run of one token proposes itself, however long the wanted draft.
        assert_eq!(lookup(&[5, 5, 5], 4, 1, 3), vec![5]);
        assert_eq!(lookup(&[5], 4, 1, 3), Vec::<u32>::new());
    }
}
