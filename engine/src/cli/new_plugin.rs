//! `mlx-engine new-plugin NAME`: writes an out-of-tree plugin crate that builds alone and passes
//! its own conformance test unchanged. The starting point is one of the workspace's own plugins
//! (its source compiled into the engine, so the template is always code that builds against this
//! engine's API), re-exported under the new name.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Arguments of `mlx-engine new-plugin`.
#[derive(clap::Args, Debug, Clone)]
pub struct NewPluginArgs {
    /// The plugin's name: its library file (libNAME.so) and the model type it declares.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The crate's folder (must not exist yet, or be empty) [default: ./NAME].
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// The architecture to start from.
    #[arg(long, value_enum, default_value_t = Template::Llama)]
    pub from: Template,
    /// The mlx-engine-plugin-api folder to depend on by path [default: this engine's own
    /// checkout, when it has one]; without one the crate depends on the API by git.
    #[arg(long, value_name = "PATH")]
    pub api_path: Option<PathBuf>,
}

/// The workspace plugins a new one can start from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU; GGUF mapping).
    Llama,
    /// Gemma 3 text decoder (sliding-window layers, four norms per block) plus its vision add-on.
    Gemma3,
}

struct Source {
    /// `(path under src/, contents)`.
    files: &'static [(&'static str, &'static str)],
    /// A config.json of a tiny model of this architecture (`MODEL_TYPE` is replaced).
    config: &'static str,
}

impl Template {
    fn source(self) -> Source {
        match self {
            Template::Llama => Source {
                files: &[("lib.rs", include_str!("../../../plugins/llama/src/lib.rs"))],
                config: r#"{
 "model_type": "MODEL_TYPE",
 "hidden_size": 64,
 "num_hidden_layers": 2,
 "intermediate_size": 128,
 "num_attention_heads": 2,
 "num_key_value_heads": 1,
 "rms_norm_eps": 1e-05,
 "vocab_size": 256,
 "rope_theta": 10000.0,
 "max_position_embeddings": 512,
 "tie_word_embeddings": true
}
"#,
            },
            Template::Gemma3 => Source {
                files: &[
                    ("lib.rs", include_str!("../../../plugins/gemma3/src/lib.rs")),
                    ("vision.rs", include_str!("../../../plugins/gemma3/src/vision.rs")),
                ],
                config: r#"{
 "model_type": "MODEL_TYPE",
 "vocab_size": 256,
 "hidden_size": 64,
 "intermediate_size": 128,
 "num_hidden_layers": 4,
 "num_attention_heads": 2,
 "num_key_value_heads": 1,
 "head_dim": 32,
 "query_pre_attn_scalar": 32,
 "max_position_embeddings": 512,
 "rms_norm_eps": 1e-06,
 "rope_theta": 1000000.0,
 "rope_local_base_freq": 10000.0,
 "sliding_window": 8,
 "sliding_window_pattern": 2,
 "tie_word_embeddings": true
}
"#,
            },
        }
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Param { name: "new-plugin".into(), reason: reason.into() }
}

/// Checks `name` can be a library name and a model type.
fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(bad(format!(
            "`{name}` is not a valid plugin name: use lowercase letters, digits and `_`, starting with a letter"
        )));
    }
    Ok(())
}

/// The template's `export_plugin!` block rewritten to declare `name` only, keeping the
/// template's types.
fn rename_export(lib: &str, name: &str) -> Result<String> {
    let start = lib.find("export_plugin! {").ok_or_else(|| bad("template has no export_plugin! block"))?;
    let end = start + lib[start..].find("\n}\n").ok_or_else(|| bad("template's export_plugin! is not closed"))? + 3;
    let block = &lib[start..end];
    let first_type = |section: &str| -> Option<String> {
        let at = block.find(&format!("{section}: {{"))?;
        let body = &block[at..at + block[at..].find('}')?];
        let arrow = body.find("=> ")?;
        Some(body[arrow + 3..].split([',', ' ', '}']).next()?.trim().to_string())
    };
    let text = first_type("text").ok_or_else(|| bad("template exports no text model"))?;
    let vision = match first_type("vision") {
        Some(v) => format!("{{ \"{name}\" => {v} }}"),
        None => "{}".to_string(),
    };
    let export = format!(
        "export_plugin! {{\n    name: \"{name}\",\n    version: env!(\"CARGO_PKG_VERSION\"),\n    text: {{ \"{name}\" => {text} }},\n    vision: {vision},\n}}\n"
    );
    Ok(format!("{}{export}{}", &lib[..start], &lib[end..]))
}

