//! The sampler, its filters, the logits processors and top_logprobs, on small vocabularies with
//! hand-computed expectations (CPU backend).

use std::collections::BTreeMap;

use mlx_engine::api::{Array, Dtype};
use mlx_engine::sample::*;

fn init() {
    let _ = mlx_engine::mlx::ffi::ops_table();
}

fn arr(v: &[f32]) -> Array {
    Array::from_slice(v, &[v.len() as i32]).unwrap()
}

fn read(a: &Array) -> Vec<f32> {
    a.to_vec_f32().unwrap()
}

/// Probabilities at shuffled positions; sorted: 0.40 (id 1), 0.25 (4), 0.15 (3), 0.10 (6),
/// 0.05 (0), 0.03 (7), 0.015 (5), 0.005 (2).
const PROBS: [f32; 8] = [0.05, 0.40, 0.005, 0.15, 0.25, 0.015, 0.10, 0.03];

fn logprobs() -> Array {
    arr(&PROBS.map(f32::ln))
}

/// The ids a filter kept, checking that kept values are unchanged and the rest are -inf.
fn kept(filtered: &Array) -> Vec<usize> {
    let out = read(filtered);
    let mut ids = Vec::new();
    for (i, (&o, p)) in out.iter().zip(PROBS).enumerate() {
        if o == f32::NEG_INFINITY {
            continue;
        }
        assert!((o - p.ln()).abs() < 1e-6, "id {i}: {o} vs {}", p.ln());
        ids.push(i);
    }
    ids
}

fn host_log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
    x.iter().map(|v| v - lse).collect()
}

fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
    let mut p = SamplingParams::default();
    f(&mut p);
    Sampler::new(&p).unwrap()
}

fn draws(s: &mut Sampler, logits: &Array, n: usize) -> Vec<u32> {
    (0..n).map(|_| s.sample(logits).unwrap().token).collect()
}

// --- filters ----------------------------------------------------------------------------------

#[test]
fn top_p_keeps_exactly_the_nucleus() {
    init();
    // Ascending cumulative mass: .005 .02 .05 .10 .20 .35 .60 1.0.
    assert_eq!(kept(&apply_top_p(&logprobs(), 0.7).unwrap()), vec![1, 3, 4]);
    assert_eq!(kept(&apply_top_p(&logprobs(), 0.85).unwrap()), vec![1, 3, 4, 6]);
    assert_eq!(kept(&apply_top_p(&logprobs(), 0.01).unwrap()), vec![1]);
    assert_eq!(kept(&apply_top_p(&logprobs(), 1.0).unwrap()).len(), 8);
    assert_eq!(kept(&apply_top_p(&logprobs(), 0.0).unwrap()).len(), 8);
}

#[test]
fn min_p_honours_min_tokens_to_keep() {
    init();
    // Threshold 0.3 * 0.40 = 0.12.
    assert_eq!(kept(&apply_min_p(&logprobs(), 0.3, 1).unwrap()), vec![1, 3, 4]);
    assert_eq!(kept(&apply_min_p(&logprobs(), 0.3, 5).unwrap()), vec![0, 1, 3, 4, 6]);
    assert_eq!(kept(&apply_min_p(&logprobs(), 1.0, 1).unwrap()), vec![1]);
    assert_eq!(kept(&apply_min_p(&logprobs(), 0.0, 1).unwrap()).len(), 8);
}

#[test]
fn top_k_keeps_the_k_largest() {
    init();
    assert_eq!(kept(&apply_top_k(&logprobs(), 3).unwrap()), vec![1, 3, 4]);
    assert_eq!(kept(&apply_top_k(&logprobs(), 1).unwrap()), vec![1]);
    assert_eq!(kept(&apply_top_k(&logprobs(), 8).unwrap()).len(), 8);
    assert_eq!(kept(&apply_top_k(&logprobs(), 0).unwrap()).len(), 8);
}

