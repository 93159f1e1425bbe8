//! One sequence's grammar state: the allowed-token mask for the next position, advanced by
//! every committed token and rolled back over tokens a speculative verifier rejects.

use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, TokenParser};

use super::env::ConstraintEnv;
use crate::api::{Array, Dtype};
use crate::error::{Error, Result};

pub struct SequenceMatcher {
    inner: Matcher,
    eos: SimpleVob,
    /// Per token pushed, whether llguidance took it: tokens after the grammar finished (the
    /// EOS a model writes then, a speculative round's tail) are not its to see.
    pushed: Vec<bool>,
    /// The request parameter the grammar came from, named in errors.
    param: String,
    /// Reused host buffer of the additive mask.
    buf: Vec<f32>,
}

impl SequenceMatcher {
    pub(super) fn new(parser: TokenParser, env: &ConstraintEnv, param: &str) -> Result<SequenceMatcher> {
        let inner = Matcher::new(Ok(parser));
        let eos = env.factory().tok_env().tok_trie().eos_token_set();
        let m = SequenceMatcher { inner, eos, pushed: Vec::new(), param: param.into(), buf: Vec::new() };
        match m.inner.get_error() {
            Some(e) => Err(m.error(e)),
            None => Ok(m),
        }
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Param { name: self.param.clone(), reason: reason.into() }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> Error {
        self.error(format!("the grammar failed {what} after {} generated tokens: {e}", self.pushed.len()))
    }

    /// Whether the grammar is complete: it admits no more text (only EOS).
    pub fn is_done(&self) -> bool {
        self.inner.is_stopped()
    }

    /// The allowed tokens of the next position as a bit set (EOS alone once the grammar is done).
    fn allowed(&mut self) -> Result<SimpleVob> {
        if self.is_done() {
            return Ok(self.eos.clone());
        }
        let mask = self.inner.compute_mask().map_err(|e| self.failed("computing the token mask", e))?;
        if mask.is_zero() {
            return Err(self.failed("computing the token mask", "it allows no token here"));
        }
        Ok(mask)
    }

    /// The next position's additive mask over `width` logits: 0 where allowed, -inf elsewhere
    /// (ids past the vocabulary included). Computed on the host; see the module docs for why
    /// callers queue the forward pass first.
    pub fn mask(&mut self, width: usize) -> Result<Array> {
        let allowed = self.allowed()?;
        self.buf.clear();
        self.buf.resize(width, f32::NEG_INFINITY);
        let buf = &mut self.buf;
        allowed.iter_set_entries(|i| {
            if let Some(x) = buf.get_mut(i) {
                *x = 0.0;
            }
        });
        Ok(Array::from_slice(&self.buf, &[width as i32])?)
    }

    /// `logits` (`[vocab]` or `[1, vocab]`) with the disallowed tokens at -inf.
    pub fn apply(&mut self, logits: &Array) -> Result<Array> {
        let width = logits.dim(-1)? as usize;
        let mask = self.mask(width)?.reshape(&logits.shape())?;
        Ok(logits.astype(Dtype::F32)?.add(&mask)?)
    }

    /// Advances over a committed token.
    pub fn consume(&mut self, id: u32) -> Result<()> {
        if self.is_done() {
            self.pushed.push(false);
            return Ok(());
        }
        self.inner.consume_token(id).map_err(|e| self.failed(&format!("on token {id}"), e))?;
        self.pushed.push(true);
        Ok(())
    }

    /// Takes back the last `n` tokens pushed.
    pub fn rollback(&mut self, n: usize) -> Result<()> {
        let keep = self.pushed.len().saturating_sub(n);
        let taken = self.pushed.drain(keep..).filter(|&t| t).count();
        self.inner.rollback(taken).map_err(|e| self.failed("rolling back", e))
    }

    /// How many of `tokens` the grammar accepts in a row from here, changing nothing.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> Result<usize> {
        if self.is_done() {
            return Ok(0);
        }
        self.inner.validate_tokens(tokens).map_err(|e| self.failed("checking draft tokens", e))
    }
}
