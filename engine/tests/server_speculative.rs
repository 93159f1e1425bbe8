//! Speculative decoding in the server: a row decoding alone drafts (with the draft model, or
//! by prompt lookup) and a batch of several decodes plainly, switching as rows come and go.
//! Greedy text is what plain decoding gives in every case, stop strings included, and the
//! metrics count the rounds and the accepted drafts.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod speculative_util;
mod tokenizer_fixtures;

use common_models::TinyModel;
use mlx_engine::cache::CacheConfig;
use mlx_engine::generate::GenerateRequest;
use mlx_engine::server::scheduler::Limits;
use mlx_engine::server::{Running, ServeConfig};
use mlx_engine::speculative::Speculation;
use mlx_engine::ModelKit;
use std::io::{BufRead, BufReader};

use serde_json::{json, Value};
use speculative_util::*;

fn serve(kit: ModelKit, speculation: Speculation) -> Running {
    // Reference runs went through the kit's prompt caches: the server starts cold.
    kit.clear_prompt_cache().unwrap();
    let config = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        model_id: "tiny".into(),
        api_key: None,
        limits: Limits { max_concurrency: 4, queue: 8, prefill_chunk: 16, speculation, num_draft_tokens: 3 },
        max_body_bytes: 1 << 20,
    };
    Running::start(kit, &config).expect("start the server")
}

