//! The pixtral and mistral3 add-ons (the shared Pixtral tower) against mlx-vlm, on the tiny
//! random checkpoints the tests write themselves (engine/tests/tiny_vlm/pixtral.rs, the same bytes
//! as `scripts/goldens/tiny_models.py`; goldens: `scripts/goldens/record_vlm_pixtral.py`). The
//! images are non-square and not patch multiples (37x23 is rounded up to whole patches, 50x70 is
//! first scaled to the longest edge). In f32 on the CPU: the preprocessed pixels, each image's
//! features, greedy decoding from the merged prompt (the second prompt has both images, which
//! mlx-vlm encodes as one padded batch with block-diagonal attention) under the text parity
//! rules, and the CLI's `generate --image --chat` against mlx-vlm's own generate.

mod measured;
mod tiny_vlm;

use std::path::Path;

use base64::Engine as _;

use mlx_engine::api::runtime::Device;
use mlx_engine::api::{Array, DynModel, DynVision, Input};
use mlx_engine::cache::KvCache;
use mlx_engine::generate::GenerateRequest;
use mlx_engine::model::{DtypeChoice, LoadedModel};
use mlx_engine::plugin_host::HostOptions;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::vision::{ImageInput, PreprocessorConfig};
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::Value;
use tiny_vlm::pixtral::{golden, image, write, write_tweaked};
use tiny_vlm::{floats, load, u32s};

const LOGPROB: f32 = 1.5e-4;
const TIE_MARGIN: f32 = 1e-3;
/// The bound on projected features, `max |diff|`.
const FEATURES: f32 = 1e-4;
const MIN_STEPS: usize = 16;

fn max_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Each golden image through the checkpoint's preprocessing (checked against mlx-vlm's pixels)
/// and the add-on's `encode` (checked against its features).
fn features(name: &str, dir: &Path, vision: &dyn DynVision, g: &Value) -> Vec<Array> {
    let pre = PreprocessorConfig::load(dir).unwrap().expect("preprocessor_config.json");
    (0..g["images"].as_array().unwrap().len())
        .map(|i| {
            let px = pre.preprocess(&image(g, i)).unwrap();
            let want = &g["pixels"][i];
            assert_eq!([px.height, px.width, 3], *u32s(&want["shape"]), "{name} image {i}: preprocessed size");
            let bytes = base64::engine::general_purpose::STANDARD.decode(want["f32_base64"].as_str().unwrap()).unwrap();
            let want: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let d = max_diff(&px.data, &want);
            measured::check(&format!("{name}/pixels"), d, measured::SAME_COMPUTATION, format!("image {i}"));
            let f = vision.encode(&px.to_array().unwrap()).unwrap();
            let d = max_diff(&f.to_vec_f32().unwrap(), &floats(&g["features"][i]));
            measured::check(&format!("{name}/features"), d, FEATURES, format!("image {i}"));
            f
        })
        .collect()
}

fn decode(model: &dyn DynModel, merged: &Array, steps: usize) -> Vec<(u32, f32)> {
    let mut cache = KvCache::new(model.cache_layout());
    let last = |logits: Array| {
        let l = logits.dim(1).unwrap();
        logits.slice_axis(1, l - 1, l).unwrap().reshape(&[-1]).unwrap().log_softmax(-1).unwrap().to_vec_f32().unwrap()
    };
    let mut lp = last(model.forward(Input::Embeddings(merged), &mut cache).unwrap());
    let mut out = Vec::new();
    for _ in 0..steps {
        let (t, &p) = lp.iter().enumerate().fold((0, &f32::NEG_INFINITY), |b, (i, x)| if x > b.1 { (i, x) } else { b });
        out.push((t as u32, p));
        let ids = Array::from_slice(&[t as i32], &[1, 1]).unwrap();
        lp = last(model.forward(Input::Tokens(&ids), &mut cache).unwrap());
    }
    out
}

/// The image-token text of a golden span (ids 10, 12, 13).
fn span_text(ids: &[u32]) -> String {
    ids.iter()
        .map(|t| match t {
            10 => "[IMG]",
            12 => "[IMG_BREAK]",
            13 => "[IMG_END]",
            _ => "",
        })
        .collect()
}

