//! The generic VLM fallback end to end on the tiny llava checkpoints: the CLI answers
//! `generate --image --chat` with mlx-vlm's tokens, the model reports which vision path it took,
//! the engine's image pipeline (prompt cache keyed by image, feature memo, chunked prefill, KV
//! quantization, rotating cache) serves it as it serves add-ons, resolution reaches the fallback
//! only after everything else, and bad checkpoints fail naming what is wrong.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod measured;
mod tiny_vlm;
#[path = "tiny_vlm/parity.rs"]
mod vlm_parity;

use std::path::{Path, PathBuf};

use mlx_engine::api::io::load_safetensors;
use mlx_engine::api::runtime::Device;
use mlx_engine::api::{vision_factory, Array, Dtype, Weights, WeightsFormat};
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::generate::{GenerateRequest, GenerationStats};
use mlx_engine::model::{partition, DtypeChoice};
use mlx_engine::plugin_host::{HostOptions, PluginHost, Via};
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::vision::generic::GenericVlm;
use mlx_engine::vision::{ImageInput, VisionPath};
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::Value;
use tiny_vlm::{image_rows, llava_golden, load, tiny_model, u32s};

fn kit_with(dir: &Path, cache: CacheConfig) -> ModelKit {
    let options = LoadOptions {
        dtype: DtypeChoice::F32,
        device: Device::Cpu,
        plugins: HostOptions::standard(vec![], None),
        cache,
        ..Default::default()
    };
    ModelKit::load(dir, options).unwrap()
}

/// The golden images of `g` as PNG files in `dir`.
fn write_images(dir: &Path, g: &Value) -> Vec<ImageInput> {
    g["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let path = dir.join(format!("image{i}.png"));
            image_rows(rows).save(&path).unwrap();
            ImageInput::Path(path)
        })
        .collect()
}

fn greedy(prompt_tokens: Vec<u32>, images: Vec<ImageInput>, steps: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens,
        images,
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(steps),
        ignore_eos: true,
        prefill_step_size: Some(5),
        ..Default::default()
    }
}

fn run(kit: &ModelKit, req: GenerateRequest) -> (Vec<u32>, GenerationStats) {
    let mut generation = kit.generate(req).unwrap();
    let mut tokens = Vec::new();
    for r in generation.by_ref() {
        tokens.extend(r.unwrap().tokens.iter().map(|t| t.id));
    }
    (tokens, generation.stats().unwrap().clone())
}

/// `mlx-engine generate --model DIR --image IMG --chat MSG --temp 0` on each llava checkpoint
/// gives the tokens mlx-vlm decodes from the same rendered chat (the 48x40 image, resized and
/// center-cropped by the CLIP processor for tiny-llava), and the load line names the path.
#[test]
fn the_cli_answers_an_image_chat_on_both_llava_checkpoints_with_mlx_vlms_tokens() {
    for name in ["tiny-llava", "tiny-llava-qwen2"] {
        let g = llava_golden(name);
        let (tmp, dir) = tiny_model(name, &g);
        let images = write_images(tmp.path(), &g);
        let ImageInput::Path(image) = &images[g["chat"]["image"].as_u64().unwrap() as usize] else { unreachable!() };
        let want = u32s(&g["chat"]["tokens"]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["generate", "--model"])
            .arg(&dir)
            .arg("--image")
            .arg(image)
            .args(["--chat", g["chat"]["message"].as_str().unwrap(), "--temp", "0", "--output", "jsonl"])
            .args(["--max-tokens", &want.len().to_string(), "--ignore-eos"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(err.contains("vision: generic VLM fallback"), "{name}: the load line names the path: {err}");
        let got: Vec<u32> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as u32).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, want, "{name}");
        // The engine renders and expands the chat as the golden did.
        let kit = kit_with(&dir, CacheConfig::default());
        let msg = [ChatMessage::with_images("user", g["chat"]["message"].as_str().unwrap(), 1)];
        let ids = kit.tokenize_chat_with_images(&msg, None, &Default::default(), &[images[2].clone()], None).unwrap();
        assert_eq!(ids, u32s(&g["chat"]["prompt_ids"]), "{name}");
    }
}

