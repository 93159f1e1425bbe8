//! The generic VLM fallback against mlx-vlm's llava, on the two tiny llava checkpoints of
//! `scripts/goldens/tiny_models.py` (goldens: `make goldens-vlm`,
//! `scripts/goldens/record_vlm_llava.py`): tiny-llava (CLIP tower, feature layer -2, `default`
//! selection, llama text) and tiny-llava-qwen2 (SigLIP tower, layer -1, `full`, qwen2 text: the
//! composition with a second text architecture, through the same code). In f32 on the CPU:
//! the preprocessed pixels of each image against the HF image processor (one image is resized
//! and center-cropped), each image's projected features within 1e-4, and greedy decoding from
//! the merged prompt for two prompts (one with two images) for at least 16 steps.

mod measured;
mod tiny_vlm;
#[path = "tiny_vlm/parity.rs"]
mod vlm_parity;

use mlx_engine::api::Array;
use mlx_engine::vision::{PreprocessorConfig, VisionPath};
use tiny_vlm::{flat, image_rows, llava_golden, load, tiny_model};
use vlm_parity::{check_prompts, max_diff, FEATURES};

/// Pixels from our preprocessing vs the HF processor's: the same resampler and float steps, so
/// only float32 rounding of the normalisation may differ.
const PIXELS: f32 = 1e-5;

fn parity(name: &str, text_type: &str) {
    let g = llava_golden(name);
    let (_tmp, dir) = tiny_model(name, &g);
    let m = load(&dir);
    assert_eq!(m.model_type, text_type);
    assert_eq!(m.vision_path, VisionPath::GenericFallback, "{name} goes through the generic fallback");
    let vision = m.vision.as_ref().expect("a vision_config").as_ref().expect("the fallback builds");
    let pre = PreprocessorConfig::load(&dir).unwrap().expect("preprocessor_config.json");
    let mut feats: Vec<Array> = Vec::new();
    for (i, rows) in g["images"].as_array().unwrap().iter().enumerate() {
        let px = pre.preprocess(&image_rows(rows)).unwrap();
        let want = flat(&g["pixels"][i]);
        measured::check(&format!("{name}/pixels"), max_diff(&px.data, &want, "pixels"), PIXELS, format!("image {i}"));
        let f = vision.addon.encode(&px.to_array().unwrap()).unwrap();
        let n = g["image_tokens"].as_i64().unwrap() as i32;
        assert_eq!(f.shape(), vec![n, 64], "image {i}: one feature row per image token, text width");
        let d = max_diff(&f.to_vec_f32().unwrap(), &flat(&g["features"][i]), "features");
        measured::check(&format!("{name}/features"), d, FEATURES, format!("image {i}"));
        feats.push(f);
    }
    check_prompts(name, &m, vision.addon.as_ref(), &feats, &g);
}

#[test]
fn tiny_llava_clip_llama_matches_mlx_vlm_pixels_features_and_greedy_tokens() {
    parity("tiny-llava", "llama");
}

#[test]
fn tiny_llava_siglip_qwen2_composes_through_the_fallback_and_matches_mlx_vlm() {
    parity("tiny-llava-qwen2", "qwen2");
}
