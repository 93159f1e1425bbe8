//! Images through the whole pipeline on the tiny Gemma 3 VLM: chat messages with images are
//! expanded and tokenized, the request's images are decoded, preprocessed, encoded (or found in
//! the feature memo) and merged, the prompt is prefilled over embeddings in chunks, and the
//! prompt cache reuses image prefixes only for the same image. Bad inputs fail the request with
//! a message naming the image or parameter, and the model keeps serving.

mod measured;
mod tiny_vlm;

use std::path::Path;

use mlx_engine::api::runtime::Device;
use mlx_engine::generate::{GenerateRequest, GenerationStats};
use mlx_engine::model::DtypeChoice;
use mlx_engine::plugin_host::HostOptions;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::vision::ImageInput;
use mlx_engine::{LoadOptions, ModelKit};
use tiny_vlm::{golden, image_of, tiny_vlm, u32s};

fn kit(dir: &Path) -> ModelKit {
    let options = LoadOptions {
        dtype: DtypeChoice::F32,
        device: Device::Cpu,
        plugins: HostOptions::standard(vec![], None),
        ..Default::default()
    };
    ModelKit::load(dir, options).unwrap()
}

/// The two golden images as PNG files in `dir`.
fn write_images(dir: &Path) -> Vec<ImageInput> {
    let g = golden();
    g["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let path = dir.join(format!("image{i}.png"));
            image_of(rows).save(&path).unwrap();
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

fn run(kit: &ModelKit, req: GenerateRequest) -> mlx_engine::Result<(Vec<u32>, GenerationStats)> {
    let mut generation = kit.generate(req)?;
    let mut tokens = Vec::new();
    for r in generation.by_ref() {
        tokens.extend(r?.tokens.iter().map(|t| t.id));
    }
    Ok((tokens, generation.stats().unwrap().clone()))
}

fn chat(kit: &ModelKit, messages: &[ChatMessage], images: &[ImageInput]) -> mlx_engine::Result<Vec<u32>> {
    kit.tokenize_chat_with_images(messages, None, &Default::default(), images, None)
}

#[test]
fn the_pipeline_gives_mlx_vlms_tokens_for_a_raw_prompt_with_two_images() {
    // Golden prompt 1 is `<2> <20> <21> [image 1] <22> <23> [image 0] <24> <25>`; written as
    // text with two placeholders, the pipeline expands, tokenizes, encodes and merges it.
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let kit = kit(&dir);
    let p = &g["prompts"][1];
    let text = "<2> <20> <21> <start_of_image> <22> <23> <start_of_image> <24> <25>";
    let order = vec![images[1].clone(), images[0].clone()];
    let tokens = kit.tokenize_with_images(text, &order, None).unwrap();
    assert_eq!(tokens, u32s(&p["ids"]));
    let want = u32s(&p["tokens"]);
    let (got, stats) = run(&kit, greedy(tokens, order, want.len())).unwrap();
    assert_eq!(got, want, "greedy tokens through the pipeline (chunks of 5 over embeddings)");
    assert_eq!((stats.cached_tokens, stats.images_encoded, stats.images_from_memo), (0, 2, 0));

    // The same images in another prompt come from the feature memo.
    let tokens = kit.tokenize_with_images("<2> <start_of_image> <9> <start_of_image> <10>", &images, None).unwrap();
    let (_, stats) = run(&kit, greedy(tokens, images.clone(), 2)).unwrap();
    assert_eq!((stats.cached_tokens, stats.images_encoded, stats.images_from_memo), (1, 0, 2));
}

#[test]
fn a_text_only_follow_up_reuses_the_image_prefix_and_a_changed_image_does_not() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let kit = kit(&dir);
    // Long enough that the tiny model's sliding layers (window 8) rotate: the cache cannot be
    // trimmed, so reuse must come from an exact stored prefix.
    let first = [ChatMessage::with_images("user", "<40> <41> <42> <43> <44> <45> <46> <47> <48> <49> <50>", 1)];
    let tokens = chat(&kit, &first, &images[..1]).unwrap();
    let span = tokens.iter().position(|&t| t == 301).unwrap();
    assert_eq!(&tokens[span..span + 6], &[301, 300, 300, 300, 300, 302]);
    let (reply, _) = run(&kit, greedy(tokens.clone(), images[..1].to_vec(), 6)).unwrap();

    // The next turn carries the same image (the conversation's history) and new text: the
    // whole first prompt comes from the cache, images included.
    let text: String = reply.iter().map(|t| format!("<{t}> ")).collect();
    let follow =
        [first[0].clone(), ChatMessage::new("assistant", text.trim().to_string()), ChatMessage::new("user", "<60>")];
    let tokens2 = chat(&kit, &follow, &images[..1]).unwrap();
    assert!(tokens2.starts_with(&tokens[..tokens.len() - 3]), "the follow-up extends the first turn");
    let (cont, stats) = run(&kit, greedy(tokens2.clone(), images[..1].to_vec(), 6)).unwrap();
    // The role names are unknown words (`<0>`) in this tokenizer, so the stored first turn
    // (prompt and reply, all but the last sampled token) is a prefix of the follow-up.
    assert_eq!(stats.cached_tokens, tokens.len() + reply.len() - 1, "the whole first turn, image included");
    assert_eq!((stats.images_encoded, stats.images_from_memo), (0, 0), "a cached image needs no features");

    // The same follow-up with the other image: nothing from the image span on is reused, and
    // the result is what a fresh model computes.
    let (changed, stats) = run(&kit, greedy(tokens2.clone(), images[1..].to_vec(), 6)).unwrap();
    assert!(stats.cached_tokens <= span, "cached {} tokens past the image span at {span}", stats.cached_tokens);
    let fresh = self::kit(&dir);
    let (want, _) = run(&fresh, greedy(tokens2.clone(), images[1..].to_vec(), 6)).unwrap();
    assert_eq!(changed, want);
    let (want, _) = run(&fresh, greedy(tokens2, images[..1].to_vec(), 6)).unwrap();
    assert_eq!(cont, want, "the cached follow-up computes what a fresh prefill does");
}

#[test]
fn bad_image_requests_fail_naming_the_problem_and_the_model_keeps_serving() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let kit = kit(&dir);
    let err = |r: mlx_engine::Result<Vec<u32>>| r.unwrap_err().to_string();

    // More images than placeholders, and the reverse.
    let e = err(kit.tokenize_with_images("<start_of_image> <7>", &images, None));
    assert!(e.contains("1 image placeholder(s) `<start_of_image>` but 2 image(s)"), "{e}");
    let e = err(chat(&kit, &[ChatMessage::with_images("user", "<7>", 2)], &images[..1]));
    assert!(e.contains("the messages hold 2 image(s) but 1 were given"), "{e}");
    // A chat template that writes no image placeholder.
    let file = tmp.path().join("plain.jinja");
    std::fs::write(&file, "{% for m in messages %}{{ m.content if m.content is string else '' }}{% endfor %}").unwrap();
    let plain_template = mlx_engine::tokenizer::ChatTemplate::from_file(&file).unwrap();
    let e = kit
        .tokenize_chat_with_images(
            &[ChatMessage::with_images("user", "<7>", 1)],
            Some(&plain_template),
            &Default::default(),
            &images[..1],
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 image placeholder(s) `<start_of_image>` but 1 image(s)"), "{e}");
    // A request whose tokens hold fewer image spans than images.
    let plain = kit.tokenize("<7> <8>").unwrap();
    let e = run(&kit, greedy(plain.clone(), images.clone(), 2)).unwrap_err().to_string();
    assert!(e.contains("2 image(s) were given but the prompt holds the image tokens of only 0"), "{e}");

    // Missing, non-image and truncated files name the file.
    let missing = tmp.path().join("nope.png");
    let e = err(kit.tokenize_with_images("<7>", &[ImageInput::Path(missing.clone())], None));
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let text_file = tmp.path().join("notes.png");
    std::fs::write(&text_file, "not an image").unwrap();
    let e = err(kit.tokenize_with_images("<7>", &[ImageInput::Path(text_file.clone())], None));
    assert!(e.contains(&text_file.display().to_string()) && e.contains("not a PNG, JPEG or WebP"), "{e}");
    let truncated = tmp.path().join("cut.png");
    let bytes = std::fs::read(tmp.path().join("image0.png")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(kit.tokenize_with_images("<7>", &[ImageInput::Path(truncated.clone())], None));
    assert!(e.contains(&truncated.display().to_string()), "{e}");

    // The model still serves, with and without images.
    let ok = kit.tokenize_with_images("<7>", &images[..1], None).unwrap();
    assert_eq!(run(&kit, greedy(ok, images[..1].to_vec(), 3)).unwrap().0.len(), 3);
    assert_eq!(run(&kit, greedy(plain, Vec::new(), 3)).unwrap().0.len(), 3);
}

#[test]
fn images_for_a_text_only_model_are_refused() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let images = write_images(tmp.path());
    // tiny-gemma3 is the text-only sibling written next to the VLM.
    let dir = tmp.path().join("tiny-gemma3");
    std::fs::copy(tmp.path().join("tiny-gemma3-vlm/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::copy(tmp.path().join("tiny-gemma3-vlm/tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
    let kit = kit(&dir);
    let e = kit.tokenize_with_images("<7>", &images[..1], None).unwrap_err().to_string();
    assert!(e.contains("text-only model") && e.contains("vision_config"), "{e}");
    let e = run(&kit, greedy(vec![2, 7], images[..1].to_vec(), 2)).unwrap_err().to_string();
    assert!(e.contains("text-only model"), "{e}");
}

/// The end-to-end check: `mlx-engine generate --model <tiny gemma3 VLM> --image a.png
/// --chat "Describe the image." --temp 0` gives mlx-vlm's tokens (its own prompt formatting,
/// processor and generate, recorded by `scripts/goldens/record_vlm.py`).
#[test]
fn the_cli_with_an_image_and_a_chat_message_matches_mlx_vlm() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let ImageInput::Path(image) = &images[g["chat"]["image"].as_u64().unwrap() as usize] else { unreachable!() };
    let want = u32s(&g["chat"]["tokens"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["generate", "--model"])
        .arg(&dir)
        .arg("--image")
        .arg(image)
        .args(["--chat", g["chat"]["message"].as_str().unwrap(), "--temp", "0", "--output", "jsonl"])
        .args(["--max-tokens", &want.len().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as u32).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_vision_model_type_no_add_on_claims_falls_back_to_the_generic_vlm_which_names_what_is_missing() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["model_type"] = "mystery_vlm".into();
    std::fs::write(&path, config.to_string()).unwrap();
    let kit = kit(&dir);
    let e = kit.tokenize_with_images("<7>", &images[..1], None).unwrap_err().to_string();
    // No add-on claims `mystery_vlm`, so the generic llava fallback tries it: the SigLIP tower
    // loads, but there is no llava projector; the text model still serves.
    assert_eq!(kit.info().vision_path, mlx_engine::vision::VisionPath::Unavailable);
    assert!(
        e.contains("cannot take images")
            && e.contains("mystery_vlm")
            && e.contains("generic-vlm")
            && e.contains("multi_modal_projector.linear_1.weight"),
        "{e}"
    );
    let plain = kit.tokenize("<2> <7> <8>").unwrap();
    assert_eq!(run(&kit, greedy(plain, Vec::new(), 3)).unwrap().0.len(), 3);
}

/// The prefill checkpoint (11 tokens before the end) never lands inside an image span: here it
/// would, so it moves to the span's start, and the next turn with that image resumes there.
#[test]
fn the_prefill_checkpoint_moves_out_of_an_image_span() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let kit = kit(&dir);
    // `<2> <7> <8> <9>` + span (6) + `<10> <11> <12> <13> <14> <15> <16>`: 17 tokens, so the
    // checkpoint at 17 - 11 = 6 falls inside the span at 4..10.
    let tokens = kit
        .tokenize_with_images("<2> <7> <8> <9> <start_of_image> <10> <11> <12> <13> <14> <15> <16>", &images[..1], None)
        .unwrap();
    assert_eq!((tokens.len(), tokens[4]), (17, 301));
    run(&kit, greedy(tokens.clone(), images[..1].to_vec(), 2)).unwrap();
    let info = kit.prompt_cache_info().unwrap();
    assert_eq!(info.events.checkpoints, 1);
    assert!(info.entries.iter().any(|e| e.tokens == 4), "{:?}", info.entries);
    assert!(!info.entries.iter().any(|e| e.tokens > 4 && e.tokens < 10), "{:?}", info.entries);
}

/// `mlx-engine chat`: `/image PATH` queues an image for the next message; the reply streams and
/// the next turn (text only) keeps the conversation's image.
#[test]
fn chat_takes_an_image_command_before_a_message() {
    use std::io::Write;
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let ImageInput::Path(image) = &images[0] else { unreachable!() };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["chat", "--model"])
        .arg(&dir)
        .args(["--temp", "0", "--max-tokens", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "/image {}\nDescribe the image.\nAnd now?\n/image {}\n",
        image.display(),
        tmp.path().join("missing.png").display()
    );
    child.stdin.take().unwrap().write_all(format!("{script}Again.\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(image 1 queued for the next message)"), "{stderr}");
    // Two replies, then the turn with a missing image fails naming it and the chat goes on.
    assert_eq!(stdout.lines().filter(|l| !l.trim().is_empty()).count(), 2, "{stdout}");
    assert!(stderr.contains("missing.png"), "{stderr}");
    assert!(stderr.matches("prompt tokens from cache").count() >= 2, "{stderr}");
}

/// The tiny tokenizer spells unknown words as token 0, Gemma 3's pad token, whose embedding the
/// image merge zeroes (as mlx-vlm does) and the text path does not. A text prompt sharing the
/// image prompt's first words must not reuse their cached keys and values.
#[test]
fn a_text_prompt_reuses_only_what_an_image_prompt_embedded_as_text() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let dir = tmp.path().join("tiny-gemma3-vlm");
    let images = write_images(tmp.path());
    let kit = kit(&dir);
    let tokens = chat(&kit, &[ChatMessage::with_images("user", "Describe the image.", 1)], &images[..1]).unwrap();
    assert_eq!(&tokens[..7], &[2, 3, 0, 0, 0, 0, 301]);
    // One chunk past the checkpoint (at 4), as the CLI runs it.
    run(&kit, GenerateRequest { prefill_step_size: None, ..greedy(tokens, images[..1].to_vec(), 2) }).unwrap();
    let text = chat(&kit, &[ChatMessage::new("user", "<20> <21> <22>")], &[]).unwrap();
    assert_eq!(&text[..4], &[2, 3, 0, 20]);
    let (got, stats) = run(&kit, greedy(text.clone(), vec![], 6)).unwrap();
    assert_eq!(stats.cached_tokens, 2, "the prefix up to the pad token");
    let (want, _) = run(&self::kit(&dir), greedy(text, vec![], 6)).unwrap();
    assert_eq!(got, want, "the text prompt computes what a fresh prefill does");
}
