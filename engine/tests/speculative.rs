//! Speculative decoding's correctness through the public API (`ModelKit::load_draft_model`,
//! `GenerateRequest::speculation`): greedy output is the plain run's token for token (a model
//! drafting for itself, a tiny random draft of the same vocabulary, prompt lookup), a self-draft
//! has every draft accepted, sampling keeps plain decoding's distribution (chi-square against
//! the exact one) and a seed's tokens, caches that cannot be trimmed or are quantized work,
//! and a generation ends cleanly wherever a stop string, the token budget or a cancel falls in
//! a round. `speculative_api.rs` has the refusals, the CLI and the VLM rule.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod speculative_util;
mod tokenizer_fixtures;

use std::path::Path;

use common_models::*;
use mlx_engine::cache::CacheConfig;
use mlx_engine::generate::{GenerateRequest, StopReason};
use mlx_engine::model::DtypeChoice;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::speculative::Speculation;
use speculative_util::*;

#[test]
fn a_self_draft_gives_the_plain_tokens_and_every_draft_is_accepted() {
    let dir = TinyModel::printable(3).write_temp();
    let p = prompt(6, Tok::ByteLevel, 1);
    let kit = with_draft(dir.path(), dir.path(), CacheConfig::default());
    let want = run(&kit, plain(&greedy(&p, 40)));
    assert_eq!(want.stats.speculative, None);
    assert!(want.tokens.iter().all(|t| t.from_draft.is_none()), "no from_draft without speculation");
    for k in [1, 3, 5] {
        let got = run(&kit, drafted(&greedy(&p, 40), k));
        assert_eq!(got.ids(), want.ids(), "k = {k}");
        assert_eq!(got.text, want.text);
        let s = got.stats.speculative.clone().expect("speculative stats");
        assert_eq!((s.drafter.as_str(), s.num_draft_tokens), ("draft model", k));
        assert_eq!(s.accepted, s.drafted, "k = {k}: a model agrees with itself");
        assert_eq!(s.acceptance_rate, 1.0);
        assert_eq!(got.flags(), all_accepted_flags(40, k), "k = {k}: rounds of k accepted drafts");
        assert_eq!(s.drafted + s.rounds, 39, "every token after the first came from a round");
        assert_eq!(got.stats.generated_tokens, 40);
        for (a, b) in got.tokens.iter().zip(&want.tokens) {
            let bound = 1e-4; // verify-pass vs one-token logits: f32 rounding of batched matmuls
            assert!((a.logprob - b.logprob).abs() < bound, "logprob {} vs {}", a.logprob, b.logprob);
        }
    }
    // The default (Auto) uses the loaded draft; unloading it returns to plain decoding.
    let auto = run(&kit, greedy(&p, 12));
    assert_eq!(auto.stats.speculative.map(|s| s.num_draft_tokens), Some(3), "default num_draft_tokens");
    assert!(kit.unload_draft_model().unwrap());
    assert!(!kit.unload_draft_model().unwrap());
    assert_eq!(run(&kit, greedy(&p, 12)).stats.speculative, None);
    let e = try_run(&kit, drafted(&greedy(&p, 4), 2)).err().expect("no draft loaded").to_string();
    assert!(e.contains("invalid parameter `speculation`") && e.contains("none is loaded"), "{e}");
}

#[test]
fn a_random_draft_of_the_same_vocabulary_gives_the_plain_tokens() {
    let main = TinyModel::printable(3).write_temp();
    let p = prompt(6, Tok::ByteLevel, 1);
    let reference = run(&kit_with(main.path(), CacheConfig::default()), greedy(&p, 40));
    // Another printable model (agrees sometimes) and a plain random qwen3 (almost never).
    for draft in [TinyModel::printable(11), TinyModel::with_tok(Arch::Qwen3, Tok::ByteLevel, 5)] {
        let draft = draft.write_temp();
        let kit = with_draft(main.path(), draft.path(), CacheConfig::default());
        for k in [1, 2, 4] {
            let got = run(&kit, drafted(&greedy(&p, 40), k));
            assert_eq!(got.ids(), reference.ids(), "k = {k}");
            let s = got.stats.speculative.expect("speculative stats");
            assert!(s.accepted <= s.drafted && s.drafted > 0, "{s:?}");
            let from_draft = got.tokens.iter().filter(|t| t.from_draft == Some(true)).count();
            assert_eq!(from_draft, s.accepted, "accepted tokens are flagged");
        }
    }
}