#[test]
fn filters_combine_top_p_then_min_p_then_top_k() {
    init();
    // top_p 0.95 -> {0,1,3,4,6}; min_p 0.1 (>= 0.04) keeps those; top_k 4 drops id 0.
    let x = apply_top_p(&logprobs(), 0.95).unwrap();
    assert_eq!(kept(&x), vec![0, 1, 3, 4, 6]);
    let x = apply_min_p(&x, 0.1, 1).unwrap();
    assert_eq!(kept(&x), vec![0, 1, 3, 4, 6]);
    let x = apply_top_k(&x, 4).unwrap();
    assert_eq!(kept(&x), vec![1, 3, 4, 6]);
    // The sampler applies the same chain: only those ids are ever drawn.
    let mut s = sampler(|p| {
        p.temp = 5.0;
        p.top_p = 0.95;
        p.min_p = 0.1;
        p.top_k = 4;
        p.seed = Some(3);
    });
    let seen: std::collections::BTreeSet<u32> = draws(&mut s, &logprobs(), 300).into_iter().collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3, 4, 6]);
}

// --- sampler ----------------------------------------------------------------------------------

#[test]
fn greedy_picks_argmax_for_any_shape_and_dtype() {
    init();
    let mut s = sampler(|_| {});
    assert!(s.is_greedy());
    assert_eq!(s.sample(&logprobs()).unwrap().token, 1);
    let bf = arr(&[0.5, -1.0, 3.0, 2.5]).reshape(&[1, 4]).unwrap().astype(Dtype::BF16).unwrap();
    let out = s.sample(&bf).unwrap();
    assert_eq!(out.token, 2);
    assert_eq!((out.logprobs.shape(), out.logprobs.dtype()), (vec![4], Dtype::F32));
    assert!(s.sample(&Array::zeros(&[2, 4], Dtype::F32).unwrap()).is_err());
}

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() {
    init();
    let logits = arr(&[0.0; 8]);
    let run = |seed| draws(&mut sampler(|p| (p.temp, p.seed) = (1.0, Some(seed))), &logits, 12);
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    assert_eq!(sampler(|p| (p.temp, p.seed) = (1.0, Some(42))).seed(), 42);
    // The lazy path draws the same tokens.
    let mut s = sampler(|p| (p.temp, p.seed) = (1.0, Some(42)));
    let lazy: Vec<u32> = (0..12).map(|_| s.sample_lazy(&logits).unwrap().token.item::<u32>().unwrap()).collect();
    assert_eq!(lazy, run(42));
    // Unseeded samplers draw (and report) a seed, different from one request to the next.
    let a = sampler(|p| p.temp = 1.0).seed();
    let b = sampler(|p| p.temp = 1.0).seed();
    assert!(a != b && a <= u32::MAX as u64);
}

#[test]
fn frequencies_match_softmax_over_temperature() {
    init();
    let logits = arr(&[0.1f32.ln(), 0.2f32.ln(), 0.3f32.ln(), 0.4f32.ln()]);
    let mut s = sampler(|p| (p.temp, p.seed) = (0.5, Some(1234)));
    let n = 2000;
    let mut counts = [0usize; 4];
    for t in draws(&mut s, &logits, n) {
        counts[t as usize] += 1;
    }
    // softmax(log p / 0.5) = p^2 / sum p^2 = [1, 4, 9, 16] / 30.
    for (i, w) in [1.0, 4.0, 9.0, 16.0].iter().enumerate() {
        let got = counts[i] as f64 / n as f64;
        assert!((got - w / 30.0).abs() < 0.035, "token {i}: {got} vs {}", w / 30.0);
    }
}

#[test]
fn filtered_tokens_never_appear() {
    init();
    let logits = arr(&[1.0, 1.1, 0.9, 1.2, 1.0, 0.8, 1.05, 0.95]);
    let mut s = sampler(|p| (p.temp, p.top_k, p.seed) = (2.0, 2, Some(9)));
    assert!(draws(&mut s, &logits, 300).iter().all(|&t| t == 3 || t == 1));
}