#[test]
fn model_info_says_which_vision_path_a_model_took() {
    let g = llava_golden("tiny-llava");
    let (_tmp, dir) = tiny_model("tiny-llava", &g);
    assert_eq!(kit_with(&dir, CacheConfig::default()).info().vision_path, VisionPath::GenericFallback);
    let gemma = tiny_vlm::tiny_vlm(&tiny_vlm::golden());
    let gemma = gemma.path().join("tiny-gemma3-vlm");
    assert_eq!(kit_with(&gemma, CacheConfig::default()).info().vision_path, VisionPath::AddOn("gemma3".into()));
    // The same folder with only its text config: a text-only model (the vision tensors unused).
    let path = dir.join("config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::write(&path, config["text_config"].to_string()).unwrap();
    assert_eq!(kit_with(&dir, CacheConfig::default()).info().vision_path, VisionPath::None);
}

/// Golden prompt 1 (two images) through the pipeline in prefill chunks of 5, then the feature
/// memo, then a text-only follow-up whose image turn comes from the prompt cache.
#[test]
fn the_fallback_gets_chunked_prefill_the_feature_memo_and_the_image_keyed_prompt_cache() {
    let g = llava_golden("tiny-llava");
    let (tmp, dir) = tiny_model("tiny-llava", &g);
    let images = write_images(tmp.path(), &g);
    let kit = kit_with(&dir, CacheConfig::default());
    let p = &g["prompts"][1];
    let order = vec![images[1].clone(), images[2].clone()];
    let tokens = kit.tokenize_with_images("<1> <20> <21> <image> <22> <23> <image> <24> <25>", &order, None).unwrap();
    assert_eq!(tokens, u32s(&p["ids"]));
    let want = u32s(&p["tokens"]);
    let (got, stats) = run(&kit, greedy(tokens, order.clone(), want.len()));
    assert_eq!(got, want, "mlx-vlm's greedy tokens through the pipeline");
    assert_eq!((stats.cached_tokens, stats.images_encoded, stats.images_from_memo), (0, 2, 0));
    let tokens = kit.tokenize_with_images("<1> <image> <9> <image> <10>", &order, None).unwrap();
    let (_, stats) = run(&kit, greedy(tokens, order, 2));
    assert_eq!((stats.images_encoded, stats.images_from_memo), (0, 2), "both from the memo");

    let first = [ChatMessage::with_images("user", "<40> <41> <42> <43>", 1)];
    let chat = |m: &[ChatMessage], img: &[ImageInput]| {
        kit.tokenize_chat_with_images(m, None, &Default::default(), img, None).unwrap()
    };
    let tokens = chat(&first, &images[..1]);
    let (reply, _) = run(&kit, greedy(tokens.clone(), images[..1].to_vec(), 4));
    let text: String = reply.iter().map(|t| format!("<{t}> ")).collect();
    let follow =
        [first[0].clone(), ChatMessage::new("assistant", text.trim().to_string()), ChatMessage::new("user", "<60>")];
    let tokens2 = chat(&follow, &images[..1]);
    let (cont, stats) = run(&kit, greedy(tokens2.clone(), images[..1].to_vec(), 4));
    assert_eq!(stats.cached_tokens, tokens.len() + reply.len() - 1, "the whole first turn, image included");
    assert_eq!((stats.images_encoded, stats.images_from_memo), (0, 0), "a cached image needs no features");
    let (want, _) = run(&kit_with(&dir, CacheConfig::default()), greedy(tokens2, images[..1].to_vec(), 4));
    assert_eq!(cont, want, "the cached follow-up computes what a fresh prefill does");
}

/// KV quantization and the rotating cache under an image prompt on the fallback path.
#[test]
fn the_fallback_runs_with_a_quantized_or_rotating_kv_cache() {
    let g = llava_golden("tiny-llava");
    let (_tmp, dir) = tiny_model("tiny-llava", &g);
    let m = load(&dir);
    let vision = m.vision.as_ref().unwrap().as_ref().unwrap();
    let pre = mlx_engine::vision::PreprocessorConfig::load(&dir).unwrap().unwrap();
    let feats: Vec<Array> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rows| vision.addon.encode(&pre.preprocess(&image_rows(rows)).unwrap().to_array().unwrap()).unwrap())
        .collect();
    let p = &g["prompts"][1];
    let emb = vlm_parity::merged(&m, vision.addon.as_ref(), &feats, p);
    let dense = vlm_parity::decode(m.model.as_ref(), &mut KvCache::new(m.model.cache_layout()), &emb, 8);
    let kv8 = CacheConfig { kv_bits: Some(8), kv_group_size: 32, ..Default::default() };
    let mut cache = KvCache::with_config(m.model.cache_layout(), &kv8).unwrap();
    let got = vlm_parity::decode(m.model.as_ref(), &mut cache, &emb, 8);
    assert!(cache.is_quantized());
    for (i, ((t, lp), (td, lpd))) in got.iter().zip(&dense).enumerate() {
        assert_eq!(t, td, "kv8 step {i}");
        measured::check("tiny-llava/kv8-vs-dense-logprob", (lp - lpd).abs(), 0.3, format!("kv8 step {i}"));
    }
    // A window above prompt + decode changes nothing; one below it rotates through the spans.
    let prompt = u32s(&p["ids"]).len();
    let big = CacheConfig { max_kv_size: Some(64), ..Default::default() };
    let mut cache = KvCache::with_config(m.model.cache_layout(), &big).unwrap();
    assert_eq!(vlm_parity::decode(m.model.as_ref(), &mut cache, &emb, 8), dense);
    let small = CacheConfig { max_kv_size: Some(24), ..Default::default() };
    let mut cache = KvCache::with_config(m.model.cache_layout(), &small).unwrap();
    let rotated = vlm_parity::decode(m.model.as_ref(), &mut cache, &emb, 8);
    assert_eq!(rotated.len(), 8);
    assert!(prompt > 24 && rotated.iter().all(|(_, lp)| lp.is_finite()));
}

