//! config.json values that used to be accepted silently, divide by zero, fail deep inside MLX
//! at the first forward, or turn every logit into NaN. Each row edits one field of a tiny
//! model's config; the CLI must exit 1 with a message naming config.json, the field and the
//! plugin that checked it, before the model runs.

mod common_models;
mod tokenizer_fixtures;

use common_models::*;
use serde_json::{json, Value};

/// `mlx-engine ARGS...`: exit code, stderr.
fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `forward` on `arch`'s tiny model with `field` of config.json set to `value`.
fn with_field(arch: Arch, field: &str, value: Value) -> (i32, String, String) {
    let tiny = TinyModel::new(arch, 7);
    let dir = tiny.write_temp();
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(&path, config.to_string()).unwrap();
    let (code, err) = cli(&["forward", "--model", dir.path().to_str().unwrap(), "--tokens", "1,2"]);
    (code, err, path.display().to_string())
}

#[test]
fn bad_config_values_are_refused_naming_the_field() {
    let layers = LAYERS;
    // (arch, field, value, message fragment)
    let rows: Vec<(Arch, &str, Value, String)> = vec![
        (Arch::Llama, "num_key_value_heads", json!(0), "field `num_key_value_heads` must be positive, got 0".into()),
        (
            Arch::Llama,
            "num_key_value_heads",
            json!(3),
            "field `num_attention_heads` (4) must be a multiple of `num_key_value_heads` (3)".into(),
        ),
        (Arch::Llama, "num_attention_heads", json!(0), "field `num_attention_heads` must be positive, got 0".into()),
        (Arch::Llama, "head_dim", json!(0), "field `head_dim` must be positive, got 0".into()),
        (Arch::Llama, "head_dim", json!(15), "field `head_dim` must be even, got 15".into()),
        (Arch::Llama, "rms_norm_eps", json!(-1e-5), "field `rms_norm_eps` must be positive".into()),
        (Arch::Llama, "rope_theta", json!(0), "field `rope_theta` must be positive, got 0".into()),
        (
            Arch::Llama,
            "hidden_act",
            json!("gelu"),
            "field `hidden_act` is `gelu`; this architecture supports `silu`".into(),
        ),
        (
            Arch::Llama,
            "rms_norm_eps",
            json!("small"),
            "field `rms_norm_eps`: invalid type: string \"small\", expected f32".into(),
        ),
        (Arch::Gemma3, "query_pre_attn_scalar", json!(0), "field `query_pre_attn_scalar` must be positive".into()),
        (Arch::Gemma3, "final_logit_softcapping", json!(0), "field `final_logit_softcapping` must be positive".into()),
        (Arch::Gemma3, "sliding_window", json!(0), "field `sliding_window` must be positive, got 0".into()),
        (
            Arch::Gemma3,
            "layer_types",
            json!(["full_attention"]),
            format!("field `layer_types` lists 1 layers, but `num_hidden_layers` is {layers}"),
        ),
        (
            Arch::Gemma3,
            "layer_types",
            json!(["full_attention", "chunked_attention"]),
            "field `layer_types[1]` is `chunked_attention`".into(),
        ),
        (Arch::Gemma3, "hidden_activation", json!("relu"), "field `hidden_activation` is `relu`".into()),
        (Arch::Gemma3, "head_dim", json!(0), "field `head_dim` must be positive, got 0".into()),
    ];
    for (arch, field, value, fragment) in rows {
        let (code, err, config) = with_field(arch, field, value.clone());
        let row = format!("{arch:?} {field} = {value}");
        assert_eq!(code, 1, "{row}: {err}");
        assert!(err.contains(&format!("{config}: ")), "{row}: names config.json: {err}");
        assert!(err.contains(&fragment), "{row}: `{fragment}` in {err}");
        assert!(err.contains("(checked by plugin"), "{row}: names the plugin: {err}");
        assert!(!err.contains(" at line "), "{row}: no position into re-serialised JSON: {err}");
    }
}

#[test]
fn model_type_of_the_wrong_type_is_not_called_missing() {
    let (code, err, config) = with_field(Arch::Llama, "model_type", json!(7));
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{config}: field `model_type` must be a string, got 7")), "{err}");
}

#[test]
fn an_unknown_torch_dtype_is_a_warning_once() {
    let (code, err, config) = with_field(Arch::Llama, "torch_dtype", json!("float8_e9"));
    assert_eq!(code, 0, "{err}");
    let warning = format!("{config}: field `torch_dtype` is \"float8_e9\", not a dtype the engine knows");
    assert_eq!(err.matches(&warning).count(), 1, "{err}");
}