#[test]
fn prompt_lookup_gives_the_plain_tokens_and_drafts_from_the_prompt() {
    let dir = TinyModel::printable(3).write_temp();
    let kit = kit_with(dir.path(), CacheConfig::default());
    // A prompt that repeats itself, as an edit of a text does.
    let unit = prompt(7, Tok::ByteLevel, 2);
    let p: Vec<u32> = unit.iter().cycle().take(21).copied().collect();
    let want = run(&kit, greedy(&p, 30));
    for (min_ngram, max_ngram) in [(1, 3), (2, 2), (1, 8)] {
        for k in [2, 5] {
            let spec = Speculation::PromptLookup { min_ngram, max_ngram };
            let req = GenerateRequest { speculation: spec, num_draft_tokens: Some(k), ..greedy(&p, 30) };
            let got = run(&kit, req);
            assert_eq!(got.ids(), want.ids(), "n-grams {min_ngram}..{max_ngram}, k = {k}");
            let s = got.stats.speculative.expect("speculative stats");
            assert_eq!(s.drafter, "prompt lookup");
            assert!(s.drafted > 0 && s.accepted <= s.drafted, "{s:?}");
        }
    }
}

#[test]
fn caches_that_cannot_be_trimmed_and_quantized_caches_work_with_a_draft() {
    // gemma3's sliding layers (window 8) stop being trimmable after 8 positions, as does a
    // max_kv_size ring once it wraps: rejections restore a snapshot instead.
    let gemma = TinyModel::new(Arch::Gemma3, 4).write_temp();
    let gemma_draft = TinyModel::new(Arch::Gemma3, 9).write_temp();
    let llama = TinyModel::printable(3).write_temp();
    let llama_draft = TinyModel::printable(11).write_temp();
    let ring = CacheConfig { max_kv_size: Some(12), ..Default::default() };
    // gemma3's head dimension (32) takes a quantization group of 32.
    let kv8 = CacheConfig { kv_bits: Some(8), kv_group_size: 32, ..Default::default() };
    let kv4_late = CacheConfig { kv_bits: Some(4), kv_group_size: 32, quantized_kv_start: 12, ..Default::default() };
    let cases = [
        (gemma.path(), gemma_draft.path(), Tok::SentencePiece, CacheConfig::default()),
        (gemma.path(), gemma.path(), Tok::SentencePiece, CacheConfig::default()),
        (llama.path(), llama_draft.path(), Tok::ByteLevel, ring.clone()),
        (llama.path(), llama.path(), Tok::ByteLevel, ring),
        (gemma.path(), gemma_draft.path(), Tok::SentencePiece, kv8.clone()),
        (gemma.path(), gemma.path(), Tok::SentencePiece, kv8),
        (gemma.path(), gemma.path(), Tok::SentencePiece, kv4_late),
    ];
    for (main, draft, tok, cache) in cases {
        let p = prompt(5, tok, 3);
        let plain_kit = kit_with(main, cache.clone());
        let want = run(&plain_kit, greedy(&p, 30));
        let kit = with_draft(main, draft, cache.clone());
        let got = run(&kit, drafted(&greedy(&p, 30), 3));
        assert_eq!(got.ids(), want.ids(), "{cache:?}, draft {}", draft.display());
        let s = got.stats.speculative.clone().expect("speculative stats");
        if main == draft {
            assert_eq!(s.accepted, s.drafted, "self-draft with {cache:?}");
        }
        // A follow-up reuses both caches and still decodes the same tokens (as the same two
        // requests do without a draft: with a quantized cache, what was cached changes the
        // numbers).
        let mut next = p.clone();
        next.extend(got.ids());
        next.truncate(next.len() - 1);
        next.extend(prompt(3, tok, 7));
        let again = run(&kit, drafted(&greedy(&next, 10), 3));
        assert!(
            again.stats.speculative.as_ref().is_some_and(|s| s.draft_cached_tokens > 0),
            "the draft's cache is reused"
        );
        assert_eq!(again.ids(), run(&plain_kit, greedy(&next, 10)).ids(), "follow-up, {cache:?}");
    }
}

#[test]
fn a_seed_gives_the_plain_tokens_with_a_draft() {
    let (main, draft) = main_and_4bit_draft();
    let kit = with_draft(main.path(), draft.path(), CacheConfig::default());
    let p = prompt(6, Tok::ByteLevel, 1);
    let mut accepted = 0;
    for seed in 0..6 {
        let sampled = GenerateRequest {
            sampling: SamplingOverrides { temp: Some(0.9), top_p: Some(0.95), seed: Some(seed), ..Default::default() },
            ..greedy(&p, 24)
        };
        let want = run(&kit, plain(&sampled));
        let got = run(&kit, drafted(&sampled, 3));
        assert_eq!(got.ids(), want.ids(), "seed {seed}");
        assert_eq!(got.stats.seed, seed);
        accepted += got.stats.speculative.expect("stats").accepted;
        // With processors the draft reads its history on the host; the tokens stay the same.
        let penalised = GenerateRequest {
            sampling: SamplingOverrides { repetition_penalty: Some(1.3), ..sampled.sampling.clone() },
            ..sampled.clone()
        };
        assert_eq!(run(&kit, drafted(&penalised, 2)).ids(), run(&kit, plain(&penalised)).ids(), "seed {seed}");
    }
    assert!(accepted > 0, "the draft shares the main model's sampling noise and is accepted sometimes");
}

