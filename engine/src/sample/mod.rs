//! Sampling: request parameters, logits processors, and the sampler that picks each token.
//!
//! Per decode step the generator runs [`apply_processors`] over the model's last-position
//! logits with the token history, then [`Sampler::sample`], which returns the token and the
//! log-softmax the API reports (post-processors, pre-temperature, as mlx-lm / mlx-engine), and
//! [`top_logprobs`] for the alternatives when a request asks for them.
//!
//! Behaviour follows mlx-engine (`utils/sampling.py`, mlx-lm `sample_utils`): every filter is
//! off unless set, temperature 0 is greedy, the filters run top-p → min-p → top-k. Additions
//! over mlx-engine, with OpenAI semantics: `logit_bias`, presence and frequency penalties, and
//! a per-request seed that is always reported (drawn when not given).

mod params;
mod processors;
mod sampler;

pub use params::{SamplingOverrides, SamplingParams, DEFAULT_REPETITION_CONTEXT_SIZE, MAX_TOP_LOGPROBS};
pub use processors::{
    all_run_ahead, apply_processors, apply_processors_ahead, processors_for, LogitBias, LogitsProcessor,
    PresenceFrequencyPenalty, RepetitionPenalty,
};
pub use sampler::{
    apply_min_p, apply_top_k, apply_top_p, top_candidates, top_logprobs, KeyPlan, LazySample, SampleOutput, Sampler,
    TopCandidates,
};
