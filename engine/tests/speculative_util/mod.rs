//! What the speculative decoding suites share: kits with a draft model, greedy requests with
//! and without speculation, and a run collected into its tokens, text, stop reason and stats.
#![allow(dead_code)]

use std::path::Path;

use mlx_engine::cache::CacheConfig;
use mlx_engine::generate::{GenerateRequest, GenerationStats, StopReason, Token};
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::speculative::Speculation;
use mlx_engine::ModelKit;

use crate::common_models::{load_kit_with, TinyModel};

pub struct Run {
    pub tokens: Vec<Token>,
    pub text: String,
    pub reason: StopReason,
    pub stats: GenerationStats,
}

impl Run {
    pub fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    pub fn flags(&self) -> Vec<Option<bool>> {
        self.tokens.iter().map(|t| t.from_draft).collect()
    }
}

pub fn try_run(kit: &ModelKit, req: GenerateRequest) -> mlx_engine::Result<Run> {
    let mut g = kit.generate(req)?;
    let (mut tokens, mut text, mut reason) = (Vec::new(), String::new(), None);
    for r in g.by_ref() {
        let r = r?;
        tokens.extend(r.tokens);
        text.push_str(&r.text);
        reason = r.stop_condition.map(|s| s.reason).or(reason);
    }
    let stats = g.stats().cloned().expect("stats once the stream ended");
    Ok(Run { tokens, text, reason: reason.expect("a stop condition"), stats })
}

pub fn run(kit: &ModelKit, req: GenerateRequest) -> Run {
    try_run(kit, req).unwrap_or_else(|e| panic!("generation failed: {e}"))
}

pub fn greedy(prompt: &[u32], n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: prompt.to_vec(),
        max_tokens: Some(n),
        ignore_eos: true,
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        ..Default::default()
    }
}

pub fn plain(req: &GenerateRequest) -> GenerateRequest {
    GenerateRequest { speculation: Speculation::Off, ..req.clone() }
}

pub fn drafted(req: &GenerateRequest, k: usize) -> GenerateRequest {
    GenerateRequest { speculation: Speculation::DraftModel, num_draft_tokens: Some(k), ..req.clone() }
}

pub fn kit_with(dir: &Path, cache: CacheConfig) -> ModelKit {
    load_kit_with(dir, cache, 10).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// A kit for `main` with `draft` loaded as its draft model.
pub fn with_draft(main: &Path, draft: &Path, cache: CacheConfig) -> ModelKit {
    let kit = kit_with(main, cache);
    kit.load_draft_model(draft).unwrap_or_else(|e| panic!("loading the draft {}: {e}", draft.display()));
    kit
}

/// The round structure of a draft that is always accepted: the first token (plain), then
/// rounds of `k` drafts and the main model's own token, the last round cut to the budget.
pub fn all_accepted_flags(n: usize, k: usize) -> Vec<Option<bool>> {
    let mut flags = vec![Some(false)];
    while flags.len() < n {
        let drafts = k.min(n - flags.len() - 1);
        flags.extend(std::iter::repeat_n(Some(true), drafts));
        flags.push(Some(false));
    }
    flags
}

/// The printable model and its 4-bit copy (the draft of choice: close, so often accepted,
/// but not the same model).
pub fn main_and_4bit_draft() -> (tempfile::TempDir, tempfile::TempDir) {
    let m = TinyModel::printable(3);
    let (q4, _) = m.quantized(32, 4, &[]);
    (m.write_temp(), q4.write_temp())
}
