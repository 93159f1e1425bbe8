//! A text plugin loads the text part of a vision-language checkpoint: the engine partitions
//! `language_model.*` / `vision_tower.*` / `multi_modal_projector.*` (both the older nesting and
//! transformers' newer `model.language_model.*` one), so llama (which knows nothing of vision)
//! runs a mistral3/llava-style folder and gives the same logits as the plain text folder.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod tokenizer_fixtures;

use common_models::*;
use mlx_engine::api::{Array, Dtype, Weights};
use mlx_engine::model::partition::{is_multimodal, partition};
use mlx_engine::model::DtypeChoice;
use serde_json::json;

/// `base` as a VLM checkpoint: the text tensors renamed by `text`, plus vision tensors named
/// with `vision_prefix`, and a `config.json` with `text_config` and `vision_config`.
fn as_vlm(base: &TinyModel, text: fn(&str) -> String, vision_prefix: &str) -> TinyModel {
    let mut m = TinyModel {
        arch: base.arch,
        tok: base.tok,
        config: base.config.clone(),
        weights: base.weights.iter().map(|(n, a)| (text(n), a.clone())).collect(),
    };
    for name in ["vision_tower.patch_conv.weight", "multi_modal_projector.linear_1.weight"] {
        let a = Array::zeros(&[4, 4], Dtype::F32).unwrap();
        m.weights.push((format!("{vision_prefix}{name}"), a));
    }
    m.config = json!({
        "model_type": "mistral3",
        "text_config": base.config,
        "vision_config": {"model_type": "pixtral", "hidden_size": 4},
    });
    m
}

/// A layout's name, how it renames a text tensor, and the prefix of its vision tensors.
type Layout = (&'static str, fn(&str) -> String, &'static str);

#[test]
fn llama_loads_the_text_part_of_a_vlm_checkpoint() {
    let base = TinyModel::new(Arch::LlamaUntied, 5);
    let plain_dir = base.write_temp();
    let plain = load(plain_dir.path(), DtypeChoice::F32);
    let tokens = prompt(6, base.tok, 1);
    let want = full_forward(&plain, &tokens);
    let layouts: [Layout; 2] = [
        ("language_model.*", |n| format!("language_model.{n}"), ""),
        ("model.language_model.*", |n| n.replacen("model.", "model.language_model.", 1), "model."),
    ];
    for (what, rename, vision_prefix) in layouts {
        let vlm = as_vlm(&base, rename, vision_prefix);
        let dir = vlm.write_temp();
        let m = try_load(dir.path(), DtypeChoice::F32).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.model_type, "llama", "{what}");
        let got = full_forward(&m, &tokens);
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{what}: logits differ from the text-only folder");
    }
}

#[test]
fn partition_splits_and_leaves_text_checkpoints_alone() {
    let a = || Array::zeros(&[1], Dtype::F32).unwrap();
    let mut w = Weights::new();
    for n in
        ["model.language_model.layers.0.x", "lm_head.weight", "model.vision_tower.y", "model.multi_modal_projector.z"]
    {
        w.insert(n, a());
    }
    assert!(is_multimodal(&w));
    let parts = partition(w);
    let names = |w: &Weights| w.names().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(names(&parts.text), ["lm_head.weight", "model.layers.0.x"]);
    assert_eq!(names(&parts.vision), ["multi_modal_projector.z", "vision_tower.y"]);

    let mut t = Weights::new();
    t.insert("model.layers.0.x", a());
    t.insert("vision_tower.q", a());
    assert!(!is_multimodal(&t), "no nested text model: not a VLM checkpoint");
    let parts = partition(t);
    assert_eq!(parts.text.len(), 2);
    assert!(parts.vision.is_empty());
}
