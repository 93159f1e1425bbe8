//! docs/plugin-authoring.md's commands, run as written: every ```sh block after a
//! `<!-- tested: NAME -->` line, in order, from the repository root with the engine's build
//! folder on PATH. They build the out-of-tree Qwen3-MoE plugin with its own `cargo build`, check
//! it with `mlx-engine check-plugin` against the committed mlx-lm golden, install it into a
//! plugin folder; scaffold two new plugins with `mlx-engine new-plugin` and run their own tests;
//! and re-record a golden with mlx-lm and check against that too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(name, script)` of each tested block.
fn tested_blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- tested: ").and_then(|r| r.strip_suffix(" -->")) else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```sh"), "block `{name}` must follow its marker");
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        out.push((name.to_string(), body.join("\n")));
    }
    out
}

#[test]
fn the_documented_commands_work() {
    let doc = std::fs::read_to_string(repo().join("docs/plugin-authoring.md")).unwrap();
    let blocks = tested_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["out-of-tree", "scaffold", "record-golden"], "the doc's tested blocks changed");
    assert!(repo().join(".venv/bin/python").exists(), "run `make setup` first (the recorder needs .venv)");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mlx-engine")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for (name, script) in &blocks {
        let mut cmd = Command::new("bash");
        cmd.arg("-euo").arg("pipefail").arg("-c").arg(script).current_dir(repo()).env("PATH", &path);
        // The outer `cargo test` exports variables meant for this package; the example's own
        // build must not see them (its target folder is its own).
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" {
                cmd.env_remove(k);
            }
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "block `{name}` failed ({}):\n{stdout}\n{stderr}", out.status);
        assert!(!stdout.contains("FAIL "), "block `{name}`:\n{stdout}");
        let expected: &[&str] = match name.as_str() {
            // check-plugin against mlx-lm's golden, every check applicable.
            "out-of-tree" | "record-golden" => &["PASS golden: mlx-lm", "13 checks passed, 0 not applicable"],
            // Each generated crate's unit tests and conformance test.
            _ => &["test passes_the_conformance_kit ... ok"],
        };
        for e in expected {
            assert!(stdout.contains(e), "block `{name}`: no `{e}` in\n{stdout}\n{stderr}");
        }
        if name == "scaffold" {
            assert_eq!(stdout.matches("test passes_the_conformance_kit ... ok").count(), 2, "{stdout}");
        }
    }
}