#[test]
fn logprobs_are_log_softmax_unaffected_by_temp_and_filters() {
    init();
    let raw = [2.0f32, -1.0, 0.5, 3.0, 0.0];
    let expected = host_log_softmax(&raw);
    for mut s in [sampler(|_| {}), sampler(|p| (p.temp, p.top_k, p.top_p, p.seed) = (0.3, 1, 0.5, Some(1)))] {
        let out = s.sample(&arr(&raw)).unwrap();
        for (a, b) in read(&out.logprobs).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}

#[test]
fn logprobs_are_taken_after_the_processors() {
    init();
    let raw = [2.0f32, -1.0, 0.5, 3.0];
    let mut params = SamplingParams { repetition_penalty: Some(2.0), ..Default::default() };
    params.logit_bias.insert(2, 1.0);
    let mut procs = processors_for(&params).unwrap();
    let processed = apply_processors(&mut procs, &[3, 1], &arr(&raw)).unwrap();
    let expected = host_log_softmax(&[2.0, -2.0, 1.5, 1.5]);
    let out = Sampler::new(&params).unwrap().sample(&processed).unwrap();
    assert_eq!(out.token, 0);
    for (a, b) in read(&out.logprobs).iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5);
    }
}

// --- top_logprobs -----------------------------------------------------------------------------

#[test]
fn top_logprobs_sorted_limited_and_ties_by_id() {
    init();
    let top = top_logprobs(&logprobs(), 3).unwrap();
    let ids: Vec<u32> = top.iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![1, 4, 3]);
    assert!((top[0].1 - 0.4f32.ln()).abs() < 1e-6);
    assert_eq!(top_logprobs(&logprobs(), 0).unwrap(), vec![]);
    assert_eq!(top_logprobs(&logprobs(), 20).unwrap().len(), 8);
    let ninf = f32::NEG_INFINITY;
    let tied = arr(&[ninf, 3.0, ninf, 1.0, 3.0, 3.0, ninf, 2.0]);
    let ids = |n| top_logprobs(&tied, n).unwrap().into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(ids(2), vec![1, 4]);
    assert_eq!(ids(4), vec![1, 4, 5, 7]);
    assert_eq!(ids(7), vec![1, 4, 5, 7, 3, 0, 2]);
    // Another vocabulary size on the same thread, then the first again: the ids the tie check
    // builds once per size follow the logprobs' size.
    let wider = arr(&[ninf, ninf, ninf, 3.0, ninf, 3.0, ninf, ninf, ninf, 3.0]);
    let wide_ids: Vec<u32> = top_logprobs(&wider, 5).unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(wide_ids, vec![3, 5, 9, 0, 1]);
    assert_eq!(ids(7), vec![1, 4, 5, 7, 3, 0, 2]);
    assert_eq!(
        top_logprobs(&logprobs(), 21).unwrap_err().to_string(),
        "invalid parameter `top_logprobs`: must be in [0, 20], got 21"
    );
}

// --- processors -------------------------------------------------------------------------------

#[test]
fn repetition_penalty_within_the_window_only() {
    init();
    let logits = arr(&[2.0, -2.0, 1.0, -1.0, 0.5, 3.0]);
    // Window of 3 over [5, 0, 1, 0, 3] is [1, 0, 3]; token 5 is outside it.
    let mut p = RepetitionPenalty::new(2.0, 3);
    assert_eq!(read(&p.process(&[5, 0, 1, 0, 3], &logits).unwrap()), vec![1.0, -4.0, 1.0, -2.0, 0.5, 3.0]);
    // Window 0 = the whole history, and [1, vocab] logits keep their shape.
    let mut p = RepetitionPenalty::new(2.0, 0);
    let out = p.process(&[5, 0], &logits.reshape(&[1, 6]).unwrap()).unwrap();
    assert_eq!(out.shape(), vec![1, 6]);
    assert_eq!(read(&out), vec![1.0, -2.0, 1.0, -1.0, 0.5, 1.5]);
    assert_eq!(read(&p.process(&[], &logits).unwrap()), read(&logits));
}

