//! What a generation streams back: text chunks with the tokens behind them, and why it stopped.

use serde::Serialize;

/// One generated token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Token {
    pub id: u32,
    /// The token decoded on its own (may be part of a multi-byte character).
    pub text: String,
    /// Log-probability after the logits processors, before temperature and filters.
    pub logprob: f32,
    /// Whether a drafter proposed it and the main model agreed (speculative decoding); `None`
    /// when the generation did not decode speculatively.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_draft: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EosToken,
    StopString,
    TokenLimit,
    UserCancelled,
    /// The request's grammar (`GenerateRequest::constraint`) admits no more text.
    GrammarComplete,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StopCondition {
    pub reason: StopReason,
    /// The matched stop string, or the EOS token's text (empty for the other reasons).
    pub stop_string: String,
    /// The tokens that completed the stop (the EOS id, or the tokens of the stop string).
    pub stop_tokens: Vec<u32>,
}

/// One streamed chunk: complete UTF-8 text and the tokens behind it; the last chunk of a
/// stream carries the stop condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GenerationResult {
    pub text: String,
    pub tokens: Vec<Token>,
    /// Per token, the most likely alternatives (sorted, most likely first), when requested.
    pub top_logprobs: Vec<Vec<Token>>,
    pub stop_condition: Option<StopCondition>,
}