fn post(server: &Running, body: &Value) -> (u16, Value) {
    let url = format!("http://{}/v1/completions", server.addr());
    match ureq::post(&url).send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn body(prompt: &[u32], max_tokens: usize) -> Value {
    json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn text(server: &Running, body: &Value) -> String {
    let (status, v) = post(server, body);
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

fn metric(server: &Running, name: &str) -> f64 {
    let text = ureq::get(&format!("http://{}/metrics", server.addr())).call().unwrap().into_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Byte-level ids of lowercase text.
fn ids(s: &str) -> Vec<u32> {
    s.bytes().map(|b| u32::from(b) + 3).collect()
}

/// The plain greedy text of each prompt, from the library (EOS ends it, as in the server).
fn references(kit: &ModelKit, cases: &[(Vec<u32>, usize)]) -> Vec<String> {
    cases.iter().map(|(p, n)| run(kit, plain(&GenerateRequest { ignore_eos: false, ..greedy(p, *n) })).text).collect()
}

/// The first case streamed; once it has decoded a few tokens alone (drafting), the others
/// join it in a batch; after they leave, it decodes alone again, its draft catching up on the
/// tokens it decoded plainly meanwhile. The texts, in order.
fn together(server: &Running, cases: &[(Vec<u32>, usize)]) -> Vec<String> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let first = s.spawn(move || {
            // One draft per round: the row alone stays slow enough for the others to join.
            let mut b = body(&cases[0].0, cases[0].1);
            b["stream"] = json!(true);
            b["num_draft_tokens"] = json!(1);
            let url = format!("http://{}/v1/completions", server.addr());
            let r = ureq::post(&url).send_json(b).expect("the stream starts");
            let mut text = String::new();
            for line in BufReader::new(r.into_reader()).lines() {
                let line = line.unwrap();
                let Some(data) = line.strip_prefix("data: ").filter(|d| *d != "[DONE]") else { continue };
                let v: Value = serde_json::from_str(data).unwrap();
                text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
                let _ = tx.send(text.len());
            }
            text
        });
        while rx.recv().is_ok_and(|n| n < 8) {}
        let rest: Vec<_> = cases[1..].iter().map(|(p, n)| s.spawn(move || text(server, &body(p, *n)))).collect();
        let mut out = vec![first.join().unwrap()];
        out.extend(rest.into_iter().map(|h| h.join().unwrap()));
        out
    })
}

/// The model drafting for itself agrees with every greedy draft, so any draft the server feeds
/// out of step with a row's sequence (joining a batch and leaving it, a follow-up reusing the
/// draft's prompt cache) shows as a rejection.
#[test]
fn a_row_alone_drafts_and_a_batch_decodes_plainly_with_the_draft_in_step_throughout() {
    let main = TinyModel::printable(3).write_temp();
    let kit = with_draft(main.path(), main.path(), CacheConfig::default());
    // The tiny model's context is 64 tokens.
    let cases = vec![(ids("the"), 60), (ids("a cat"), 12), (ids("over the lazy"), 24)];
    let mut want = references(&kit, &cases);
    let follow = [ids("a cat"), ids(&want[1]), ids(" and")].concat();
    want.extend(references(&kit, &[(follow.clone(), 16)]));
    let server = serve(kit, Speculation::Auto);

    assert_eq!(text(&server, &body(&cases[0].0, cases[0].1)), want[0]);
    let rounds = metric(&server, "mlx_engine_speculative_rounds_total");
    assert!(rounds > 0.0);
    assert!(metric(&server, "mlx_engine_generated_tokens_total") > rounds, "drafts saved passes");

    let batched = metric(&server, "mlx_engine_batched_steps_total");
    assert_eq!(together(&server, &cases), want[..3]);
    assert!(metric(&server, "mlx_engine_batched_steps_total") > batched, "the rows shared decode steps");
    assert!(metric(&server, "mlx_engine_speculative_rounds_total") > rounds);

    // A follow-up of the short one: the draft's prompt cache holds its sequence.
    assert_eq!(text(&server, &body(&follow, 16)), want[3]);
    let drafted = metric(&server, "mlx_engine_draft_tokens_total");
    assert!(drafted > 0.0);
    assert_eq!(metric(&server, "mlx_engine_accepted_draft_tokens_total"), drafted, "every draft accepted");
    server.stop().unwrap();
}

/// A draft that is often wrong (the model's 4-bit copy): rejected drafts are rewound, and the
/// text is still plain decoding's, also where a stop string falls inside a round's drafts.
#[test]
fn rejected_drafts_and_stop_strings_inside_a_round_leave_the_plain_text() {
    let (main, draft) = main_and_4bit_draft();
    let kit = with_draft(main.path(), draft.path(), CacheConfig::default());
    let cases = vec![(ids("the quick"), 44), (ids("a cat"), 12), (ids("over the lazy"), 24)];
    let want = references(&kit, &cases);
    let server = serve(kit, Speculation::Auto);
    assert_eq!(text(&server, &body(&cases[0].0, cases[0].1)), want[0]);
    let (drafted, accepted) =
        (metric(&server, "mlx_engine_draft_tokens_total"), metric(&server, "mlx_engine_accepted_draft_tokens_total"));
    assert!(accepted > 0.0 && accepted < drafted, "{accepted} of {drafted} drafts accepted");
    assert_eq!(together(&server, &cases), want);

    let stop: String = want[0].chars().skip(20).take(3).collect();
    let cut = &want[0][..want[0].find(&stop).unwrap()];
    let mut b = body(&cases[0].0, cases[0].1);
    b["stop"] = json!(stop);
    assert_eq!(text(&server, &b), cut);

    // The request's draft length, checked by name.
    b["num_draft_tokens"] = json!(0);
    let (status, v) = post(&server, &b);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("num_draft_tokens"), "{v}");
    b["num_draft_tokens"] = json!(6);
    assert_eq!(text(&server, &b), cut);
    server.stop().unwrap();
}

#[test]
fn prompt_lookup_drafts_for_a_row_alone_without_a_draft_model() {
    let main = TinyModel::printable(3).write_temp();
    let kit = kit_with(main.path(), CacheConfig::default());
    // A prompt that repeats itself: lookup finds what followed its n-grams before.
    let p = ids("abc abd abc abd abc");
    let want = references(&kit, &[(p.clone(), 40)]);
    let server = serve(kit, Speculation::prompt_lookup());
    assert_eq!(text(&server, &body(&p, 40)), want[0]);
    assert!(metric(&server, "mlx_engine_speculative_rounds_total") > 0.0);
    assert!(metric(&server, "mlx_engine_draft_tokens_total") > 0.0);
    server.stop().unwrap();
}
