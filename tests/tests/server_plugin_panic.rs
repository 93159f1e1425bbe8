//! A plugin that panics on one request does not take `mlx-engine serve` down. The fixture's
//! `panic_on_token` variant panics in `forward` whenever its input holds `PANIC_TOKEN`:
//! - in a prompt, the request fails in prefill: 500 with an OpenAI error object, or for a stream
//!   an `error` event and then `[DONE]`;
//! - as a generated token (forced with `logit_bias`), it is fed to the batched decode step of
//!   rows that are decoding with it: that step fails, its rows retry alone, and only the
//!   request whose own step panics fails; the others finish with the tokens they get alone;
//! - the next request is answered normally, from the shared prompt cache that survived.

use std::io::{BufRead, BufReader};
use std::path::Path;

use mlx_engine::api::io::save_safetensors;
use mlx_engine::plugin_host::HostOptions;
use mlx_engine::server::scheduler::Limits;
use mlx_engine::server::{Running, ServeConfig};
use mlx_engine::{LoadOptions, ModelKit};
use mlx_engine_tests::{install, lib_name, tiny_config, tiny_weights, Variant, PANIC_MESSAGE, PANIC_TOKEN};
use serde_json::{json, Value};

/// A `tiny` model folder: the fixture's config and random weights, and a word-level
/// tokenizer over the fixture's 64 ids (`w0` .. `w63`; id 0 is also EOS).
fn write_model(dir: &Path) {
    let mut config = tiny_config();
    config["eos_token_id"] = json!(0);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let weights = tiny_weights(11);
    let arrays: Vec<(&str, &mlx_engine::api::Array)> = weights.iter().collect();
    save_safetensors(&dir.join("model.safetensors"), &arrays, &[]).unwrap();
    let vocab: serde_json::Map<String, Value> = (0..64).map(|i| (format!("w{i}"), json!(i))).collect();
    let tokenizer = json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w1"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), json!({"eos_token": "w0"}).to_string()).unwrap();
}

fn url(server: &Running, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

/// POSTs `body`; the status and the body as text.
fn post(server: &Running, body: &Value) -> (u16, String) {
    match ureq::post(&url(server, "/v1/completions")).send_string(&body.to_string()) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// A greedy completion of token ids that never produces the panic token (nor EOS).
fn good(prompt: &[u32], max_tokens: usize) -> Value {
    json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
           "logit_bias": {PANIC_TOKEN.to_string(): -100, "0": -100}})
}

/// The text and usage of a successful non-streaming completion.
fn completion(server: &Running, body: &Value) -> (String, Value) {
    let (status, text) = post(server, body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    (v["choices"][0]["text"].as_str().unwrap().to_string(), v["usage"].clone())
}

fn assert_panic_error(status: u16, body: &str) {
    assert_eq!(status, 500, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(PANIC_MESSAGE), "{v}");
}

/// A streamed completion from `base` (`http://ADDR`), read event by event: each `data:`
/// payload is sent down `events`.
fn stream(base: &str, body: &Value, events: std::sync::mpsc::Sender<String>) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let r = ureq::post(&format!("{base}/v1/completions")).send_string(&body.to_string()).expect("stream starts");
    for line in BufReader::new(r.into_reader()).lines() {
        if let Some(data) = line.unwrap().strip_prefix("data: ") {
            if events.send(data.to_string()).is_err() {
                return;
            }
        }
    }
}

/// The text of a stream's events, checking that it ended with `[DONE]` and no error.
fn stream_text(events: &[String]) -> String {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    text
}

fn metric(server: &Running, name: &str) -> f64 {
    let text = ureq::get(&url(server, "/metrics")).call().unwrap().into_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn a_plugin_panic_fails_only_its_request_and_the_server_answers_the_next() {
    let plugins = tempfile::tempdir().unwrap();
    install(Variant::PanicOnToken, plugins.path(), &lib_name("tiny"));
    let model = tempfile::tempdir().unwrap();
    write_model(model.path());
    let options =
        LoadOptions { plugins: HostOptions::isolated(vec![plugins.path().into()], None), ..Default::default() };
    let kit = ModelKit::load(model.path(), options).expect("load the tiny model");
    let config = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        model_id: "tiny".into(),
        api_key: None,
        limits: Limits {
            max_concurrency: 4,
            queue: 4,
            prefill_chunk: 256,
            speculation: Default::default(),
            num_draft_tokens: 3,
        },
        max_body_bytes: 1 << 20,
    };
    let server = Running::start(kit, &config).expect("start the server");

    // What each well-behaved request produces alone.
    const LONG: usize = 160;
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4], &[5, 6, 7], &[8, 9, 10, 11, 12]];
    let alone: Vec<String> = prompts.iter().map(|p| completion(&server, &good(p, LONG)).0).collect();
    assert!(alone.iter().all(|t| t.split_whitespace().count() == LONG), "{alone:?}");

    // The panic token in a prompt: prefill panics.
    let bad_prompt = good(&[1, PANIC_TOKEN, 2], 8);
    let (status, body) = post(&server, &bad_prompt);
    assert_panic_error(status, &body);
    let (tx, rx) = std::sync::mpsc::channel();
    stream(&url(&server, ""), &bad_prompt, tx);
    let events: Vec<String> = rx.iter().collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{events:?}");
    assert!(error["error"]["message"].as_str().unwrap().contains(PANIC_MESSAGE), "{events:?}");

    // The next request is answered, and from the prompt cache its earlier twin left.
    let (text, usage) = completion(&server, &good(prompts[0], LONG));
    assert_eq!(text, alone[0]);
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{usage}");

    // The panic token generated by one row of a running batch: the batched step fails and is
    // retried row by row; only the row that feeds the token fails.
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = std::sync::mpsc::channel();
            let body = good(p, LONG);
            let base = url(&server, "");
            let s = std::thread::spawn(move || stream(&base, &body, tx));
            (s, rx)
        })
        .collect();
    // Every stream has produced text, so all three rows are decoding.
    let mut got: Vec<Vec<String>> = vec![Vec::new(); streams.len()];
    for (i, (_, rx)) in streams.iter().enumerate() {
        while got[i].len() < 3 {
            got[i].push(rx.recv().expect("an event"));
        }
    }
    let failed_rows_before = metric(&server, "mlx_engine_failed_batch_rows_total");
    let forced = json!({"model": "tiny", "prompt": [20, 21], "max_tokens": 4, "temperature": 0,
                        "logit_bias": {PANIC_TOKEN.to_string(): 100}});
    let (status, body) = post(&server, &forced);
    assert_panic_error(status, &body);
    for (i, (s, rx)) in streams.into_iter().enumerate() {
        s.join().unwrap();
        got[i].extend(rx.iter());
        assert_eq!(stream_text(&got[i]), alone[i], "stream {i} vs alone");
    }
    // The failed step carried the forced row and at least one of the others.
    let failed_rows = metric(&server, "mlx_engine_failed_batch_rows_total") - failed_rows_before;
    assert!(failed_rows >= 2.0, "the failing batched step held {failed_rows} rows");

    // And the server goes on.
    assert_eq!(completion(&server, &good(prompts[2], LONG)).0, alone[2]);
    let health: Value = ureq::get(&url(&server, "/health")).call().unwrap().into_json().unwrap();
    assert_eq!(health["status"], "ok");
    server.stop().expect("graceful stop");
}
