//! Structured output (`GenerateRequest::constraint`, `generate --json-schema/--json-object/
//! --grammar/--regex`) on the real SmolLM2 f32 model, greedy on the CPU: every output parses
//! and validates against its schema (checked with the `jsonschema` crate), a Lark grammar and
//! a regex hold through the CLI, speculative decoding under a schema gives the plain tokens,
//! the padding rows of a wider embedding are masked, and bad grammars are refused by name.

mod measured;

use std::path::PathBuf;
use std::process::Command;

use mlx_engine::constrain::{Constraint, ConstraintEnv, Grammar};
use mlx_engine::generate::{GenerateRequest, GenerationStats, StopReason};
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::speculative::Speculation;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::{json, Value};

fn model_dir() -> PathBuf {
    measured::models_dir().join("smollm2-135m-instruct/f32")
}

fn draft_dir() -> PathBuf {
    measured::models_dir().join("smollm2-135m-instruct/bf16")
}

struct Out {
    ids: Vec<u32>,
    text: String,
    reason: StopReason,
    stats: GenerationStats,
}

fn request(kit: &ModelKit, prompt: &str, grammar: Grammar, max_tokens: usize) -> GenerateRequest {
    let prompt_tokens =
        kit.tokenize_chat(&[ChatMessage::new("user", prompt)], None, &Default::default()).expect("template");
    GenerateRequest {
        prompt_tokens,
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(max_tokens),
        speculation: Speculation::Off,
        constraint: Some(Constraint::new(grammar, "constraint")),
        ..Default::default()
    }
}

fn run(kit: &ModelKit, req: GenerateRequest) -> mlx_engine::Result<Out> {
    let (mut ids, mut text, mut reason) = (Vec::new(), String::new(), None);
    let mut g = kit.generate(req)?;
    for r in g.by_ref() {
        let r = r?;
        ids.extend(r.tokens.iter().map(|t| t.id));
        text.push_str(&r.text);
        reason = r.stop_condition.map(|c| c.reason).or(reason);
    }
    let stats = g.stats().cloned().expect("stats");
    Ok(Out { ids, text, reason: reason.expect("a stop condition"), stats })
}

/// Parses `text` and validates it against `schema`, panicking with every violation.
fn validated(schema: &Value, text: &str) -> Value {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("a valid test schema");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text} violates the schema: {errors:?}");
    value
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Describe a person who lives in Paris as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "maxLength": 24},
                            "country": {"enum": ["France", "Germany", "Italy"]}
                        },
                        "required": ["city", "country"],
                        "additionalProperties": false
                    }
                },
                "required": ["name", "age", "address"],
                "additionalProperties": false
            }),
        ),
        (
            "List some colours of the rainbow as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "colours": {
                        "type": "array",
                        "items": {"enum": ["red", "orange", "yellow", "green", "blue", "violet"]},
                        "minItems": 3,
                        "maxItems": 6
                    },
                    "count": {"type": "integer", "minimum": 3, "maximum": 6}
                },
                "required": ["colours", "count"],
                "additionalProperties": false
            }),
        ),
    ]
}

#[test]
fn outputs_parse_and_validate_and_speculation_gives_the_plain_tokens() {
    let model = model_dir();
    let draft = draft_dir();
    if !measured::have_models("structured", &[&model, &draft]) {
        return;
    }
    let kit = ModelKit::load(&model, LoadOptions::default()).expect("load");
    // The checker can fail: an instance missing a required field is caught.
    let (_, first) = &schemas()[0];
    let validator = jsonschema::validator_for(first).unwrap();
    assert!(!validator.is_valid(&json!({"name": "x", "age": 3})), "the validator must reject a missing field");

    let mut plain_runs = Vec::new();
    for (prompt, schema) in schemas() {
        let req = request(&kit, prompt, Grammar::JsonSchema(schema.clone()), 160);
        let out = run(&kit, req.clone()).expect("constrained generation");
        validated(&schema, &out.text);
        assert_eq!(out.reason, StopReason::GrammarComplete, "the grammar ends the output: {}", out.text);
        measured::note(format_args!("structured: {prompt} -> {}", out.text));
        plain_runs.push((req, out));
    }

    // Any JSON object.
    let out = run(&kit, request(&kit, "Give me a JSON object about a cat.", Grammar::JsonObject, 160)).unwrap();
    let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.text));
    assert!(v.is_object(), "{v}");

    // Speculative decoding under the same schema: a bf16 draft (it disagrees now and then, so
    // drafts are rejected and the matcher rolls back) and prompt lookup give the plain tokens.
    kit.load_draft_model(&draft).expect("load the draft");
    let (mut drafted, mut accepted) = (0, 0);
    for (i, (req, want)) in plain_runs.iter().enumerate() {
        let mut kinds = vec![("draft model", Speculation::DraftModel, 3)];
        if i == 0 {
            kinds.push(("prompt lookup", Speculation::prompt_lookup(), 2));
        }
        for (name, speculation, k) in kinds {
            let spec = GenerateRequest { speculation, num_draft_tokens: Some(k), ..req.clone() };
            let got = run(&kit, spec).expect("speculative constrained generation");
            assert_eq!(got.ids, want.ids, "{name}, k = {k}: {} vs {}", got.text, want.text);
            assert_eq!(got.reason, want.reason);
            let s = got.stats.speculative.expect("speculative stats");
            measured::note(format_args!("structured: {name} k={k}: {}/{} drafts accepted", s.accepted, s.drafted));
            (drafted, accepted) = (drafted + s.drafted, accepted + s.accepted);
        }
    }
    // Some drafts were rejected, so the matcher's rollback was exercised.
    assert!(drafted > accepted && accepted > 0, "{accepted} of {drafted} drafts accepted");
}