/// Registry, plugin folders and built-ins come first; the fallback catches the rest, but not a
/// type the registry maps to a missing plugin; `mlx-engine plugins` lists it.
#[test]
fn resolution_reaches_the_fallback_last_and_the_listing_shows_it() {
    let tmp = tempfile::TempDir::new().unwrap();
    let registry = tmp.path().join("registry.toml");
    std::fs::write(&registry, "[vision]\nfancy_vlm = \"fancy\"\n").unwrap();
    let host = PluginHost::new(&HostOptions::isolated(vec![], Some(registry))).unwrap();
    let r = host.resolve_vision("llava").unwrap();
    assert_eq!(r.via, Via::Fallback);
    assert!(r.to_string().contains("built-in `generic-vlm`") && r.to_string().contains("generic VLM fallback"), "{r}");
    let e = host.resolve_vision("fancy_vlm").unwrap_err().to_string();
    assert!(e.contains("fancy") && e.contains("fancy_vlm"), "a registry entry's missing plugin is reported: {e}");
    let listing = mlx_engine::cli::plugins::render(&host);
    assert!(
        listing.contains("generic-vlm  model types: -  vision add-ons: any other type with a vision_config"),
        "{listing}"
    );
    // The gemma3 plugin claims gemma3 before the fallback could.
    let standard = PluginHost::new(&HostOptions::standard(vec![], None)).unwrap();
    assert_ne!(standard.resolve_vision("gemma3").unwrap().via, Via::Fallback);
}

/// The checkpoint's vision tensors (`vision_tower.*`, `multi_modal_projector.*`) and config.
fn vision_parts(dir: &Path) -> (Value, Weights) {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights: Weights = load_safetensors(&dir.join("model.safetensors")).unwrap().arrays.into_iter().collect();
    (config, partition::partition(weights).vision)
}

fn build(config: &Value, weights: Weights) -> mlx_engine::api::Result<Box<dyn mlx_engine::api::DynVision>> {
    vision_factory::<GenericVlm>(&config.to_string(), weights, WeightsFormat::Mlx)
}

fn tiny_llava() -> (tempfile::TempDir, PathBuf) {
    tiny_model("tiny-llava", &llava_golden("tiny-llava"))
}

#[test]
fn an_unknown_tower_type_is_named_with_the_supported_ones_and_text_still_serves() {
    let (tmp, dir) = tiny_llava();
    let (mut config, weights) = vision_parts(&dir);
    config["vision_config"]["model_type"] = "dinov2_model".into();
    let e = build(&config, weights).err().unwrap().to_string();
    assert!(e.contains("`dinov2_model`") && e.contains("clip_vision_model, siglip_vision_model"), "{e}");
    // Through a load: the text model serves, an image request gets the same message.
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let kit = kit_with(&dir, CacheConfig::default());
    assert_eq!(kit.info().vision_path, VisionPath::Unavailable);
    let images = write_images(tmp.path(), &llava_golden("tiny-llava"));
    let e = kit.tokenize_with_images("<7>", &images[..1], None).unwrap_err().to_string();
    assert!(e.contains("dinov2_model") && e.contains("clip_vision_model, siglip_vision_model"), "{e}");
    assert_eq!(run(&kit, greedy(vec![1, 7], Vec::new(), 3)).0.len(), 3);
}

