//! The text stream: the layer of the decode loop above the token stepper. It turns committed
//! tokens into [`GenerationResult`]s: streaming detokenizer, stop strings, EOS, the token
//! budget, top logprobs, and the one final result that carries the stop condition.

use super::result::{GenerationResult, StopCondition, StopReason, Token};
use super::step::StepToken;
use crate::error::Result;
use crate::sample::top_logprobs;
use crate::stop::StopStrings;
use crate::tokenizer::{StreamingDetokenizer, Tokenizer};

/// What one token did to the stream.
pub enum Pushed {
    /// Nothing to send yet (text held back by the detokenizer or a possible stop string).
    Held,
    /// A chunk to send; the stream goes on.
    Chunk(GenerationResult),
    /// The last result, with its stop condition; the stream is over.
    Done(GenerationResult),
}

pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    detok: StreamingDetokenizer,
    stops: StopStrings,
    pending: GenerationResult,
    top_logprobs: usize,
    ignore_eos: bool,
    budget: usize,
    generated: usize,
    /// Report `from_draft` on every token (a speculative stepper is running).
    speculative: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(
        tokenizer: &'a Tokenizer,
        stops: StopStrings,
        top_logprobs: usize,
        ignore_eos: bool,
        budget: usize,
        speculative: bool,
    ) -> TextStream<'a> {
        TextStream {
            tokenizer,
            detok: StreamingDetokenizer::new(tokenizer.clone(), false),
            stops,
            pending: GenerationResult::default(),
            top_logprobs,
            ignore_eos,
            budget,
            generated: 0,
            speculative,
        }
    }

    /// Tokens taken so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// How many more tokens the stream takes (at least 1 while it is not done).
    pub fn remaining(&self) -> usize {
        self.budget.saturating_sub(self.generated).max(1)
    }

    fn token(&self, id: u32, logprob: f32, from_draft: bool) -> Result<Token> {
        let from_draft = self.speculative.then_some(from_draft);
        Ok(Token { id, text: self.tokenizer.decode(&[id], false)?, logprob, from_draft })
    }

    /// Takes the next committed token.
    pub fn push(&mut self, t: StepToken) -> Result<Pushed> {
        let id = t.id;
        let token = self.token(id, t.logprob, t.from_draft)?;
        if self.top_logprobs > 0 {
            let alts = match &t.top {
                Some(candidates) => candidates.resolve()?,
                None => top_logprobs(&t.logprobs, self.top_logprobs)?,
            };
            let alts = alts
                .into_iter()
                .map(|(alt, lp)| Ok(Token { from_draft: None, ..self.token(alt, lp, false)? }))
                .collect::<Result<Vec<_>>>()?;
            self.pending.top_logprobs.push(alts);
        }
        self.generated += 1;

        if !self.ignore_eos && self.tokenizer.is_eos(id) {
            let (reason, stop_string) = self.drain(StopReason::EosToken)?;
            let stop_string = if reason == StopReason::EosToken { token.text.clone() } else { stop_string };
            self.pending.tokens.push(token);
            return Ok(Pushed::Done(self.finish(reason, stop_string, vec![id])));
        }
        self.pending.tokens.push(token);
        let out = self.stops.push(&self.detok.push(id)?);
        self.pending.text.push_str(&out.text);
        if let Some(hit) = out.hit {
            let stop_tokens = self.pending.tokens.iter().map(|t| t.id).collect();
            return Ok(Pushed::Done(self.finish(StopReason::StopString, hit.stop_string, stop_tokens)));
        }
        // A finished grammar ends the text even at the budget's last token: it is whole.
        if t.grammar_done {
            let (reason, stop_string) = self.drain(StopReason::GrammarComplete)?;
            return Ok(Pushed::Done(self.finish(reason, stop_string, Vec::new())));
        }
        if self.generated >= self.budget {
            let (reason, stop_string) = self.drain(StopReason::TokenLimit)?;
            return Ok(Pushed::Done(self.finish(reason, stop_string, Vec::new())));
        }
        if self.pending.text.is_empty() {
            return Ok(Pushed::Held);
        }
        Ok(Pushed::Chunk(std::mem::take(&mut self.pending)))
    }

    /// Ends the stream because the request was cancelled.
    pub fn cancel(&mut self) -> Result<GenerationResult> {
        let (reason, stop_string) = self.drain(StopReason::UserCancelled)?;
        Ok(self.finish(reason, stop_string, Vec::new()))
    }

    /// Ends the text of a stream that stops for `reason`: the detokenizer's last bytes go
    /// through the stop strings (they may still complete one, which then becomes the reason),
    /// and text held back for a possible stop string is released rather than lost.
    fn drain(&mut self, reason: StopReason) -> Result<(StopReason, String)> {
        let out = self.stops.push(&self.detok.finish()?);
        self.pending.text.push_str(&out.text);
        match out.hit {
            Some(hit) => Ok((StopReason::StopString, hit.stop_string)),
            None => {
                self.pending.text.push_str(&self.stops.flush());
                Ok((reason, String::new()))
            }
        }
    }

    fn finish(&mut self, reason: StopReason, stop_string: String, stop_tokens: Vec<u32>) -> GenerationResult {
        let mut last = std::mem::take(&mut self.pending);
        last.stop_condition = Some(StopCondition { reason, stop_string, stop_tokens });
        last
    }
}