#[test]
fn logit_bias_adds_at_ids() {
    init();
    let bias = BTreeMap::from([(2u32, 5.0f32), (0, -100.0)]);
    let mut p = LogitBias::new(&bias).unwrap();
    let out = p.process(&[], &arr(&[1.0, 1.0, 1.0, 1.0])).unwrap();
    assert_eq!(read(&out), vec![-99.0, 1.0, 6.0, 1.0]);
    let bf = arr(&[1.0, 1.0, 1.0]).astype(Dtype::BF16).unwrap();
    let out = p.process(&[], &bf).unwrap();
    assert_eq!((out.dtype(), read(&out)), (Dtype::BF16, vec![-99.0, 1.0, 6.0]));
    let mut far = LogitBias::new(&BTreeMap::from([(3u32, 1.0f32)])).unwrap();
    assert!(far.process(&[], &bf).is_err());
}

#[test]
fn presence_and_frequency_penalties_count_generated_tokens() {
    init();
    let logits = arr(&[0.0; 6]);
    let mut p = PresenceFrequencyPenalty::new(0.5, 0.25, 0);
    // First call: the history is the prompt, which is not penalised.
    assert_eq!(read(&p.process(&[1, 1, 2], &logits).unwrap()), vec![0.0; 6]);
    // Generated: 3, 3, 4 -> token 3: 0.5 + 2 * 0.25, token 4: 0.5 + 0.25.
    let out = p.process(&[1, 1, 2, 3, 3, 4], &logits).unwrap();
    assert_eq!(read(&out), vec![0.0, 0.0, 0.0, -1.0, -0.75, 0.0]);
    // A window of 2 generated tokens sees [3, 4].
    let mut p = PresenceFrequencyPenalty::new(0.5, 0.25, 2).with_prompt_len(3);
    let out = p.process(&[1, 1, 2, 3, 3, 4], &logits).unwrap();
    assert_eq!(read(&out), vec![0.0, 0.0, 0.0, -0.75, -0.75, 0.0]);
}

/// Running ahead (the last token still on the device) gives exactly what the host path gives on
/// the full history, for every processor, window and history shape, repeated ids included.
#[test]
fn processors_run_ahead_as_on_the_host() {
    init();
    let vocab = 7u32;
    let logits = arr(&[1.5, -0.5, 2.0, -3.0, 0.25, 0.0, -1.0]);
    // A small deterministic generator: histories of 1-12 ids over a 7-token vocabulary (many repeats).
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let bias = BTreeMap::from([(2u32, 1.5f32), (5, -4.0)]);
    for case in 0..60 {
        let len = 1 + (next() % 12) as usize;
        let history: Vec<u32> = (0..len).map(|_| next() % vocab).collect();
        let prompt_len = (next() as usize) % len;
        let window = (next() % 5) as usize;
        let (before, last) = history.split_at(len - 1);
        let pending = Array::from_slice(last, &[1]).unwrap();
        let mut host: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(LogitBias::new(&bias).unwrap()),
            Box::new(RepetitionPenalty::new(1.7, window)),
            Box::new(PresenceFrequencyPenalty::new(0.5, 0.3, window).with_prompt_len(prompt_len)),
        ];
        let mut ahead: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(LogitBias::new(&bias).unwrap()),
            Box::new(RepetitionPenalty::new(1.7, window)),
            Box::new(PresenceFrequencyPenalty::new(0.5, 0.3, window).with_prompt_len(prompt_len)),
        ];
        assert!(all_run_ahead(&ahead));
        for shape in [vec![7], vec![1, 7]] {
            let l = logits.reshape(&shape).unwrap();
            let want = apply_processors(&mut host, &history, &l).unwrap();
            let got = apply_processors_ahead(&mut ahead, before, &pending, &l).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_eq!(
                read(&got),
                read(&want),
                "case {case}: history {history:?}, prompt {prompt_len}, window {window}"
            );
        }
    }
}

#[test]
fn processors_for_builds_only_enabled_ones() {
    init();
    assert_eq!(processors_for(&SamplingParams::default()).unwrap().len(), 0);
    let p = SamplingParams { repetition_penalty: Some(1.0), ..Default::default() };
    assert_eq!(processors_for(&p).unwrap().len(), 0);
    let mut p = SamplingParams { repetition_penalty: Some(1.3), presence_penalty: 0.1, ..Default::default() };
    p.logit_bias.insert(1, 2.0);
    assert_eq!(processors_for(&p).unwrap().len(), 3);
}
