//! Structured output through `mlx-engine serve`, driven by the official `openai` client
//! (`server_structured/client.py`) with SmolLM2 f32: `response_format` `json_schema` (plain
//! and streamed) and `json_object`, `tool_choice` `required` and a named function (whose
//! arguments must follow the tool's parameters schema), two requests with different schemas
//! in one batch, and bad formats refused with 400 naming the parameter; the forced-call
//! grammar of each template family accepts exactly the syntax its parser reads. This side validates
//! the outputs with the `jsonschema` crate and compares them with the library's own
//! constrained greedy generations.

mod measured;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mlx_engine::constrain::{Constraint, ConstraintEnv, Grammar};
use mlx_engine::generate::GenerateRequest;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::server::structured::tool_call_constraint;
use mlx_engine::server::tools::{self, ToolFormat};
use mlx_engine::tokenizer::{ChatMessage, Tokenizer};
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::{json, Value};

const PERSON_PROMPT: &str = "Describe a person who lives in Paris as JSON.";
const COLOUR_PROMPT: &str = "List some colours of the rainbow as JSON.";

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "Lyon", "Nice"]}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

fn colour_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "colours": {"type": "array", "items": {"enum": ["red", "orange", "yellow", "green", "blue"]}, "minItems": 2, "maxItems": 5}
        },
        "required": ["colours"],
        "additionalProperties": false
    })
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            }, "required": ["city", "unit"], "additionalProperties": false}
        }},
        {"type": "function", "function": {
            "name": "get_time", "description": "The time in a timezone",
            "parameters": {"type": "object", "properties": {
                "timezone": {"type": "string", "maxLength": 30}
            }, "required": ["timezone"], "additionalProperties": false}
        }}
    ])
}

fn validate(schema: &Value, text: &str, what: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("a valid test schema");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {text} violates its schema: {errors:?}");
    v
}

/// The library's greedy output under `schema` (what the server must return, alone or batched).
fn library(kit: &ModelKit, prompt: &str, schema: &Value) -> String {
    let prompt_tokens =
        kit.tokenize_chat(&[ChatMessage::new("user", prompt)], None, &Default::default()).expect("template");
    let req = GenerateRequest {
        prompt_tokens,
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(160),
        constraint: Some(Constraint::new(Grammar::JsonSchema(schema.clone()), "response_format")),
        ..Default::default()
    };
    kit.generate(req).expect("generate").map(|r| r.expect("result").text).collect()
}

/// The server process (killed on drop), its log going to a file that is read when needed.
struct Server {
    child: Child,
    log_file: tempfile::NamedTempFile,
    base_url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        let log_file = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["serve", "--served-model-name", "smollm2", "--port", "0", "--max-concurrency", "4", "--model"])
            .arg(model)
            .env_remove("MLX_ENGINE_LOG")
            .stdout(Stdio::piped())
            .stderr(log_file.reopen().expect("the log file"))
            .spawn()
            .expect("start mlx-engine serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("the listening line");
        let mut server = Server { child, log_file, base_url: String::new() };
        match first.trim().strip_prefix("listening on ") {
            Some(url) => server.base_url = url.to_string(),
            None => panic!("the server did not start: {first:?}\n{}", server.log().join("\n")),
        }
        server
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_file.path()).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs client.py against `server`; what it printed last, as JSON.
fn client(server: &Server, config: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_structured/client.py");
    let out = Command::new(python()).arg(script).arg(config.to_string()).output().expect("run client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        panic!(
            "client.py failed ({}):\n{stderr}\n{stdout}\n--- server log ---\n{}",
            out.status,
            server.log().join("\n")
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("client.py printed no results ({e}): {stdout}"))
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(".venv/bin/python")
}