#[test]
fn a_projector_narrower_than_the_text_model_is_named_with_both_sizes() {
    let (_tmp, dir) = tiny_llava();
    let (config, mut weights) = vision_parts(&dir);
    weights.insert("multi_modal_projector.linear_2.weight", Array::zeros(&[48, 64], Dtype::F32).unwrap());
    weights.insert("multi_modal_projector.linear_2.bias", Array::zeros(&[48], Dtype::F32).unwrap());
    let e = build(&config, weights).err().unwrap().to_string();
    assert!(e.contains("output width is 48") && e.contains("hidden size (text_config.hidden_size) is 64"), "{e}");
    // A one-layer projector is checked the same way.
    let (config, mut weights) = vision_parts(&dir);
    for p in ["weight", "bias"] {
        weights.remove(&format!("multi_modal_projector.linear_2.{p}"));
    }
    weights.insert("multi_modal_projector.linear_1.weight", Array::zeros(&[80, 32], Dtype::F32).unwrap());
    let e = build(&config, weights).err().unwrap().to_string();
    assert!(e.contains("output width is 80") && e.contains("is 64"), "{e}");
}

#[test]
fn a_linear_projector_the_transformers_v5_tower_names_and_feature_settings_load() {
    let (_tmp, dir) = tiny_llava();
    let (config, weights) = vision_parts(&dir);
    let pixels = Array::zeros(&[1, 32, 32, 3], Dtype::F32).unwrap();
    let nested = build(&config, weights.clone()).unwrap().encode(&pixels).unwrap().to_vec_f32().unwrap();
    // Fix 6: `vision_tower.embeddings.*` (transformers v5) loads as `vision_tower.vision_model.*`.
    let mut flat = weights.clone();
    flat.rename_prefix("vision_tower.vision_model.", "vision_tower.");
    // A SigLIP-style pooling head is not llava's and is dropped.
    flat.insert("vision_tower.head.probe", Array::zeros(&[1, 1, 32], Dtype::F32).unwrap());
    assert_eq!(build(&config, flat).unwrap().encode(&pixels).unwrap().to_vec_f32().unwrap(), nested);
    // A linear projector (`linear_1` to the text width) gives one row per patch.
    let mut linear = weights.clone();
    for p in ["weight", "bias"] {
        linear.remove(&format!("multi_modal_projector.linear_2.{p}"));
    }
    linear.insert("multi_modal_projector.linear_1.weight", Array::ones(&[64, 32], Dtype::F32).unwrap());
    linear.insert("multi_modal_projector.linear_1.bias", Array::zeros(&[64], Dtype::F32).unwrap());
    let f = build(&config, linear).unwrap().encode(&pixels).unwrap();
    assert_eq!(f.shape(), vec![16, 64]);
    // `full` keeps the class token; layer -4 is the embeddings; -5 is past the start.
    let mut full = config.clone();
    full["vision_feature_select_strategy"] = "full".into();
    full["vision_feature_layer"] = (-4).into();
    assert_eq!(build(&full, weights.clone()).unwrap().encode(&pixels).unwrap().shape(), vec![17, 64]);
    full["vision_feature_layer"] = (-5).into();
    let e = build(&full, weights.clone()).err().unwrap().to_string();
    assert!(e.contains("vision_feature_layer -5") && e.contains("4 hidden states"), "{e}");
    full["vision_feature_layer"] = serde_json::json!([-2, -1]);
    assert!(build(&full, weights).err().unwrap().to_string().contains("lists of layers are not supported"));
}

/// Bad values in a llava config fail the build naming the field, never panicking (the factory
/// is called directly here, outside the engine's panic guard).
#[test]
fn bad_llava_config_values_name_the_field() {
    let (_tmp, dir) = tiny_llava();
    let (config, weights) = vision_parts(&dir);
    let cases: [(&str, Value, &str); 8] = [
        ("/vision_config/patch_size", 0.into(), "vision_config.patch_size must be positive"),
        ("/vision_config/image_size", 2_000_000_000.into(), "too many"),
        ("/vision_config/image_size", 30.into(), "image_size 30 is not a multiple of patch_size 8"),
        ("/vision_config/hidden_act", "swish".into(), "hidden_act `swish`"),
        ("/vision_config/model_type", Value::Null, "vision_config.model_type is missing"),
        ("/vision_feature_layer", i64::MIN.into(), "vision_feature_layer -9223372036854775808"),
        ("/vision_feature_select_strategy", "cls".into(), "vision_feature_select_strategy `cls`"),
        ("/projector_hidden_act", "tanh".into(), "projector_hidden_act` `tanh`"),
    ];
    for (pointer, value, want) in cases {
        let mut c = config.clone();
        *c.pointer_mut(pointer).unwrap() = value;
        let e = build(&c, weights.clone()).err().unwrap_or_else(|| panic!("{pointer} built")).to_string();
        assert!(e.contains(want), "{pointer}: {e}");
    }
    let mut c = config.clone();
    c["text_config"].as_object_mut().unwrap().remove("hidden_size");
    assert!(build(&c, weights).err().unwrap().to_string().contains("text_config.hidden_size is missing"));
}
