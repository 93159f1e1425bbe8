//! Speculative decoding at the edges: incompatible drafts refused naming what differs, bad
//! settings naming the parameter, the draft prefill's progress reports, a VLM's text-only turns
//! drafting while its image turns decode plainly, NaN logits, and the CLI flags and stats.
//!
//! Needs the workspace plugins in target/<profile>/ (`cargo build --workspace`; `make test`).

mod common_models;
mod speculative_util;
mod tiny_vlm;
mod tokenizer_fixtures;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common_models::*;
use mlx_engine::cache::CacheConfig;
use mlx_engine::generate::{GenerateRequest, PromptProgress, StopReason};
use mlx_engine::speculative::Speculation;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::vision::ImageInput;
use mlx_engine::ModelKit;
use speculative_util::*;

/// A byte-level folder like the main model's, with `edit` applied to its tokenizer files.
fn draft_folder(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = TinyModel::with_tok(Arch::Llama, Tok::ByteLevel, 8).write_temp();
    edit(dir.path());
    dir
}

#[test]
fn an_incompatible_draft_is_refused_naming_what_differs() {
    let main = TinyModel::printable(3).write_temp();
    let kit = kit_with(main.path(), CacheConfig::default());
    let other_vocab = TinyModel::new(Arch::Llama, 8);
    let other_vocab = TinyModel::with_tok(other_vocab.arch, Tok::SentencePiece, 8).write_temp();
    let swapped = draft_folder(|d| {
        let path = d.join("tokenizer.json");
        let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vocab = &mut t["model"]["vocab"];
        let (a, b) = (vocab["a"].clone(), vocab["b"].clone());
        (vocab["a"], vocab["b"]) = (b, a);
        std::fs::write(&path, t.to_string()).unwrap();
    });
    let other_eos = draft_folder(|d| {
        std::fs::write(d.join("generation_config.json"), r#"{"eos_token_id": 1}"#).unwrap();
    });
    let cases = [
        (other_vocab.path(), "the vocabulary sizes differ: the main model's tokenizer has 268 tokens, the draft's 279"),
        (swapped.path(), "token 100 is `a` in the main model and `b` in the draft"),
        (other_eos.path(), "the end-of-sequence tokens differ: {0, 2} in the main model, {0, 1, 2} in the draft"),
    ];
    for (path, want) in cases {
        for e in [kit.check_draft_model(path).unwrap_err(), kit.load_draft_model(path).unwrap_err()] {
            let e = e.to_string();
            assert!(e.contains(want) && e.contains("cannot draft for"), "{e}\nwanted: {want}");
        }
    }
    let missing = main.path().join("no-such-draft");
    assert!(kit.load_draft_model(&missing).unwrap_err().to_string().contains("no such file or folder"));
    // Nothing was loaded, and the kit serves as before; a compatible draft passes the check.
    let p = prompt(6, Tok::ByteLevel, 1);
    assert_eq!(run(&kit, greedy(&p, 4)).stats.speculative, None);
    kit.check_draft_model(main.path()).expect("a model can draft for itself");
    kit.check_draft_model(draft_folder(|_| {}).path()).expect("same tokenizer files");
}

#[test]
fn bad_speculation_settings_fail_naming_the_parameter() {
    let dir = TinyModel::printable(3).write_temp();
    let kit = kit_with(dir.path(), CacheConfig::default());
    let p = prompt(6, Tok::ByteLevel, 1);
    let lookup = |min_ngram, max_ngram| Speculation::PromptLookup { min_ngram, max_ngram };
    let cases = [
        (Speculation::prompt_lookup(), Some(0), "invalid parameter `num_draft_tokens`: must be in [1, 64], got 0"),
        (Speculation::prompt_lookup(), Some(65), "invalid parameter `num_draft_tokens`: must be in [1, 64], got 65"),
        (lookup(3, 2), None, "invalid parameter `ngram`: the smallest n-gram (3) exceeds the largest (2)"),
        (lookup(0, 2), None, "invalid parameter `ngram`: n-gram sizes must be in [1, 32], got 0 to 2"),
        (Speculation::DraftModel, None, "invalid parameter `speculation`"),
    ];
    for (speculation, k, want) in cases {
        let req = GenerateRequest { speculation, num_draft_tokens: k, ..greedy(&p, 4) };
        let e = try_run(&kit, req).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
    assert_eq!(run(&kit, greedy(&p, 3)).ids().len(), 3, "the kit still serves");
}

/// Records prefill reports, main and draft.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl PromptProgress for Recorder {
    fn begin(&mut self, cached: usize, total: usize) -> bool {
        self.0.lock().unwrap().push(format!("begin {cached}/{total}"));
        true
    }
    fn finish(&mut self) -> bool {
        self.0.lock().unwrap().push("finish".into());
        true
    }
    fn draft_begin(&mut self, cached: usize, total: usize) -> bool {
        self.0.lock().unwrap().push(format!("draft begin {cached}/{total}"));
        true
    }
    fn draft_update(&mut self, processed: usize) -> bool {
        self.0.lock().unwrap().push(format!("draft update {processed}"));
        true
    }
    fn draft_finish(&mut self) -> bool {
        self.0.lock().unwrap().push("draft finish".into());
        // Cancelling here stops the request before its first token.
        false
    }
}

#[test]
fn the_draft_prefill_is_reported_as_draft_and_can_cancel() {
    let dir = TinyModel::printable(3).write_temp();
    let kit = with_draft(dir.path(), dir.path(), CacheConfig::default());
    let p = prompt(12, Tok::ByteLevel, 1);
    let events = Arc::new(Mutex::new(Vec::new()));
    let req = GenerateRequest { prefill_step_size: Some(5), ..drafted(&greedy(&p, 8), 3) };
    let mut g = kit.generate_with_progress(req.clone(), Box::new(Recorder(events.clone()))).expect("start");
    let results: Vec<_> = g.by_ref().map(|r| r.expect("result")).collect();
    assert_eq!(
        results.last().and_then(|r| r.stop_condition.clone()).map(|s| s.reason),
        Some(StopReason::UserCancelled)
    );
    assert!(results.iter().all(|r| r.tokens.is_empty()));
    // The draft's checkpoint (11 tokens before the prompt's end, at 1) falls inside its first
    // chunk of 5, which runs whole: the snapshot is the cache trimmed back to it.
    let want = [
        "begin 0/12",
        "finish",
        "draft begin 0/12",
        "draft update 5",
        "draft update 10",
        "draft update 11",
        "draft finish",
    ];
    assert_eq!(*events.lock().unwrap(), want);
    // The next request finds both prompts cached (the draft's up to its last chunk).
    let r = run(&kit, req);
    let s = r.stats.speculative.expect("stats");
    assert_eq!((r.stats.cached_tokens, s.draft_cached_tokens), (11, 11));
}

#[test]
fn a_vlms_text_only_turn_uses_the_draft_and_an_image_turn_decodes_plainly() {
    let g = tiny_vlm::golden();
    let tmp = tiny_vlm::tiny_vlm(&g);
    let image = tmp.path().join("image0.png");
    tiny_vlm::image_of(&g["images"][0]).save(&image).unwrap();
    text_only_turns_draft(&tmp.path().join("tiny-gemma3-vlm"), image);
}

/// The same on the generic VLM fallback (tiny-llava): speculative decoding of text-only turns
/// is the engine's, not the vision path's.
#[test]
fn a_generic_fallback_vlms_text_only_turn_uses_the_draft() {
    let g = tiny_vlm::llava_golden("tiny-llava");
    let (tmp, dir) = tiny_vlm::tiny_model("tiny-llava", &g);
    let image = tmp.path().join("image0.png");
    tiny_vlm::image_rows(&g["images"][0]).save(&image).unwrap();
    text_only_turns_draft(&dir, image);
}

fn text_only_turns_draft(dir: &Path, image: std::path::PathBuf) {
    let images = vec![ImageInput::Path(image)];
    // The VLM drafts for itself: the draft is its text model, which sees image tokens as ids.
    let kit = with_draft(dir, dir, CacheConfig::default());
    let reference = kit_with(dir, CacheConfig::default());
    let chat = |kit: &ModelKit, messages: &[ChatMessage]| {
        kit.tokenize_chat_with_images(messages, None, &Default::default(), &images, None).unwrap()
    };
    let turn = |tokens: &[u32]| GenerateRequest { images: images.clone(), ..drafted(&greedy(tokens, 6), 3) };

    let first = [ChatMessage::with_images("user", "<40> <41> <42> <43> <44> <45>", 1)];
    let tokens = chat(&kit, &first);
    let got = run(&kit, turn(&tokens));
    assert_eq!(got.stats.speculative, None);
    let why = got.stats.speculative_fallback.clone().expect("the stats say why");
    assert!(why.contains("images"), "{why}");
    assert_eq!(got.ids(), run(&reference, plain(&turn(&tokens))).ids());

    // The next turn's image lies in the cached part: a text-only turn, decoded speculatively.
    let text: String = got.ids().iter().map(|t| format!("<{t}> ")).collect();
    let follow =
        [first[0].clone(), ChatMessage::new("assistant", text.trim().to_string()), ChatMessage::new("user", "<60>")];
    let tokens = chat(&kit, &follow);
    let got = run(&kit, turn(&tokens));
    assert_eq!(got.stats.speculative_fallback, None);
    let s = got.stats.speculative.clone().expect("speculative stats");
    // Not every draft is accepted although the model drafts for itself: the draft sees the
    // image span as placeholder ids, not as the image.
    assert!(s.drafted > 0 && s.accepted <= s.drafted, "{s:?}");
    assert!(got.stats.cached_tokens > 0, "the image prefix came from the main cache");
    assert_eq!(got.ids(), run(&reference, plain(&turn(&tokens))).ids());
}

/// `mlx-engine ARGS...`: exit code, stdout, stderr.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_cli_takes_a_draft_model_or_prompt_lookup_and_reports_the_acceptance() {
    let dir = TinyModel::printable(3).write_temp();
    let model = dir.path().to_str().unwrap();
    let common =
        ["generate", "--model", model, "--prompt", "the cat sat on the mat", "--temp", "0", "--max-tokens", "12"];
    let (code, want, err) = cli(&[&common[..], &["--output", "jsonl"]].concat());
    assert_eq!(code, 0, "{err}");
    let ids = |jsonl: &str| -> Vec<u64> {
        jsonl
            .lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect::<Vec<_>>()
            })
            .collect()
    };
    for extra in [
        vec!["--draft-model", model, "--num-draft-tokens", "4"],
        vec!["--draft", "prompt-lookup", "--lookup-ngram-max", "2"],
    ] {
        let (code, out, err) = cli(&[&common[..], &extra, &["--output", "jsonl"]].concat());
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(ids(&out), ids(&want), "{extra:?}: the plain tokens");
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let s = &last["stats"]["speculative"];
        assert!(s["drafted"].as_u64().is_some() && s["accepted"].as_u64().is_some(), "{last}");
        assert!(s["acceptance_rate"].as_f64().is_some(), "{last}");
        assert!(err.contains("drafted") && err.contains("accepted ("), "{extra:?}: the stats line: {err}");
    }
    let (code, _, err) = cli(&[&common[..], &["--draft-model", model]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("loaded draft model") && err.contains("draft model: "), "{err}");
    let rows: [(&[&str], &str); 5] = [
        (&["--num-draft-tokens", "3"], "invalid parameter `--num-draft-tokens`: only applies with --draft-model"),
        (&["--draft", "prompt-lookup", "--num-draft-tokens", "0"], "`--num-draft-tokens`: must be in [1, 64], got 0"),
        (&["--draft", "prompt-lookup", "--num-draft-tokens", "-2"], "`--num-draft-tokens`: must be >= 1, got -2"),
        (&["--lookup-ngram-min", "2"], "invalid parameter `--lookup-ngram-min`: only applies to --draft prompt-lookup"),
        (
            &["--draft", "prompt-lookup", "--lookup-ngram-min", "4", "--lookup-ngram-max", "3"],
            "(4) exceeds the largest (3)",
        ),
    ];
    for (extra, want) in rows {
        let (code, _, err) = cli(&[&common[..], extra].concat());
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}\nwanted: {want}");
    }
    let (code, _, err) = cli(&[&common[..], &["--draft-model", model, "--draft", "prompt-lookup"]].concat());
    assert_eq!(code, 2, "clap refuses both drafters: {err}");
    let other = TinyModel::new(Arch::Gemma3, 2).write_temp();
    let (code, _, err) = cli(&[&common[..], &["--draft-model", other.path().to_str().unwrap()]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot draft for") && err.contains("vocabulary sizes differ"), "{err}");
}

#[test]
fn nan_logits_fail_a_speculative_request_naming_the_step() {
    let tiny = TinyModel::nan_logits(5);
    let dir = tiny.write_temp();
    let kit = kit_with(dir.path(), CacheConfig::default());
    let req = GenerateRequest { speculation: Speculation::prompt_lookup(), ..greedy(&prompt(5, tiny.tok, 1), 4) };
    let err = try_run(&kit, req).err().expect("NaN logits fail").to_string();
    assert!(err.contains("logits are not finite") && err.contains("generated token 1"), "{err}");
}