#[test]
fn the_official_client_gets_schema_valid_output_and_forced_tool_calls() {
    let model = measured::models_dir().join("smollm2-135m-instruct/f32");
    let py = python();
    if !measured::have_models("server_structured", &[&model, &py]) {
        return;
    }
    let kit = ModelKit::load(&model, LoadOptions::default()).expect("load");
    let want_person = library(&kit, PERSON_PROMPT, &person_schema());
    let want_colours = library(&kit, COLOUR_PROMPT, &colour_schema());
    drop(kit);

    let server = Server::start(&model);
    let config = json!({
        "base_url": server.base_url, "model": "smollm2", "tools": tools(),
        "person_prompt": PERSON_PROMPT, "person_schema": person_schema(),
        "colour_prompt": COLOUR_PROMPT, "colour_schema": colour_schema(),
    });
    let results = client(&server, &config);
    measured::note(format_args!("server_structured: {results}"));

    let text = |k: &str| results[k].as_str().unwrap_or_else(|| panic!("{k}: {results}")).to_string();
    validate(&person_schema(), &text("person"), "json_schema");
    assert_eq!(text("person"), want_person, "json_schema vs the library's constrained greedy output");
    assert_eq!(text("person_stream"), want_person, "streamed json_schema");
    assert!(validate(&json!({"type": "object"}), &text("object"), "json_object").is_object());

    // Forced calls: a known tool with arguments that follow its parameters schema.
    let tools = tools();
    let params = |name: &str| {
        tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"]["name"] == name)
            .map(|t| t["function"]["parameters"].clone())
    };
    for (key, only) in [("required", None), ("named", Some("get_time"))] {
        let calls = results[key].as_array().unwrap_or_else(|| panic!("{key}: {results}"));
        assert!(!calls.is_empty(), "{key}: no calls");
        for call in calls {
            let name = call["name"].as_str().unwrap();
            if let Some(only) = only {
                assert_eq!(name, only, "{key}: the named tool");
            }
            let schema = params(name).unwrap_or_else(|| panic!("{key}: unknown tool {name}"));
            validate(&schema, call["arguments"].as_str().unwrap(), key);
        }
    }

    // The two batched requests with different schemas: each valid, each what it gives alone,
    // and they were in the batch together.
    assert_eq!(results["together"][0], want_person.as_str(), "batched person");
    assert_eq!(results["together"][1], want_colours.as_str(), "batched colours");
    validate(&colour_schema(), &want_colours, "colours");
    let joined: Vec<String> = server.log().into_iter().filter(|l| l.contains("joined the batch")).collect();
    let together = ["id=batch-0", "id=batch-1"]
        .iter()
        .filter_map(|id| joined.iter().find(|l| l.split_whitespace().any(|w| w == *id)))
        .any(|l| l.contains("active_rows=2"));
    assert!(together, "the two schema requests never shared the batch: {joined:?}");
}

/// Feeds `text`'s tokens through `constraint`'s matcher: each must be allowed when it comes,
/// and the grammar must be complete at the end. `Err` names the first refused token.
fn accepts(tok: &Tokenizer, constraint: &Constraint, text: &str) -> Result<(), String> {
    let env = ConstraintEnv::for_tokenizer(tok, None, "tools").unwrap();
    let mut m = constraint.compile(&env).unwrap_or_else(|e| panic!("{e}"));
    for id in tok.encode(text, false).unwrap() {
        let mask = m.mask(env.width()).unwrap().to_vec::<f32>().unwrap();
        if mask[id as usize] != 0.0 {
            return Err(format!("token {id} {:?} refused", tok.decode(&[id], false).unwrap()));
        }
        m.consume(id).unwrap();
    }
    if m.is_done() {
        Ok(())
    } else {
        Err("the grammar is not complete".into())
    }
}

#[test]
fn forced_call_grammars_write_exactly_what_each_family_parser_reads() {
    let model = measured::models_dir().join("smollm2-135m-instruct/f32");
    if !measured::have_models("server_structured", &[&model]) {
        return;
    }
    let tok = Tokenizer::from_dir(&model).unwrap();
    let tools = tools();
    let tools = tools.as_array().unwrap();
    let names = ["get_weather".to_string(), "get_time".to_string()];
    let weather = r#"{"city": "Paris", "unit": "celsius"}"#;
    let cases = [
        (
            ToolFormat::Hermes,
            "",
            format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {weather}}}\n</tool_call>"),
        ),
        (ToolFormat::Mistral, "", format!("[TOOL_CALLS][{{\"name\": \"get_weather\", \"arguments\": {weather}}}]")),
        (ToolFormat::Mistral, "[ARGS]", format!("[TOOL_CALLS]get_weather[ARGS]{weather}")),
    ];
    for (format, template, text) in cases {
        let any = tool_call_constraint(&tok, format, template, tools, &names).unwrap();
        accepts(&tok, &any, &text).unwrap_or_else(|e| panic!("{format:?} {template}: {e}: {text}"));
        let parsed = tools::parse(format, &text);
        assert_eq!(parsed.calls.len(), 1, "{format:?}: {text}");
        assert_eq!(parsed.calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&parsed.calls[0].arguments).unwrap(),
            serde_json::from_str::<Value>(weather).unwrap()
        );
        // Named: only that tool; arguments outside its schema and a second call are refused.
        let named = tool_call_constraint(&tok, format, template, tools, &names[1..]).unwrap();
        assert!(accepts(&tok, &named, &text).is_err(), "{format:?}: get_time only");
        let bad = text.replace("celsius", "kelvin");
        assert!(accepts(&tok, &any, &bad).is_err(), "{format:?}: an enum value outside the schema");
        assert!(accepts(&tok, &any, &format!("{text}{text}")).is_err(), "{format:?}: one call");
    }
}
