//! Sampling parameters: defaults, deserialization, generation_config merging, and the exact
//! text of every validation error.

use mlx_engine::sample::{SamplingOverrides, SamplingParams};
use serde_json::json;

fn err(p: &SamplingParams, vocab: usize) -> String {
    match p.validate(vocab) {
        Ok(()) => panic!("{p:?} should fail validation"),
        Err(e) => e.to_string(),
    }
}

fn with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    f(&mut p);
    p
}

#[test]
fn defaults_are_greedy_with_filters_off() {
    let p = SamplingParams::default();
    assert_eq!((p.temp, p.top_p, p.min_p, p.top_k, p.min_tokens_to_keep), (0.0, 0.0, 0.0, 0, 1));
    assert_eq!((p.repetition_penalty, p.repetition_context_size, p.penalty_context_size), (None, 20, 0));
    assert!(p.is_greedy() && p.seed.is_none() && p.logit_bias.is_empty() && p.top_logprobs == 0);
    assert!(p.validate(10).is_ok());
}

#[test]
fn deserializes_with_aliases_nulls_and_string_ids() {
    let p: SamplingParams = serde_json::from_value(json!({
        "temperature": 0.7, "top_p": null, "top_k": 40, "seed": 7,
        "logit_bias": {"5": 1.5, "9": -100}, "repetition_penalty": 1.1
    }))
    .unwrap();
    assert_eq!((p.temp, p.top_p, p.top_k, p.seed), (0.7, 0.0, 40, Some(7)));
    assert_eq!(p.logit_bias.into_iter().collect::<Vec<_>>(), vec![(5, 1.5), (9, -100.0)]);
    assert_eq!(p.repetition_penalty, Some(1.1));
    assert_eq!(p.repetition_context_size, 20);
    let empty: SamplingParams = serde_json::from_value(json!({})).unwrap();
    assert_eq!(empty, SamplingParams::default());
}

#[test]
fn generation_config_fills_gaps_and_request_wins() {
    let gc = json!({"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
                    "repetition_penalty": 1.05, "do_sample": true});
    let req = SamplingOverrides { temp: Some(0.2), top_k: Some(0), ..Default::default() };
    let p = SamplingParams::with_generation_config(&gc, &req);
    assert_eq!((p.temp, p.top_p, p.top_k, p.min_p), (0.2, 0.9, 0, 0.05));
    assert_eq!(p.repetition_penalty, Some(1.05));
    // No request values: the model's defaults.
    let p = SamplingParams::with_generation_config(&gc, &SamplingOverrides::default());
    assert_eq!((p.temp, p.top_k), (0.6, 20));
}

#[test]
fn generation_config_do_sample_false_is_greedy() {
    let gc = json!({"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2, "do_sample": false});
    let p = SamplingParams::with_generation_config(&gc, &SamplingOverrides::default());
    assert_eq!((p.temp, p.top_p, p.repetition_penalty), (0.0, 0.0, Some(1.2)));
    // The request may still ask for sampling.
    let req: SamplingOverrides = serde_json::from_value(json!({"temperature": 1.0})).unwrap();
    assert_eq!(SamplingParams::with_generation_config(&gc, &req).temp, 1.0);
}

#[test]
fn generation_config_ignores_bad_values() {
    let gc = json!({"temperature": "hot", "top_p": 7.0, "top_k": -3, "min_p": 0.1});
    let p = SamplingParams::with_generation_config(&gc, &SamplingOverrides::default());
    assert_eq!((p.temp, p.top_p, p.top_k, p.min_p), (0.0, 0.0, 0, 0.1));
}

#[test]
fn validation_messages() {
    let cases: Vec<(SamplingParams, &str)> = vec![
        (with(|p| p.temp = -0.5), "invalid parameter `temp`: must be a finite number >= 0 (0 = greedy), got -0.5"),
        (with(|p| p.temp = f32::NAN), "invalid parameter `temp`: must be a finite number >= 0 (0 = greedy), got NaN"),
        (with(|p| p.top_p = 1.5), "invalid parameter `top_p`: must be in [0, 1] (0 or 1 disables it), got 1.5"),
        (with(|p| p.top_p = f32::NAN), "invalid parameter `top_p`: must be in [0, 1] (0 or 1 disables it), got NaN"),
        (with(|p| p.min_p = -0.1), "invalid parameter `min_p`: must be in [0, 1] (0 disables it), got -0.1"),
        (with(|p| p.min_tokens_to_keep = 0), "invalid parameter `min_tokens_to_keep`: must be >= 1, got 0"),
        (with(|p| p.top_k = -1), "invalid parameter `top_k`: must be >= 0 (0 disables it), got -1"),
        (
            with(|p| p.repetition_penalty = Some(0.0)),
            "invalid parameter `repetition_penalty`: must be a finite number > 0 (1 disables it), got 0",
        ),
        (
            with(|p| p.repetition_penalty = Some(f32::NAN)),
            "invalid parameter `repetition_penalty`: must be a finite number > 0 (1 disables it), got NaN",
        ),
        (with(|p| p.presence_penalty = 2.5), "invalid parameter `presence_penalty`: must be in [-2, 2], got 2.5"),
        (
            with(|p| p.frequency_penalty = f32::NAN),
            "invalid parameter `frequency_penalty`: must be in [-2, 2], got NaN",
        ),
        (with(|p| p.top_logprobs = 21), "invalid parameter `top_logprobs`: must be in [0, 20], got 21"),
        (
            with(|p| _ = p.logit_bias.insert(10, 1.0)),
            "invalid parameter `logit_bias`: token id 10 is out of range for a vocabulary of 10 tokens (ids 0 to 9)",
        ),
        (
            with(|p| _ = p.logit_bias.insert(3, f32::NAN)),
            "invalid parameter `logit_bias`: the bias of token 3 must be a finite number, got NaN",
        ),
    ];
    for (p, msg) in cases {
        assert_eq!(err(&p, 10), msg);
    }
}

#[test]
fn boundary_values_are_accepted() {
    let p = with(|p| {
        p.temp = 0.0;
        p.top_p = 1.0;
        p.min_p = 1.0;
        p.top_k = 100_000;
        p.repetition_penalty = Some(1.0);
        p.presence_penalty = -2.0;
        p.frequency_penalty = 2.0;
        p.top_logprobs = 20;
        p.logit_bias.insert(9, -100.0);
    });
    assert!(p.validate(10).is_ok());
}