fn parity(name: &str) {
    let g = golden(name);
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = write(tmp.path(), &g);
    let m: LoadedModel = load(&dir);
    let vision = m.vision.as_ref().expect("a vision add-on").as_ref().unwrap();
    let feats = features(name, &dir, vision.addon.as_ref(), &g);
    for (k, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = u32s(&p["ids"]);
        let order: Vec<usize> = u32s(&p["images"]).into_iter().map(|i| i as usize).collect();
        // The add-on's expansion for each image is the span the reference processor wrote.
        let spans: String = order
            .iter()
            .map(|&i| {
                let s = &g["pixels"][i]["shape"];
                let (h, w) = (s[0].as_i64().unwrap() as i32, s[1].as_i64().unwrap() as i32);
                vision.addon.image_prompt(h, w).unwrap().expansion
            })
            .collect();
        assert_eq!(spans, span_text(&ids), "{name} prompt {k}: image prompt expansion");
        let ids_a =
            Array::from_slice(&ids.iter().map(|&t| t as i32).collect::<Vec<_>>(), &[1, ids.len() as i32]).unwrap();
        let text = m.model.embed_tokens(&ids_a).unwrap();
        let images: Vec<Array> = order.iter().map(|&i| feats[i].clone()).collect();
        let merged = vision.addon.merge(&ids_a, &text, &images, m.model.embeddings_scale().unwrap()).unwrap();
        let (want, lps, gaps) = (u32s(&p["tokens"]), floats(&p["logprobs"]), floats(&p["top2_gaps"]));
        let got = decode(m.model.as_ref(), &merged, want.len());
        let mut agreed = got.len();
        for (i, &(t, lp)) in got.iter().enumerate() {
            if t != want[i] {
                assert!(gaps[i] <= TIE_MARGIN, "{name} prompt {k} step {i}: {t} instead of mlx-vlm's {}", want[i]);
                agreed = i;
                break;
            }
            measured::check(&format!("{name}/logprob"), (lp - lps[i]).abs(), LOGPROB, format!("prompt {k} step {i}"));
        }
        assert!(agreed >= MIN_STEPS, "{name} prompt {k}: only {agreed} steps agree with mlx-vlm");
    }
    // One image short of the prompt's spans is refused, naming both counts.
    let p = &g["prompts"][1];
    let ids = u32s(&p["ids"]);
    let ids_a = Array::from_slice(&ids.iter().map(|&t| t as i32).collect::<Vec<_>>(), &[1, ids.len() as i32]).unwrap();
    let text = m.model.embed_tokens(&ids_a).unwrap();
    let e = vision.addon.merge(&ids_a, &text, &feats[..1], 1.0).unwrap_err().to_string();
    assert!(e.contains("image tokens") && e.contains("1 image(s)"), "{e}");
}

#[test]
fn tiny_pixtral_matches_mlx_vlm_pixels_features_and_greedy_tokens() {
    parity("tiny-pixtral");
}

#[test]
fn tiny_mistral3_matches_mlx_vlm_pixels_features_and_greedy_tokens() {
    parity("tiny-mistral3");
}