#[test]
fn padding_rows_are_masked_and_bad_grammars_are_refused_by_name() {
    let model = model_dir();
    if !measured::have_models("structured", &[&model]) {
        return;
    }
    let kit = ModelKit::load(&model, LoadOptions::default()).expect("load");
    let vocab = kit.tokenizer().vocab_size();
    let env = ConstraintEnv::for_tokenizer(kit.tokenizer(), Some(vocab + 64), "constraint").unwrap();
    assert_eq!(env.width(), vocab + 64);
    let mut m = Constraint::new(Grammar::JsonObject, "constraint").compile(&env).unwrap();
    let mask = m.mask(env.width()).unwrap().to_vec::<f32>().unwrap();
    assert!(mask[vocab..].iter().all(|&x| x == f32::NEG_INFINITY), "padding rows allowed");
    let allowed: Vec<usize> = (0..vocab).filter(|&i| mask[i] == 0.0).collect();
    assert!(!allowed.is_empty());
    for &id in &allowed {
        let text = kit.tokenizer().decode(&[id as u32], false).unwrap();
        assert!(text.starts_with('{'), "token {id} {text:?} cannot start a JSON object");
    }

    let refuse = |grammar: Grammar, param: &str, what: &str| {
        let req = GenerateRequest {
            constraint: Some(Constraint::new(grammar, param)),
            ..request(&kit, "x", Grammar::JsonObject, 4)
        };
        let e = run(&kit, req).err().expect("refused").to_string();
        assert!(e.contains(&format!("invalid parameter `{param}`")) && e.contains(what), "{e}");
    };
    refuse(Grammar::JsonSchema(json!({"type": "objekt"})), "response_format", "invalid JSON schema");
    refuse(Grammar::JsonSchema(json!([1, 2])), "response_format", "a JSON schema is an object");
    refuse(Grammar::Lark("start: foo".into()), "--grammar g.lark", "invalid Lark grammar");
    refuse(Grammar::Regex("a(b".into()), "--regex", "invalid regex");
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .arg("generate")
        .args(args)
        .env_remove("MLX_ENGINE_LOG")
        .output()
        .expect("run mlx-engine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_takes_a_lark_grammar_a_regex_a_schema_and_names_bad_files() {
    let model = model_dir();
    if !measured::have_models("structured", &[&model]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = model.to_str().unwrap();
    let base = ["--model", m, "--temp", "0", "-n", "48", "--chat"];

    let lark = dir.path().join("answer.lark");
    std::fs::write(&lark, "start: \"Answer: \" WORD \" (\" NUM \")\"\nWORD: /[a-z]{2,10}/\nNUM: /[0-9]{1,3}/\n")
        .unwrap();
    let (ok, out, err) = cli(&[&base[..], &["What colour is the sky?", "--grammar", lark.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let re = regex::Regex::new(r"^Answer: [a-z]{2,10} \([0-9]{1,3}\)$").unwrap();
    assert!(re.is_match(out.trim_end_matches('\n')), "{out:?}");

    let (ok, out, err) = cli(&[&base[..], &["Give a date.", "--regex", "[0-9]{4}-[0-9]{2}-[0-9]{2}"]].concat());
    assert!(ok, "{err}");
    let re = regex::Regex::new(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$").unwrap();
    assert!(re.is_match(out.trim_end_matches('\n')), "{out:?}");

    let schema = dir.path().join("s.json");
    let s = json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": false});
    std::fs::write(&schema, s.to_string()).unwrap();
    let (ok, out, err) =
        cli(&[&base[..], &["Where is the Eiffel tower?", "--json-schema", schema.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    validated(&s, out.trim_end_matches('\n'));

    // Bad files are named: not JSON, an invalid schema, a missing file, two grammars at once.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let (ok, _, err) = cli(&[&base[..], &["x", "--json-schema", bad.to_str().unwrap()]].concat());
    assert!(!ok && err.contains(bad.to_str().unwrap()) && err.contains("not valid JSON"), "{err}");
    std::fs::write(&bad, r#"{"type": 7}"#).unwrap();
    let (ok, _, err) = cli(&[&base[..], &["x", "--json-schema", bad.to_str().unwrap()]].concat());
    assert!(
        !ok && err.contains(&format!("--json-schema {}", bad.display())) && err.contains("invalid JSON schema"),
        "{err}"
    );
    let missing = dir.path().join("missing.lark");
    let (ok, _, err) = cli(&[&base[..], &["x", "--grammar", missing.to_str().unwrap()]].concat());
    assert!(!ok && err.contains(missing.to_str().unwrap()), "{err}");
    let (ok, _, err) = cli(&[&base[..], &["x", "--json-object", "--regex", "a"]].concat());
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
