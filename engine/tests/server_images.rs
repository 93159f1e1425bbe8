//! Images in `mlx-engine serve`'s chat: `image_url` parts with `data:` URLs go through the
//! vision path, on the tiny Gemma 3 VLM. The server's greedy tokens equal those of
//! `mlx-engine generate --image` for the same message and image (alone, and while a text
//! request runs beside it); a remote URL is refused, as is an image for a text-only model,
//! each with a 400 naming the field.

mod measured;
mod tiny_vlm;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};
use tiny_vlm::{golden, image_of, tiny_vlm};

/// `mlx-engine serve` on `model`, killed on drop.
struct Server(Child, String);

impl Server {
    fn start(model: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["-q", "serve", "--port", "0", "--served-model-name", "m", "--dtype", "f32", "--model"])
            .arg(model)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mlx-engine serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no server: {line:?}")).to_string();
        Server(child, url)
    }

    /// POSTs a chat; the status and the JSON body.
    fn chat(&self, body: &Value) -> (u16, Value) {
        self.post("/v1/chat/completions", body)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.1);
        match ureq::post(&url).send_json(body.clone()) {
            Ok(r) => (r.status(), r.into_json().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
            Err(e) => panic!("request failed: {e}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chat_body(content: Value, max_tokens: usize) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0,
           "max_tokens": max_tokens, "logprobs": true})
}

/// The token texts of a chat answer (from its logprobs).
fn tokens_of(v: &Value) -> Vec<String> {
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap_or_else(|| panic!("no logprobs: {v}"));
    content.iter().map(|t| t["token"].as_str().unwrap().to_string()).collect()
}

/// `mlx-engine generate --temp 0 --output jsonl` with `args`: the token texts.
fn cli_tokens(model: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["generate", "--dtype", "f32", "--temp", "0", "--output", "jsonl", "--model"])
        .arg(model)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["tokens"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn image_parts_get_the_tokens_of_generate_with_the_image() {
    let g = golden();
    let tmp = tiny_vlm(&g);
    let model = tmp.path().join("tiny-gemma3-vlm");
    let image = tmp.path().join("image.png");
    image_of(&g["images"][g["chat"]["image"].as_u64().unwrap() as usize]).save(&image).unwrap();
    let message = g["chat"]["message"].as_str().unwrap();
    let n = 12;
    let want =
        cli_tokens(&model, &["--image", image.to_str().unwrap(), "--chat", message, "--max-tokens", &n.to_string()]);
    assert_eq!(want.len(), n);

    let server = Server::start(&model);
    let data = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&image).unwrap());
    let with_image = chat_body(
        json!([{"type": "text", "text": message},
               {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}}]),
        n,
    );
    let (status, v) = server.chat(&with_image);
    assert_eq!(status, 200, "{v}");
    assert_eq!(tokens_of(&v), want, "server vs generate --image");

    // Again, beside a text request: the same tokens for both (and the image's prefix comes
    // from the prompt cache). The text request is a completion of token ids sharing no prefix
    // with the chat; the two decode in one batch when their steps meet (Gemma 3's sliding
    // layers stack).
    let text = json!({"model": "m", "prompt": [7, 20, 21, 22], "temperature": 0, "max_tokens": n, "logprobs": 0});
    let text_tokens = |v: &Value| -> Vec<String> {
        v["choices"][0]["logprobs"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect()
    };
    let (status, v) = server.post("/v1/completions", &text);
    assert_eq!(status, 200, "{v}");
    let want_text = text_tokens(&v);
    assert_eq!(want_text.len(), n);
    let side = std::thread::scope(|s| {
        let t = s.spawn(|| server.post("/v1/completions", &text));
        let image = server.chat(&with_image);
        (image, t.join().unwrap())
    });
    let ((s1, v1), (s2, v2)) = side;
    assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
    assert_eq!(tokens_of(&v1), want, "the image request beside a text one");
    assert_eq!(text_tokens(&v2), want_text, "the text request beside an image one");
    assert!(v1["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{v1}");

    // A remote URL is refused: the server fetches nothing.
    let remote = chat_body(
        json!([{"type": "text", "text": message}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]),
        n,
    );
    let (status, v) = server.chat(&remote);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].content[1].image_url.url", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("data URL"), "{v}");
    // A data URL that is not an image.
    let broken = chat_body(json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), n);
    let (status, v) = server.chat(&broken);
    assert_eq!(status, 400, "{v}");
    drop(server);

    // A text-only model names the field.
    let smol = measured::models_dir().join("smollm2-135m-instruct/f32");
    if !measured::have_models("server_images (text-only part)", &[&smol]) {
        return;
    }
    let server = Server::start(&smol);
    let (status, v) = server.chat(&with_image);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "messages[0].content[1].image_url.url", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("text-only"), "{v}");
}
