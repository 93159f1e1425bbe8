//! Hostile inputs that used to crash, read garbage or hang: each row is the input, how it must
//! fail (exit code for the CLI, or the error of the library call) and the fragment of the
//! message that names the file, field or parameter. A failed request leaves the model serving.

mod common_models;
mod tokenizer_fixtures;

use std::time::{Duration, Instant};

use common_models::*;
use mlx_engine::generate::GenerateRequest;
use mlx_engine::model_kit::CancelHandle;
use mlx_engine::tokenizer::{ChatMessage, ChatTemplate};
use serde_json::Value;

/// `mlx-engine ARGS...`: exit code, stderr.
fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn out_of_range_token_ids_are_refused_by_the_cli_naming_the_id() {
    let tiny = TinyModel::new(Arch::Llama, 1);
    let dir = tiny.write_temp();
    let model = dir.path().to_str().unwrap();
    let vocab = tiny.vocab();
    // (tokens, the id the message names)
    let rows = [
        ("2147483647".to_string(), "2147483647".to_string()),
        ("-49153".to_string(), "-49153".to_string()),
        ("-2".to_string(), "-2".to_string()),
        (format!("1,2,{vocab}"), vocab.to_string()),
    ];
    for (tokens, id) in rows {
        let (code, err) = cli(&["forward", "--model", model, &format!("--tokens={tokens}")]);
        assert_eq!(code, 1, "--tokens {tokens}: {err}");
        assert!(
            err.contains("invalid parameter `tokens`") && err.contains(&format!("token id {id} ")),
            "--tokens {tokens}: {err}"
        );
        assert!(err.contains(&format!("vocabulary of {vocab}")), "{err}");
    }
    let (code, err) = cli(&["forward", "--model", model, "--tokens", &format!("1,{}", vocab - 1)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn out_of_range_prompt_ids_fail_the_request_and_the_model_keeps_serving() {
    let tiny = TinyModel::new(Arch::Gemma3, 2);
    let dir = tiny.write_temp();
    let kit = load_kit(dir.path());
    let vocab = tiny.vocab() as u32;
    for bad in [vocab, vocab + 1_000_000, u32::MAX] {
        let req = GenerateRequest { prompt_tokens: vec![5, bad, 6], max_tokens: Some(2), ..Default::default() };
        let err = kit.generate(req).and_then(|g| g.collect::<mlx_engine::Result<Vec<_>>>()).unwrap_err().to_string();
        assert!(
            err.contains("invalid parameter `prompt`") && err.contains(&format!("token id {bad} at position 1")),
            "{err}"
        );
    }
    let req = GenerateRequest { prompt_tokens: vec![5, vocab - 1, 6], max_tokens: Some(2), ..Default::default() };
    assert!(kit.generate(req).unwrap().collect::<mlx_engine::Result<Vec<_>>>().is_ok());
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused_at_load_naming_both() {
    let tiny = TinyModel::new(Arch::Llama, 3);
    let dir = tiny.write_temp();
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let small = tiny.vocab() - 8;
    config["vocab_size"] = small.into();
    std::fs::write(&path, config.to_string()).unwrap();
    // The embedding must agree with the config for the weights to load at all.
    let emb = tiny.get("model.embed_tokens.weight").slice_axis(0, 0, small).unwrap();
    let mut shrunk = tiny;
    shrunk.set("model.embed_tokens.weight", emb);
    shrunk.write(dir.path());
    std::fs::write(&path, config.to_string()).unwrap();
    let err = try_load_kit(dir.path()).err().expect("refused").to_string();
    assert!(err.contains("tokenizer.json has") && err.contains(&format!("more than the {small} rows")), "{err}");
    assert!(err.contains("config.json's `vocab_size`") && err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn a_runaway_chat_template_is_stopped_with_a_message() {
    let tiny = TinyModel::new(Arch::Llama, 4);
    let dir = tiny.write_temp();
    let kit = load_kit(dir.path());
    let rows = [
        ("nested loops", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
        (
            "quadratic",
            "{% set s = namespace(t='') %}{% for i in range(100000) %}{% set s.t = s.t ~ i %}{% endfor %}{{ s.t }}",
        ),
        // Few instructions, each doing a lot: fuel does not stop it, the wall clock does.
        ("heavy steps", "{% for i in range(100000) %}{% set x = range(100000)|join(',') %}{% endfor %}"),
    ];
    for (what, source) in rows {
        let file = dir.path().join("t.jinja");
        std::fs::write(&file, source).unwrap();
        let template = ChatTemplate::from_file(&file).unwrap();
        let t = Instant::now();
        let err = kit
            .tokenize_chat(&[ChatMessage::new("user", "hi")], Some(&template), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(t.elapsed() < Duration::from_secs(30), "{what}: took {:?}", t.elapsed());
        let stopped = err.contains("steps and was stopped") || err.contains("s to render and was abandoned");
        assert!(stopped && err.contains("t.jinja"), "{what}: {err}");
    }
    // An ordinary template still renders on the same model.
    let file = dir.path().join("ok.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}").unwrap();
    let template = ChatTemplate::from_file(&file).unwrap();
    assert!(kit.tokenize_chat(&[ChatMessage::new("user", "hi")], Some(&template), &Default::default()).is_ok());
}

#[test]
fn a_chat_template_render_stops_soon_after_a_cancel() {
    let tiny = TinyModel::new(Arch::Llama, 4);
    let dir = tiny.write_temp();
    let kit = load_kit(dir.path());
    let file = dir.path().join("slow.jinja");
    // Runs for the whole wall-clock budget unless cancelled (as in the "heavy steps" row above).
    std::fs::write(&file, "{% for i in range(100000) %}{% set x = range(100000)|join(',') %}{% endfor %}").unwrap();
    let template = ChatTemplate::from_file(&file).unwrap();
    let cancel = CancelHandle::new();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
        })
    };
    let t = Instant::now();
    let err = kit
        .tokenize_chat_cancellable(&[ChatMessage::new("user", "hi")], Some(&template), &Default::default(), &cancel)
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    canceller.join().unwrap();
    assert!(err.contains("rendering was cancelled") && err.contains("slow.jinja"), "{err}");
    assert!(took < Duration::from_secs(3), "the cancel took {took:?}");
    // A handle nobody cancels changes nothing.
    let file = dir.path().join("ok.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}").unwrap();
    let template = ChatTemplate::from_file(&file).unwrap();
    let ids = kit.tokenize_chat_cancellable(
        &[ChatMessage::new("user", "hi")],
        Some(&template),
        &Default::default(),
        &CancelHandle::new(),
    );
    assert_eq!(
        ids.unwrap(),
        kit.tokenize_chat(&[ChatMessage::new("user", "hi")], Some(&template), &Default::default()).unwrap()
    );
}

#[test]
fn nan_logits_fail_the_request_instead_of_reading_as_a_stop() {
    let tiny = TinyModel::nan_logits(5);
    let dir = tiny.write_temp();
    let kit = load_kit(dir.path());
    let req = GenerateRequest { prompt_tokens: prompt(5, tiny.tok, 1), max_tokens: Some(4), ..Default::default() };
    let err = kit.generate(req).and_then(|g| g.collect::<mlx_engine::Result<Vec<_>>>()).unwrap_err().to_string();
    assert!(err.contains("logits are not finite") && err.contains("generated token 1"), "{err}");
}
