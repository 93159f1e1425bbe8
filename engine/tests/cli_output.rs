//! What the command line tells the user is true: parameter counts and storage of quantized
//! and GGUF models, the seed only when it mattered, a marker when the text was cut, the stats
//! as the last jsonl record, token text in `forward`, and help that leads somewhere.

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::process::Command;

use common_models::*;
use mlx_engine::model::DtypeChoice;

/// `mlx-engine ARGS...`: exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_quantized_model_counts_its_logical_parameters_and_names_its_storage() {
    let tiny = TinyModel::new(Arch::Llama, 4);
    let (q, dense) = tiny.quantized(32, 4, &[("model.layers.0.mlp.down_proj", 32, 8)]);
    let (qd, dd) = (q.write_temp(), dense.write_temp());
    let (qm, dm) = (load(qd.path(), DtypeChoice::F32), load(dd.path(), DtypeChoice::F32));
    assert_eq!(qm.num_parameters, dm.num_parameters, "packed words are not parameters");
    assert_eq!(qm.storage, "4-bit affine, group 32, mixed per layer");
    assert_eq!(dm.storage, "float32");
    let (code, _, err) = run(&["generate", "-m", qd.path().to_str().unwrap(), "-p", "x", "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    let params = format!(
        "{:.1}M parameters, 4-bit affine, group 32, mixed per layer weights, float32 compute",
        dm.num_parameters as f64 / 1e6
    );
    assert!(err.contains(&params), "{err}");
}

#[test]
fn the_shipped_gguf_reports_its_true_size_and_types() {
    let file = measured::models_dir().join("smollm2-135m-instruct/gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !measured::have_models("the_shipped_gguf_reports_its_true_size_and_types", &[&file]) {
        return;
    }
    let m = load(&file, DtypeChoice::F32);
    // SmolLM2-135M: 134.5M parameters in every format (it used to say 28.8M here).
    assert_eq!(format!("{:.1}M", m.num_parameters as f64 / 1e6), "134.5M");
    assert!(m.storage.starts_with("Q4_1 (also "), "{}", m.storage);
}

#[test]
fn the_seed_is_shown_only_when_sampling_and_the_stats_close_the_jsonl() {
    let tiny = TinyModel::printable(6);
    let dir = tiny.write_temp();
    let m = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["generate", "-m", m, "-p", "ab", "-n", "3", "--temp", "0", "--output", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("seed"), "greedy: {err}");
    assert!(err.contains("(stopped at --max-tokens)") || out.contains("token_limit"), "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let stats = &last["stats"];
    assert_eq!(stats["generated_tokens"], 3, "{last}");
    assert_eq!(stats["greedy"], true);
    assert!(stats["generation_tps"].as_f64().is_some() && stats["peak_memory_mb"].as_f64().unwrap() > 0.0, "{last}");

    let (code, _, err) = run(&["generate", "-m", m, "-p", "ab", "-n", "3", "--temp", "0.8", "--seed", "7"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("| seed 7") && err.contains("(stopped at --max-tokens)"), "{err}");
    assert!(!err.contains("DEBUG"), "{err}");

    // -vv: the decisions behind the run, at debug level.
    let (code, _, err) = run(&["-vv", "generate", "-m", m, "-p", "ab", "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEBUG text model type `llama` resolved to plugin `llama`"), "{err}");
    assert!(err.contains("DEBUG prompt cache: no usable prefix"), "{err}");
}

#[test]
fn forward_prints_token_text_and_help_leads_somewhere() {
    let tiny = TinyModel::printable(8);
    let dir = tiny.write_temp();
    let m = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["forward", "-m", m, "--tokens", "97,98", "--top", "2", "--decode", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.contains("logprob") && l.trim_end().ends_with('"')), "token text: {out}");
    assert!(out.contains("as text: \""), "{out}");

    let (code, _, err) = run(&["generate", "-m", m]);
    assert_eq!(code, 1);
    assert!(err.contains("--prompt TEXT") && err.contains("--chat TEXT"), "{err}");

    let (code, out, _) = run(&["generate", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--top-p", "--top-k", "--min-p", "--seed", "--repetition-penalty", "--presence-penalty"] {
        let line = out.lines().find(|l| l.contains(flag)).unwrap_or_else(|| panic!("{flag} in help"));
        let described = line.trim_start().split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty())
            || out.lines().skip_while(|l| !l.contains(flag)).nth(1).is_some_and(|n| n.starts_with("          "));
        assert!(described, "{flag} has a description: {line}");
    }
    assert!(out.contains("-n, --max-tokens") && out.contains("-p, --prompt") && out.contains("-m, --model"), "{out}");

    let (code, _, err) = run(&["chat", "-m", m, "--top-logprobs", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid parameter `--top-logprobs`"), "{err}");
}
