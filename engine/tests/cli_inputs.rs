//! Command-line inputs that used to be ignored without a word, refused with a misleading
//! message, or refused only after a long load; and the warnings a user must see (once each,
//! without colour codes when stderr is not a terminal, silenced by `-q`). Each row is the
//! command, its exit code and the fragment of stderr that names the flag, file or variable.

mod common_models;
mod tokenizer_fixtures;

use std::path::Path;
use std::process::Command;

use common_models::*;

/// `mlx-engine ARGS...` with `env` set: exit code, stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-engine"));
    cmd.args(args).env_remove("MLX_ENGINE_LOG").env_remove("MLX_ENGINE_PLUGIN_PATH").env_remove("MLX_ENGINE_REGISTRY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tiny() -> (TinyModel, tempfile::TempDir) {
    let t = TinyModel::printable(3);
    let d = t.write_temp();
    (t, d)
}

#[test]
fn bad_flags_are_refused_before_the_model_loads() {
    let (_t, dir) = tiny();
    let m = dir.path().to_str().unwrap();
    let template = dir.path().join("t.jinja");
    std::fs::write(&template, "{{ messages[0].content }}").unwrap();
    let t = template.to_str().unwrap();
    let rows: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "--model", m, "--prompt", "x", "--temp", "-1"],
            "invalid parameter `temp`: must be a finite number >= 0",
        ),
        (vec!["generate", "--model", m, "--prompt", "x", "--top-logprobs", "50"], "invalid parameter `top_logprobs`"),
        (vec!["chat", "--model", m, "--top-p", "2"], "invalid parameter `top_p`"),
        (
            vec!["generate", "--model", m, "--prompt", "x", "--chat-template", t],
            "invalid parameter `--chat-template`: applies to --chat messages, not to a raw --prompt",
        ),
        (
            vec!["generate", "--model", m, "--prompt", "x", "--chat-template-args", "{}"],
            "invalid parameter `--chat-template-args`",
        ),
        (
            vec!["generate", "--model", m, "--prompt", "x", "--plugins", "/no/such/folder"],
            "invalid parameter `plugins`: /no/such/folder is not a folder",
        ),
        (vec!["bench", "--model", m, "--memory-kv-bits", "5"], "invalid parameter `--memory-kv-bits`"),
    ];
    for (args, fragment) in rows {
        let (code, err) = run(&args, &[]);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(fragment), "{args:?}: `{fragment}` in {err}");
        assert!(!err.contains("loaded "), "{args:?}: refused before loading: {err}");
    }
    let (code, err) = run(&["generate", "--model", m, "--prompt", "x", "--system", "s"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid parameter `--system`: applies to --chat messages"), "{err}");
}

#[test]
fn misleading_messages_now_name_the_real_cause() {
    let (_t, dir) = tiny();
    let m = dir.path().to_str().unwrap();
    // The prompt alone overflows the context (64): no max_tokens to blame.
    let long = "a ".repeat(200);
    let (code, err) = run(&["generate", "--model", m, "--prompt", &long], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid parameter `prompt`") && !err.contains("max_tokens"), "{err}");

    let (code, err) = run(&["plugins"], &[("MLX_ENGINE_REGISTRY", "/no/such/registry.toml")]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid parameter `MLX_ENGINE_REGISTRY`: cannot read /no/such/registry.toml"), "{err}");

    let empty = dir.path().join("empty.jinja");
    std::fs::write(&empty, "  \n").unwrap();
    let (code, err) = run(&["generate", "--model", m, "--chat", "hi", "--chat-template", empty.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("empty.jinja") && err.contains("the chat template is empty"), "{err}");

    // Valid JSON of the wrong shape is not a syntax error.
    let bad = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.path().join(f), bad.path().join(f)).unwrap();
    }
    std::fs::write(bad.path().join("tokenizer.json"), r#"{"model": 3}"#).unwrap();
    let (code, err) = run(&["generate", "--model", bad.path().to_str().unwrap(), "--prompt", "x"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("tokenizer.json: valid JSON, but not a tokenizer"), "{err}");

    // A weights file that cannot be opened: the OS says why.
    let dangling = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.path().join(f), dangling.path().join(f)).unwrap();
    }
    std::os::unix::fs::symlink("/no/such/weights", dangling.path().join("model.safetensors")).unwrap();
    let (code, err) = run(&["forward", "--model", dangling.path().to_str().unwrap(), "--tokens", "1"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("model.safetensors: No such file or directory"), "{err}");

    // A model without a chat template: chat says so at start, not on every turn.
    let (code, err) = run(&["chat", "--model", m], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no chat template"), "{err}");
}

#[test]
fn warnings_are_shown_once_without_colour_and_q_silences_them() {
    let (_t, dir) = tiny();
    let m = dir.path().to_str().unwrap();
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, "[text]\nllama = \"not-installed\"\n").unwrap();
    let r = reg.to_str().unwrap();
    let args = ["generate", "--model", m, "--prompt", "x", "--max-tokens", "2", "--registry", r];
    let (code, err) = run(&args, &[]);
    assert_eq!(code, 0, "{err}");
    let warning = "plugin `not-installed` for text model type `llama` is not installed; using";
    assert_eq!(err.matches(warning).count(), 1, "once: {err}");
    assert!(!err.contains('\u{1b}'), "no ANSI codes when stderr is not a terminal: {err:?}");
    let (code, err) = run(&[&args[..], &["-q"]].concat(), &[]);
    assert_eq!(code, 0);
    assert!(!err.contains(warning), "-q: {err}");

    // Values the engine ignores, said once each.
    let gen = dir.path().join("generation_config.json");
    std::fs::write(&gen, r#"{"temperature": "hot", "eos_token_id": [2, 99999]}"#).unwrap();
    let (code, err) = run(&["generate", "--model", m, "--prompt", "x", "--max-tokens", "2"], &[]);
    std::fs::remove_file(&gen).unwrap();
    assert_eq!(code, 0, "{err}");
    let ignored = "generation_config.json: ignoring `temperature` = \"hot\" (not a valid value)";
    assert_eq!(err.matches(ignored).count(), 1, "{err}");
    assert_eq!(err.matches("eos token id 99999 is outside the vocabulary").count(), 1, "{err}");

    // Plugin folders that are not there, and a broken link in one that is.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/no/such/libx.so", plugins.path().join("libbroken.so")).unwrap();
    let p = plugins.path().to_str().unwrap();
    let (code, err) = run(
        &["generate", "--model", m, "--prompt", "x", "--max-tokens", "2", "--plugins", p],
        &[("MLX_ENGINE_PLUGIN_PATH", "/no/such/plugins")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("$MLX_ENGINE_PLUGIN_PATH: /no/such/plugins is not a folder; skipped"), "{err}");
    assert!(err.contains("libbroken.so is a broken symbolic link; skipped"), "{err}");
}

/// Compiles C `source` into a shared library `lib<name>.so` in `dir`.
fn cc(dir: &Path, name: &str, source: &str) {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let so = dir.join(format!("lib{name}.so"));
    let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status().unwrap();
    assert!(status.success(), "cc {name}");
    std::fs::remove_file(c).unwrap();
}

#[test]
fn libraries_that_are_not_plugins_are_never_opened() {
    let plugins = tempfile::tempdir().unwrap();
    let marker = plugins.path().join("constructor-ran");
    let ctor = format!(
        "#include <stdio.h>\n__attribute__((constructor)) static void init(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
        marker.display()
    );
    cc(plugins.path(), "stranger", &format!("{ctor}int something_else(void) {{ return 1; }}\n"));
    // The descriptor's name, but as data: calling it used to crash every command.
    cc(plugins.path(), "impostor", &format!("{ctor}int mlx_engine_plugin_descriptor = 42;\n"));
    let (code, out) = {
        let o = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["plugins", "--plugins", plugins.path().to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("`mlx_engine_plugin_descriptor` is exported as Data, not as a function"), "{out}");
    assert!(out.contains("no descriptor symbol `mlx_engine_plugin_descriptor`"), "{out}");
    assert!(!marker.exists(), "neither library was opened (their constructors did not run)");
}