fn api_dependency(args: &NewPluginArgs) -> Result<String> {
    let path = match &args.api_path {
        Some(p) => Some(p.clone()),
        None => {
            let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
            own.join("Cargo.toml").exists().then_some(own)
        }
    };
    match path {
        Some(p) => {
            let p = p.canonicalize().map_err(|e| Error::Io { path: p.clone(), source: e })?;
            if !p.join("Cargo.toml").exists() {
                return Err(bad(format!("{} has no Cargo.toml (expected the mlx-engine-plugin-api crate)", p.display())));
            }
            Ok(format!("mlx-engine-plugin-api = {{ path = {:?} }}", p.display().to_string()))
        }
        None => Ok("# Replace with the engine repository's URL (or a path to its plugin-api/ folder).\n\
                    mlx-engine-plugin-api = { git = \"https://github.com/<owner>/mlx-engine\", package = \"mlx-engine-plugin-api\" }"
            .to_string()),
    }
}

fn cargo_toml(name: &str, api: &str, template: Template) -> String {
    format!(
        r#"[package]
name = "mlx-engine-plugin-{package}"
description = "The `{name}` architecture for mlx-engine (started from its {template:?} plugin)."
version = "0.1.0"
edition = "2021"
publish = false

# Its own workspace: the crate builds alone, wherever it lives.
[workspace]

[lib]
# The file becomes lib{name}.so (lib{name}.dylib on macOS), the name the engine knows it by.
name = "{name}"
crate-type = ["cdylib"]

[dependencies]
{api}
serde = {{ version = "1", features = ["derive"] }}

# The engine catches a plugin's panics at the boundary, which needs unwinding; it refuses
# plugins built with panic = "abort".
[profile.dev]
panic = "unwind"
[profile.release]
panic = "unwind"
"#,
        package = name.replace('_', "-"),
    )
}

const CONFORMANCE_TEST: &str = r#"//! The engine's conformance kit on this plugin (`mlx-engine check-plugin`): random weights of
//! the shapes the plugin declares, then forward shapes, cached decode against a full forward,
//! rotating and quantized caches, quantized weights and error handling. Needs `mlx-engine` on
//! PATH (or MLX_ENGINE=/path/to/mlx-engine). With a checkpoint and a golden recorded by the
//! engine's scripts/plugin-kit/record_golden.py, add `--golden` to compare with mlx-lm.

use std::path::PathBuf;
use std::process::Command;

/// Builds the plugin library (`cargo test` builds only the test harnesses) and returns it.
fn plugin_file() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--lib", "--manifest-path"])
        .arg(manifest.join("Cargo.toml"))
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "building the plugin failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("target"));
    let file = format!("{}LIB_NAME{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    target.join("debug").join(file)
}

#[test]
fn passes_the_conformance_kit() {
    let engine = std::env::var("MLX_ENGINE").unwrap_or_else(|_| "mlx-engine".into());
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/config.json");
    let out = Command::new(&engine)
        .arg("check-plugin")
        .arg(plugin_file())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{engine}` (put mlx-engine on PATH or set MLX_ENGINE): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("FAIL "), "{stdout}");
}
"#;

fn readme(name: &str, template: Template) -> String {
    format!(
        r#"# {name}: an mlx-engine plugin

Started from the engine's {template:?} plugin by `mlx-engine new-plugin`. Edit `src/lib.rs` to
match your architecture (mlx-lm's Python file for it is the reference), and `tests/config.json`
to a tiny config of it.

    cargo build --release                 # target/release/lib{name}.so
    cargo test                            # the conformance kit (mlx-engine on PATH)
    mlx-engine check-plugin target/release/lib{name}.so --config tests/config.json

Install by copying the library into a plugin folder (`--plugins DIR`, `$MLX_ENGINE_PLUGIN_PATH`,
or `plugins/` beside the engine's registry.toml). A model whose config.json says
`"model_type": "{name}"` then loads with it. The engine's `docs/plugin-authoring.md` has the
rules (tensor names per format, threads, panics, the ABI).
"#
    )
}

/// Writes the crate; returns its folder.
pub fn write(args: &NewPluginArgs) -> Result<PathBuf> {
    check_name(&args.name)?;
    let name = args.name.as_str();
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(bad(format!("{} exists and is not empty", dir.display())));
    }
    let source = args.from.source();
    let api = api_dependency(args)?;
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("Cargo.toml"), cargo_toml(name, &api, args.from)),
        (dir.join("README.md"), readme(name, args.from)),
        (dir.join(".gitignore"), "/target\n".into()),
        (dir.join("tests/config.json"), source.config.replace("MODEL_TYPE", name)),
        (dir.join("tests/conformance.rs"), CONFORMANCE_TEST.replace("LIB_NAME", name)),
    ];
    for (file, text) in source.files {
        let text = if *file == "lib.rs" { rename_export(text, name)? } else { text.to_string() };
        files.push((dir.join("src").join(file), text));
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_path_buf(), source: e })?;
        }
        std::fs::write(path, text).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    }
    Ok(dir)
}

pub fn run(args: &NewPluginArgs) -> Result<()> {
    let dir = write(args)?;
    println!(
        "wrote the `{}` plugin crate in {} (from {:?}); next: cd there && cargo test",
        args.name,
        dir.display(),
        args.from
    );
    Ok(())
}
