//! `mlx-engine serve` driven by the official `openai` Python client on loopback, with the
//! SmolLM2 f32 model: chat (plain and streamed), completions, stop strings, logprobs, the
//! error cases over raw HTTP, a disconnect mid-stream, and requests batched together. The
//! script (`server_openai/client.py`) asserts the protocol; this side checks its outputs
//! against the library's own greedy generations (`ModelKit`) and reads the server's log to
//! see that the disconnected row stopped at once and that the batch really held several rows.

mod measured;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mlx_engine::generate::GenerateRequest;
use mlx_engine::sample::SamplingOverrides;
use mlx_engine::tokenizer::ChatMessage;
use mlx_engine::{LoadOptions, ModelKit};
use serde_json::{json, Value};

const CHAT_PROMPT: &str = "What is the capital of France?";
const COMPLETION_PROMPT: &str = "The capital of France is";
const BATCH_PROMPTS: [&str; 3] =
    ["Name three colours.", "Write a haiku about the sea.", "Give me one tip for sleeping well."];
const MAX_BODY: usize = 100_000;
const KEY: &str = "test-key-123";

fn model_dir() -> PathBuf {
    measured::models_dir().join("smollm2-135m-instruct/f32")
}

fn greedy(max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingOverrides { temp: Some(0.0), ..Default::default() },
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn text_of(kit: &ModelKit, prompt_tokens: Vec<u32>, max_tokens: usize) -> String {
    let gen = kit.generate(GenerateRequest { prompt_tokens, ..greedy(max_tokens) }).expect("generate");
    gen.map(|r| r.expect("result").text).collect()
}

fn chat_text(kit: &ModelKit, prompt: &str, max_tokens: usize) -> String {
    let tokens = kit.tokenize_chat(&[ChatMessage::new("user", prompt)], None, &Default::default()).expect("template");
    text_of(kit, tokens, max_tokens)
}

/// The server process, killed on drop; its stderr (the request log) is collected.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    base_url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--served-model-name", "smollm2", "--port", "0", "--api-key-env", "SERVER_TEST_KEY"])
            .args(["--max-concurrency", "4", "--queue", "4", "--max-body-bytes", &MAX_BODY.to_string()])
            .env("SERVER_TEST_KEY", KEY)
            .env_remove("MLX_ENGINE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mlx-engine serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the listening line");
        let base_url = match line.trim().strip_prefix("listening on ") {
            Some(u) => u.to_string(),
            None => panic!("the server did not start: {line:?}\n{}", log.lock().unwrap().join("\n")),
        };
        Server { child, log, base_url }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The server's log line about request `id` that contains `what`.
    fn line(&self, id: &str, what: &str) -> Option<String> {
        let tag = format!("id={id}");
        self.log().into_iter().find(|l| l.contains(what) && l.split_whitespace().any(|w| w == tag))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=N` from a log line.
fn field(line: &str, key: &str) -> usize {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(".venv/bin/python")
}

#[test]
fn the_official_client_gets_the_librarys_greedy_outputs() {
    let model = model_dir();
    let py = python();
    if !measured::have_models("server_openai", &[&model, &py]) {
        return;
    }
    // What the library itself generates, greedily, for the prompts the script sends.
    let kit = ModelKit::load(&model, LoadOptions::default()).expect("load");
    let want_chat = chat_text(&kit, CHAT_PROMPT, 24);
    let want_completion = text_of(&kit, kit.tokenize(COMPLETION_PROMPT).unwrap(), 12);
    let want_batch: Vec<String> = BATCH_PROMPTS.iter().map(|p| chat_text(&kit, p, 20)).collect();
    let space_id = kit.tokenizer().decode(&[33], false).unwrap();
    drop(kit);

    let server = Server::start(&model);
    let config = json!({
        "base_url": server.base_url, "model": "smollm2", "api_key": KEY,
        "chat_prompt": CHAT_PROMPT, "completion_prompt": COMPLETION_PROMPT,
        "max_body_bytes": MAX_BODY, "batch_prompts": BATCH_PROMPTS,
        "max_concurrency": 4, "queue": 4,
    });
    let t = Instant::now();
    let out = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_openai/client.py"))
        .arg(config.to_string())
        .output()
        .expect("run the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py failed ({:?} after {:.0?}):\n{}\n{stdout}\n--- server log ---\n{}",
        out.status,
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        server.log().join("\n")
    );
    let results: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("results JSON");

    assert!(!want_chat.is_empty());
    assert_eq!(results["chat"], want_chat.as_str(), "chat vs ModelKit greedy");
    assert_eq!(results["chat_stream"], want_chat.as_str(), "streamed chat vs ModelKit greedy");
    assert_eq!(results["completion"], want_completion.as_str(), "completion vs ModelKit greedy");
    assert_eq!(results["completion_stream"], want_completion.as_str(), "streamed completion");
    // The stop string cuts the greedy text right before its first occurrence.
    let words: Vec<&str> = want_chat.split_whitespace().collect();
    let stop = format!(" {}", words[2]);
    let cut = &want_chat[..want_chat.find(&stop).unwrap()];
    assert_eq!(results["chat_stop"], cut, "stop string");
    // logit_bias +100 on token 33 makes every token that one.
    assert_eq!(results["biased_tokens"], json!([space_id, space_id, space_id]), "logit_bias");
    // The batched requests produce what each produces alone.
    assert_eq!(results["together"], json!(want_batch), "batched greedy outputs vs alone");

    // The rows of the batch overlapped: one joined while another was running.
    let joined: Vec<usize> = (0..BATCH_PROMPTS.len())
        .map(|i| field(&server.line(&format!("batch-{i}"), "joined the batch").expect("joined line"), "active_rows"))
        .collect();
    assert!(joined.iter().any(|&n| n >= 2), "the batch never held two rows: {joined:?}");

    // The disconnected stream stopped at once: a few tokens past what the client read (those
    // already sent or in the socket when it closed), not the 2000 it asked for.
    let left = server.line("disconnect-test", "left the batch").expect("the disconnected row left the batch");
    let generated = field(&left, "generated_tokens");
    let read = results["disconnect_events_read"].as_u64().unwrap() as usize;
    assert!(generated < read + 16, "{generated} tokens generated after reading {read} events: {left}");
    measured::note(format_args!(
        "server_openai: the disconnected row generated {generated} tokens for {read} events read; \
         rows in the batch as each batched request joined: {joined:?}; most rows in one batched \
         decode step: {}",
        results["max_batch_rows"]
    ));
}

/// One raw HTTP/1.1 request with `Connection: close`; the whole response as text.
fn http(base_url: &str, request_id: &str, path: &str, body: &Value) -> String {
    use std::io::{Read, Write};
    let addr = base_url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n\
         authorization: Bearer {KEY}\r\nx-request-id: {request_id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    out
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let model = model_dir();
    if !measured::have_models("server_openai", &[&model]) {
        return;
    }
    let mut server = Server::start(&model);
    let url = server.base_url.clone();
    let body = json!({"model": "smollm2", "prompt": "1, 2, 3,", "temperature": 0, "max_tokens": 40});
    let reply = std::thread::spawn(move || http(&url, "shutdown-test", "/v1/completions", &body));
    let t = Instant::now();
    while server.line("shutdown-test", "joined the batch").is_none() {
        assert!(t.elapsed().as_secs() < 180, "the request never started:\n{}", server.log().join("\n"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let reply = reply.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let json: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).expect("JSON body");
    assert_eq!(json["choices"][0]["finish_reason"], "length", "{json}");
    assert_eq!(json["usage"]["completion_tokens"], 40, "{json}");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed().as_secs() < 180, "the server did not exit after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}:\n{}", server.log().join("\n"));
    assert!(server.log().iter().any(|l| l.contains("shutting down")), "{}", server.log().join("\n"));
    let addr = server.base_url.strip_prefix("http://").unwrap().to_string();
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port still accepts connections");
}

/// Tools reach the chat template as `tools`, and an assistant turn's `tool_calls` (arguments
/// sent as a JSON string) as objects, as Hugging Face templates expect; a hermes-style model
/// answer then parses into calls.
#[test]
fn tools_and_tool_calls_reach_the_template_and_calls_parse_back() {
    use mlx_engine::server::openai::Message;
    use mlx_engine::server::tools::{parse, ToolFormat};
    use mlx_engine::tokenizer::{ChatTemplate, Tokenizer};
    let model = model_dir();
    if !measured::have_models("server_openai", &[&model]) {
        return;
    }
    let tok = Tokenizer::from_dir(&model).expect("tokenizer");
    let template = ChatTemplate::new(
        "hermes-test",
        "{% for t in tools %}<tools>{{ t | tojson }}</tools>{% endfor %}\
         {% for m in messages %}<{{ m.role }}>{{ m.content }}\
         {% for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", \
         \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}\
         {% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{% endfor %}",
    );
    let messages: Vec<Message> = serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]))
    .unwrap();
    let chat: Vec<ChatMessage> = messages.iter().enumerate().map(|(i, m)| m.to_chat(i).unwrap()).collect();
    let tools = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    let mut args = serde_json::Map::new();
    args.insert("tools".into(), tools);
    let text = tok.apply_chat_template(&chat, false, &args, Some(&template)).expect("render");
    assert!(text.contains(r#"<tools>{"type": "function", "function": {"name": "weather""#), "{text}");
    let call = r#"<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>"#;
    assert!(text.contains(call), "{text}");
    assert!(text.contains("<tool>sunny[call_1]"), "{text}");
    // What a hermes model answers parses back into the call.
    let parsed = parse(ToolFormat::Hermes, call);
    assert_eq!(parsed.calls.len(), 1);
    assert_eq!(parsed.calls[0].name, "weather");
    assert_eq!(serde_json::from_str::<Value>(&parsed.calls[0].arguments).unwrap(), json!({"city": "Paris"}));
}

/// Caches of different lengths stack into one left-padded batch and split back unchanged; an
/// empty one cannot stack (`kv_cache_stack.rs` has the sliding-window rings).
#[test]
fn caches_stack_into_a_padded_batch_and_unstack_unchanged() {
    use mlx_engine::api::{random, AttentionOptions, Dtype, ForwardContext, LayerCache};
    use mlx_engine::cache::{CacheConfig, KvCache};
    let _ = mlx_engine::mlx::ffi::ops_table();
    let fill = |len: i32, seed: u64| {
        let mut c = KvCache::new(vec![LayerCache::Full; 2]);
        for layer in 0..2 {
            let key = random::key(seed * 10 + layer as u64).unwrap();
            let x = random::normal(&[1, 2, len, 4], 0.0, 1.0, Dtype::F32, Some(&key)).unwrap();
            c.attention(layer, &x, &x, &x, 0.5, &AttentionOptions::default()).unwrap();
        }
        c
    };
    let (a, b, c) = (fill(3, 1), fill(7, 2), fill(5, 3));
    assert!(a.is_stackable());
    let batch = KvCache::stack(&[&a, &b, &c]).unwrap();
    assert_eq!(batch.left_padding(), &[4, 0, 2]);
    assert_eq!(batch.len(), 7);
    let back = batch.unstack().unwrap();
    for (orig, got) in [&a, &b, &c].into_iter().zip(&back) {
        assert_eq!(orig.len(), got.len());
        let got = &got.detached().unwrap();
        for layer in 0..2 {
            let (k0, v0) = orig.layer_contents(layer).unwrap().unwrap();
            let (k1, v1) = got.layer_contents(layer).unwrap().unwrap();
            assert_eq!(k0.shape(), k1.shape());
            assert_eq!(k0.to_vec_f32().unwrap(), k1.to_vec_f32().unwrap());
            assert_eq!(v0.to_vec_f32().unwrap(), v1.to_vec_f32().unwrap());
        }
    }
    let empty = KvCache::with_config(vec![LayerCache::Full], &CacheConfig::default()).unwrap();
    assert!(KvCache::stack(&[&empty]).is_err());
}
