//! A malformed registry.toml is reported with its file, the line and a reason.

use mlx_engine::plugin_host::registry::{Registry, RegistrySource};
use mlx_engine::plugin_host::{HostOptions, PluginHost};
use mlx_engine::Error;
use tempfile::TempDir;

/// Builds a host with `text` as its registry and returns (file, line, reason) of the error.
fn registry_error(text: &str) -> (std::path::PathBuf, usize, String, String) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, text).unwrap();
    let err = PluginHost::new(&HostOptions::isolated(vec![], Some(path.clone()))).unwrap_err();
    let display = err.to_string();
    match err {
        Error::Registry { path: p, line, reason } => {
            assert_eq!(p, path);
            assert!(display.starts_with(&format!("{}:{line}: ", path.display())), "{display}");
            (p, line, reason, display)
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[test]
fn bad_toml_syntax() {
    let (_, line, reason, _) = registry_error("# ok\n[text]\nllama = \"llama\nmistral = \"llama\"\n");
    assert_eq!(line, 3);
    assert!(reason.contains("invalid basic string"), "{reason}");
    let (_, line, reason, _) = registry_error("[text]\nllama = \"llama\"\n[vision\n");
    assert_eq!(line, 3);
    assert!(!reason.is_empty());
}

#[test]
fn a_value_that_is_not_a_string() {
    let (_, line, reason, _) = registry_error("[text]\nllama = \"llama\"\n\nmistral = 3\n");
    assert_eq!(line, 4);
    assert!(reason.contains("invalid type: integer `3`, expected a string"), "{reason}");
    assert!(reason.contains("model_type = \"plugin name\""), "{reason}");
    let (_, line, reason, _) = registry_error("[vision]\npixtral = { plugin = \"pixtral\" }\n");
    assert_eq!(line, 2);
    assert!(reason.contains("expected a string"), "{reason}");
}

#[test]
fn an_unknown_table() {
    let (_, line, reason, _) =
        registry_error("[text]\nllama = \"llama\"\n\n# typo below\n[visoin]\npixtral = \"pixtral\"\n");
    assert_eq!(line, 5);
    assert!(reason.contains("unknown table or key `visoin`"), "{reason}");
    assert!(reason.contains("[text] and [vision]"), "{reason}");
}

#[test]
fn duplicates_and_bad_plugin_names() {
    let (_, line, reason, _) = registry_error("[text]\nllama = \"llama\"\nllama = \"other\"\n");
    assert_eq!(line, 3);
    assert!(reason.contains("duplicate key"), "{reason}");
    let (_, line, reason, _) = registry_error("[text]\nllama = \"../../etc/evil\"\n");
    assert_eq!(line, 2);
    assert!(reason.contains("is not a plugin name"), "{reason}");
}

#[test]
fn a_missing_explicit_registry_is_an_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nope.toml");
    let err = PluginHost::new(&HostOptions::isolated(vec![], Some(path.clone()))).unwrap_err();
    // Named after where the path came from, with the file and the OS reason.
    let Error::Param { name, reason } = &err else { panic!("{err:?}") };
    assert_eq!(name, "--registry");
    assert!(
        reason.starts_with(&format!("cannot read {}: ", path.display())) && reason.contains("No such file"),
        "{reason}"
    );
}

#[test]
fn a_control_character_in_a_comment_gets_a_reason() {
    // Found by the registry fuzz target (fuzz/artifacts-found/registry-empty-reason.toml).
    let Err(err) = Registry::parse("[text]\nllama = \"llama\"\n# a NUL\0 in a comment\n", RegistrySource::Embedded)
    else {
        panic!("refused")
    };
    let err = err.to_string();
    assert!(err.contains(":3: invalid TOML here"), "{err}");
}