/// `P(t1, t2, t3)` of `model`'s first three tokens after `prompt`, sampling with top-k `k` at
/// `temp`, computed exactly from one forward pass per prefix.
fn exact_distribution(dir: &Path, prompt: &[u32], k: usize, temp: f32) -> Vec<(Vec<u32>, f64)> {
    let m = load(dir, DtypeChoice::F32);
    let next = |seq: &[u32]| -> Vec<(u32, f64)> {
        let logits = last_position(&full_forward(&m, seq)).to_vec_f32().expect("logits");
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.truncate(k);
        let top = logits[order[0] as usize] as f64;
        let w: Vec<f64> = order.iter().map(|&t| ((logits[t as usize] as f64 - top) / temp as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        order.into_iter().zip(w.into_iter().map(|x| x / total)).collect()
    };
    let mut out = vec![(Vec::new(), 1.0)];
    for _ in 0..3 {
        let mut deeper = Vec::new();
        for (seq, p) in out {
            let full: Vec<u32> = prompt.iter().chain(&seq).copied().collect();
            for (t, q) in next(&full) {
                let mut s = seq.clone();
                s.push(t);
                deeper.push((s, p * q));
            }
        }
        out = deeper;
    }
    out
}

/// Pearson's statistic of `observed` against `expected` (cells under 5 expected counts merged
/// into one) and the 0.1% critical value of its chi-square distribution (Wilson-Hilferty).
fn chi_square(expected: &[(Vec<u32>, f64)], observed: &std::collections::HashMap<Vec<u32>, usize>) -> (f64, f64) {
    let n: usize = observed.values().sum();
    let (mut stat, mut cells) = (0.0, 0);
    let (mut rest_e, mut rest_o) = (0.0, n as f64);
    for (seq, p) in expected {
        let e = p * n as f64;
        let o = *observed.get(seq).unwrap_or(&0) as f64;
        if e >= 5.0 {
            stat += (o - e).powi(2) / e;
            cells += 1;
            rest_o -= o;
        } else {
            rest_e += e;
        }
    }
    if rest_o > 0.0 || rest_e > 0.0 {
        stat += if rest_e > 0.0 { (rest_o - rest_e).powi(2) / rest_e } else { f64::INFINITY };
        cells += 1;
    }
    let df = (cells - 1) as f64;
    let z = 3.09; // one-sided 0.1%
    let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (stat, crit)
}

#[test]
fn sampling_with_a_draft_keeps_the_main_models_distribution() {
    let (main, draft) = main_and_4bit_draft();
    let p = prompt(5, Tok::ByteLevel, 4);
    let (top_k, temp) = (4, 1.5);
    let kit = with_draft(main.path(), draft.path(), CacheConfig::default());
    let mut counts = std::collections::HashMap::new();
    let (mut proposed, mut accepted) = (0, 0);
    let samples = 800;
    for seed in 0..samples {
        let req = GenerateRequest {
            sampling: SamplingOverrides {
                temp: Some(temp),
                top_k: Some(top_k),
                seed: Some(seed),
                ..Default::default()
            },
            ..greedy(&p, 4)
        };
        let r = run(&kit, drafted(&req, 3));
        let s = r.stats.speculative.clone().expect("stats");
        (proposed, accepted) = (proposed + s.drafted, accepted + s.accepted);
        *counts.entry(r.ids()[..3].to_vec()).or_insert(0) += 1;
    }
    assert!(accepted > 0 && accepted < proposed, "some drafts accepted, some not: {accepted} of {proposed}");
    let (stat, crit) = chi_square(&exact_distribution(main.path(), &p, top_k as usize, temp), &counts);
    eprintln!("chi-square against the main model: {stat:.1} (0.1% critical value {crit:.1}); {accepted} of {proposed} drafts accepted");
    assert!(stat < crit, "chi-square {stat:.1} >= {crit:.1}: the samples do not follow the main model");
    // The test can fail: the same samples are rejected as another model's distribution and as
    // the main model's at another temperature.
    let other = TinyModel::printable(11).write_temp();
    let (stat, crit) = chi_square(&exact_distribution(other.path(), &p, top_k as usize, temp), &counts);
    eprintln!("against another model: {stat:.1} ({crit:.1})");
    assert!(stat > crit, "another model's distribution should not fit: chi-square {stat:.1} < {crit:.1}");
    let (stat, crit) = chi_square(&exact_distribution(main.path(), &p, top_k as usize, 2.5), &counts);
    eprintln!("against the main model at temperature 2.5: {stat:.1} ({crit:.1})");
    assert!(stat > crit, "another temperature should not fit: chi-square {stat:.1} < {crit:.1}");
}

#[test]
fn a_stop_string_inside_an_accepted_run_ends_there_and_the_cache_stays_right() {
    let dir = TinyModel::printable(3).write_temp();
    let p = prompt(6, Tok::ByteLevel, 1);
    let kit = with_draft(dir.path(), dir.path(), CacheConfig::default());
    let base = run(&kit, drafted(&greedy(&p, 40), 4));
    let flags = base.flags();
    // Each token is one character here. A stop string whose first occurrence ends on an
    // accepted draft with more of its round still queued behind it.
    let chars: Vec<String> = base.tokens.iter().map(|t| t.text.clone()).collect();
    let (end, stop) = (3..38)
        .filter(|&e| flags[e] == Some(true) && flags[e + 1] == Some(true))
        .map(|e| (e, chars[e - 2..=e].concat()))
        .find(|(e, stop)| base.text.find(stop.as_str()) == Some(chars[..e - 2].concat().len()))
        .expect("a stop string ending inside a round");
    let req = GenerateRequest { stop_strings: vec![stop.clone()], ..drafted(&greedy(&p, 40), 4) };
    let got = run(&kit, req.clone());
    assert_eq!(got.reason, StopReason::StopString);
    assert_eq!(got.text, chars[..end - 2].concat(), "the text up to the stop string");
    assert_eq!(got.tokens.len(), end + 1, "tokens through the one completing the stop string");
    assert_eq!(got.tokens.last().and_then(|t| t.from_draft), Some(true), "it completed on an accepted draft");
    assert_eq!(got.ids(), run(&kit, plain(&req)).ids(), "the same stop without a draft");
    // The caches hold the whole round (beyond the stop); a follow-up on what was returned
    // trims them back and decodes what a fresh model does.
    let mut next = p.clone();
    next.extend(got.ids());
    next.extend(prompt(2, Tok::ByteLevel, 9));
    let again = run(&kit, drafted(&greedy(&next, 12), 4));
    assert!(again.stats.cached_tokens > p.len(), "the main cache is reused");
    assert_eq!(again.ids(), run(&kit_with(dir.path(), CacheConfig::default()), greedy(&next, 12)).ids());
}

#[test]
fn max_tokens_anywhere_in_a_round_gives_exactly_the_plain_prefix() {
    let (main, draft) = main_and_4bit_draft();
    let p = prompt(6, Tok::ByteLevel, 1);
    let kit = with_draft(main.path(), draft.path(), CacheConfig::default());
    let want = run(&kit, plain(&greedy(&p, 20)));
    for n in 1..=20 {
        let got = run(&kit, drafted(&greedy(&p, n), 4));
        assert_eq!(got.ids(), want.ids()[..n], "max_tokens {n}");
        assert_eq!((got.reason, got.stats.generated_tokens), (StopReason::TokenLimit, n));
        let s = got.stats.speculative.expect("stats");
        // After the first token, each round commits its accepted drafts and one token of the
        // main model's, and never more than the budget has left.
        assert_eq!(s.accepted + s.rounds, n - 1, "max_tokens {n}: {s:?}");
        if n <= 2 {
            assert_eq!(s.drafted, 0, "max_tokens {n}: no room for a draft");
        }
    }
}

#[test]
fn cancelling_mid_generation_ends_with_user_cancelled_and_the_caches_stay_usable() {
    let dir = TinyModel::printable(3).write_temp();
    let p = prompt(6, Tok::ByteLevel, 1);
    let kit = with_draft(dir.path(), dir.path(), CacheConfig::default());
    let (tokens, reason) = cancel_after_first_token(&mut kit.generate(drafted(&greedy(&p, 50), 3)).expect("start"));
    assert_eq!(reason, Some(StopReason::UserCancelled));
    assert!((1..50).contains(&tokens), "stopped early: {tokens} tokens");
    let want = run(&kit_with(dir.path(), CacheConfig::default()), greedy(&p, 20));
    assert_eq!(run(&kit, drafted(&greedy(&p, 20), 3)).ids(), want.ids(), "the next request decodes as before");
}