/// `mlx-engine generate --model DIR --image a.png --chat "Describe the image." --temp 0` gives
/// the tokens of mlx-vlm's generate (its prompt formatting, processor and sampling loop).
fn cli(name: &str) {
    let g = golden(name);
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = write(tmp.path(), &g);
    let png = tmp.path().join("a.png");
    image(&g, g["chat"]["image"].as_u64().unwrap() as usize).save(&png).unwrap();
    let want = u32s(&g["chat"]["tokens"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["generate", "--model"])
        .arg(&dir)
        .arg("--image")
        .arg(&png)
        .args(["--chat", g["chat"]["message"].as_str().unwrap(), "--temp", "0", "--output", "jsonl"])
        .args(["--max-tokens", &want.len().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as u32).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, want, "{name}");
}

#[test]
fn the_cli_with_an_image_and_a_chat_message_matches_mlx_vlm_on_tiny_pixtral() {
    cli("tiny-pixtral");
}

#[test]
fn the_cli_with_an_image_and_a_chat_message_matches_mlx_vlm_on_tiny_mistral3() {
    cli("tiny-mistral3");
}

/// Bad checkpoints fail the vision add-on with the field or tensor named; the text model still
/// loads (images are refused later with that message).
#[test]
fn bad_pixtral_configs_and_tensors_name_the_field() {
    let g = golden("tiny-pixtral");
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = write(tmp.path(), &g);
    let path = dir.join("config.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vision_error = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        std::fs::write(&path, c.to_string()).unwrap();
        let m = load(&dir);
        match m.vision.expect("a vision_config") {
            Ok(_) => panic!("the add-on accepted a bad config"),
            Err(e) => e,
        }
    };
    let e = vision_error(&|c| c["vision_feature_layer"] = 7.into());
    assert!(e.contains("vision_feature_layer 7") && e.contains("4 hidden states"), "{e}");
    let e = vision_error(&|c| c["vision_config"]["head_dim"] = 8.into());
    assert!(e.contains("head_dim"), "{e}");
    let e = vision_error(&|c| {
        c["vision_config"]["hidden_size"] = 48.into();
        c["vision_config"]["head_dim"] = 24.into();
    });
    assert!(e.contains("vision_tower.patch_conv.weight") && e.contains("[48, 8, 8, 3]"), "{e}");
    let e = vision_error(&|c| {
        c.as_object_mut().unwrap().remove("image_token_index");
    });
    assert!(e.contains("image_token_index"), "{e}");

    // A projector that does not map to the text width names both sizes.
    let dir = write_tweaked(&tmp.path().join("narrow"), &g, &|w| {
        let m = "multi_modal_projector.";
        w.insert(format!("{m}linear_1.weight"), (vec![48, 32], vec![0.0; 48 * 32]));
        w.insert(format!("{m}linear_1.bias"), (vec![48], vec![0.0; 48]));
        w.insert(format!("{m}linear_2.weight"), (vec![48, 48], vec![0.0; 48 * 48]));
        w.insert(format!("{m}linear_2.bias"), (vec![48], vec![0.0; 48]));
    });
    let e = load(&dir).vision.expect("a vision_config").err().expect("a bad projector is refused");
    assert!(e.contains("multi_modal_projector.linear_2.weight") && e.contains("48") && e.contains("64"), "{e}");
}

/// The engine's pipeline on golden prompt 1 (two images of different sizes, so different token
/// counts): the raw text with two `[IMG]` placeholders is expanded per image from its
/// preprocessed size, tokenized to mlx-vlm's ids, and generates its tokens (prefill in chunks of
/// 5 over the merged embeddings); the same images again come from the feature memo.
fn pipeline(name: &str) {
    let g = golden(name);
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = write(tmp.path(), &g);
    let images: Vec<ImageInput> = (0..2)
        .map(|i| {
            let path = tmp.path().join(format!("image{i}.png"));
            image(&g, i).save(&path).unwrap();
            ImageInput::Path(path)
        })
        .collect();
    let options = LoadOptions {
        dtype: DtypeChoice::F32,
        device: Device::Cpu,
        plugins: HostOptions::standard(vec![], None),
        ..Default::default()
    };
    let kit = ModelKit::load(&dir, options).unwrap();
    let p = &g["prompts"][1];
    let order = vec![images[1].clone(), images[0].clone()];
    let tokens = kit.tokenize_with_images("<s> [INST] <20> <21> [IMG] <22> <23> [IMG] <24> <25> [/INST]", &order, None);
    assert_eq!(tokens.as_ref().unwrap(), &u32s(&p["ids"]), "{name}: expanded and tokenized prompt");
    let run = |prompt_tokens: Vec<u32>, images: Vec<ImageInput>, steps: usize| {
        let req = GenerateRequest {
            prompt_tokens,
            images,
            sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
            max_tokens: Some(steps),
            ignore_eos: true,
            prefill_step_size: Some(5),
            ..Default::default()
        };
        let mut generation = kit.generate(req).unwrap();
        let got: Vec<u32> = generation.by_ref().flat_map(|r| r.unwrap().tokens.into_iter().map(|t| t.id)).collect();
        (got, generation.stats().unwrap().clone())
    };
    let want = u32s(&p["tokens"]);
    let (got, stats) = run(tokens.unwrap(), order, want.len());
    assert_eq!(got, want, "{name}: greedy tokens through the pipeline");
    assert_eq!((stats.images_encoded, stats.images_from_memo), (2, 0));
    let tokens = kit.tokenize_with_images("<s> [INST] [IMG] <9> [IMG] [/INST]", &images, None).unwrap();
    let (_, stats) = run(tokens, images, 2);
    assert_eq!((stats.images_encoded, stats.images_from_memo), (0, 2));
}

#[test]
fn the_pipeline_expands_each_image_by_its_size_and_gives_mlx_vlms_tokens_on_tiny_pixtral() {
    pipeline("tiny-pixtral");
}

#[test]
fn the_pipeline_expands_each_image_by_its_size_and_gives_mlx_vlms_tokens_on_tiny_mistral3() {
    pipeline("tiny-mistral3");
}

/// An mlx-vlm conversion names the tower `vision_tower.vision_model.*` and stores the patch
/// convolution as `[D, P, P, C]`; the add-ons take that layout too, with the same features.
#[test]
fn the_mlx_vlm_layout_of_the_tower_gives_the_same_features() {
    for name in ["tiny-pixtral", "tiny-mistral3"] {
        let g = golden(name);
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = write_tweaked(tmp.path(), &g, &|w| {
            let names: Vec<String> = w.keys().filter(|k| k.starts_with("vision_tower.")).cloned().collect();
            for k in names {
                let (shape, v) = w.remove(&k).unwrap();
                let (shape, v) = if k.ends_with("patch_conv.weight") {
                    // [D, C, P, P] -> [D, P, P, C]
                    let (d, c, p) = (shape[0], shape[1], shape[2]);
                    let mut t = vec![0.0; v.len()];
                    for (i, x) in v.iter().enumerate() {
                        let (o, ci, y, xx) = (i / (c * p * p), i / (p * p) % c, i / p % p, i % p);
                        t[((o * p + y) * p + xx) * c + ci] = *x;
                    }
                    (vec![d, p, p, c], t)
                } else {
                    (shape, v)
                };
                w.insert(k.replacen("vision_tower.", "vision_tower.vision_model.", 1), (shape, v));
            }
        });
        let m = load(&dir);
        let vision = m.vision.as_ref().unwrap().as_ref().unwrap();
        let pre = PreprocessorConfig::load(&dir).unwrap().unwrap();
        let f = vision.addon.encode(&pre.preprocess(&image(&g, 0)).unwrap().to_array().unwrap()).unwrap();
        let d = max_diff(&f.to_vec_f32().unwrap(), &floats(&g["features"][0]));
        measured::check(&format!("{name}/features, mlx-vlm layout"), d, FEATURES, "image 0");
    }
}
