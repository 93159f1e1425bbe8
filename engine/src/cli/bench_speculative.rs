//! `mlx-engine bench --draft-model PATH | --draft prompt-lookup`: decode speed with and without
//! speculative decoding, side by side on the same prompts, with the acceptance rate.
//!
//! Two greedy prompts: free writing (where a draft model has to guess) and editing a passage
//! (where the reply repeats the prompt, prompt lookup's case). Greedy speculative decoding
//! gives the plain run's tokens, so both runs time the same text; the table says whether they
//! did.

use super::common::speculative_summary;
use super::outln;
use crate::error::Result;
use crate::generate::{GenerateRequest, GenerationStats};
use crate::model_kit::ModelKit;
use crate::sample::SamplingOverrides;
use crate::speculative::Speculation;
use crate::tokenizer::ChatMessage;

const WRITE: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle.";

const EDIT: &str = "Rewrite the following text with its spelling mistakes corrected. Change nothing \
else.\n\nThe river rises in the hils above the old mill town, where the first setlers built a dam \
of stone and timber to turn their wheels. For two centuries the water drove looms, saws and \
grindstones, and the town grew along both banks. When the railway came, the mills closed one by \
one; the dam silted up, and herons returned to the shalows. Today a footpath follows the river \
from the hills to the sea, past the ruined mills, the iron bridge and the marshes where the \
estuary widens.";

/// The prompt as the model's chat template renders it (raw text for a model without one).
fn tokens(kit: &ModelKit, text: &str) -> Result<Vec<u32>> {
    if kit.tokenizer().chat_template().is_some() {
        kit.tokenize_chat(&[ChatMessage::new("user", text.to_string())], None, &Default::default())
    } else {
        kit.tokenize(text)
    }
}

fn run(
    kit: &ModelKit,
    prompt: &[u32],
    max_tokens: usize,
    speculation: Speculation,
    k: Option<usize>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let req = GenerateRequest {
        prompt_tokens: prompt.to_vec(),
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(max_tokens),
        speculation,
        num_draft_tokens: k,
        ..Default::default()
    };
    super::bench::tokens_and_stats(kit, req)
}

/// Decode tokens per second after the first token (as the stats line counts them).
fn decode_rate(s: &GenerationStats) -> f64 {
    if s.decode_seconds > 0.0 {
        s.generated_tokens.saturating_sub(1) as f64 / s.decode_seconds
    } else {
        0.0
    }
}

/// Times each prompt plainly and with `speculation`, `max_tokens` greedy tokens each (fewer
/// when the model ends its reply), `repeats` times each.
pub fn compare(
    kit: &ModelKit,
    speculation: &Speculation,
    k: Option<usize>,
    max_tokens: usize,
    repeats: usize,
    json: bool,
) -> Result<()> {
    let prompts = [("write", tokens(kit, WRITE)?), ("edit", tokens(kit, EDIT)?)];
    // Warm-up: kernels and page faults of both paths stay out of the timings.
    run(kit, &prompts[0].1[..prompts[0].1.len().min(16)], 4, Speculation::Off, None)?;
    run(kit, &prompts[0].1[..prompts[0].1.len().min(16)], 4, *speculation, k)?;
    if !json {
        outln!(
            "speculative decoding, greedy, up to {max_tokens} tokens per prompt (decode tok/s after the first token, \
             best of {repeats})"
        );
    }
    for (name, prompt) in &prompts {
        // Alternating runs, the faster of each kind: a machine shared with other work slows
        // single runs down by more than the difference measured.
        let (mut a, mut b) = (0.0f64, 0.0f64);
        let (mut plain_tokens, mut spec_tokens, mut spec) = (Vec::new(), Vec::new(), GenerationStats::default());
        for _ in 0..repeats.max(1) {
            let (tokens, stats) = run(kit, prompt, max_tokens, Speculation::Off, None)?;
            (plain_tokens, a) = (tokens, a.max(decode_rate(&stats)));
            let (tokens, stats) = run(kit, prompt, max_tokens, *speculation, k)?;
            b = b.max(decode_rate(&stats));
            (spec_tokens, spec) = (tokens, stats);
        }
        let same = plain_tokens == spec_tokens;
        let ratio = if a > 0.0 { b / a } else { 0.0 };
        if json {
            outln!(
                "{}",
                serde_json::json!({
                    "part": "speculative", "model": kit.info().path.display().to_string(), "prompt": name,
                    "generated_tokens": spec.generated_tokens, "plain_tps": a, "speculative_tps": b,
                    "ratio": ratio, "same_tokens": same, "stats": spec.speculative,
                    "fallback": spec.speculative_fallback,
                })
            );
            continue;
        }
        outln!(
            "  {name:<6}: {:>4} tokens | plain {a:>7.2} tok/s | speculative {b:>7.2} tok/s | {ratio:.2}x | {}",
            spec.generated_tokens,
            if same { "same tokens" } else { "TOKENS DIFFER" }
        );
        match &spec.speculative {
            Some(s) => outln!("          {}", speculative_summary(s)),
            None => {
                outln!("          no speculative decoding: {}", spec.speculative_fallback.as_deref().unwrap_or("-"))
            }
        }
    }
    Ok(())
}
