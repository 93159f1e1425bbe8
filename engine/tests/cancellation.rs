//! Stopping work on request: a prefill cancelled between layers leaves the cache exactly as it
//! was before the chunk (every layer kind, quantized KV included), and the command line stops
//! promptly on Ctrl-C (exit 130, during a prefill, during load, at the chat prompt) and when
//! its output goes away.

mod common_models;
mod measured;
mod tokenizer_fixtures;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common_models::*;
use mlx_engine::api::Input;
use mlx_engine::cache::{CacheConfig, KvCache};
use mlx_engine::generate::prefill::forward_cancellable;

fn same(a: &mlx_engine::api::Array, b: &mlx_engine::api::Array) -> bool {
    a.shape() == b.shape() && a.to_vec::<f32>().unwrap() == b.to_vec::<f32>().unwrap()
}

fn contents(cache: &KvCache, layers: usize) -> Vec<Option<(mlx_engine::api::Array, mlx_engine::api::Array)>> {
    (0..layers).map(|l| cache.layer_contents(l).unwrap()).collect()
}

#[test]
fn a_cancel_between_layers_rewinds_every_layer_kind() {
    // (arch, config): gemma3's sliding rings overflow their window of 8 in the cancelled
    // chunk, as llama's rings under max_kv_size do; the 8-bit row crosses quantized_kv_start
    // inside it.
    let kv8 = CacheConfig { kv_bits: Some(8), kv_group_size: 32, quantized_kv_start: 14, ..Default::default() };
    let ring = CacheConfig { max_kv_size: Some(10), ..Default::default() };
    let rows = [
        (Arch::Llama, CacheConfig::default()),
        (Arch::Gemma3, CacheConfig::default()),
        (Arch::Llama, ring),
        (Arch::Gemma3, kv8),
    ];
    for (arch, config) in rows {
        let tiny = TinyModel::new(arch, 11);
        let dir = tiny.write_temp();
        let m = load(dir.path(), mlx_engine::model::DtypeChoice::F32);
        let layout = m.model.cache_layout();
        let n = layout.len();
        let mut cache = KvCache::with_config(layout, &config).unwrap();
        let tokens = prompt(22, tiny.tok, 3);
        forward(&m, &tokens[..12], &mut cache);
        mlx_engine::api::eval(&cache.state()).unwrap();
        let before = contents(&cache, n);
        let chunk = ids(&tokens[12..]);

        let cancel = AtomicBool::new(true);
        let out =
            forward_cancellable(&mut cache, &cancel, |ctx| Ok(m.model.forward(Input::Tokens(&chunk), ctx)?)).unwrap();
        assert!(out.is_none(), "{arch:?}: cancelled");
        assert_eq!(cache.len(), 12, "{arch:?}");
        for (l, (a, b)) in before.iter().zip(contents(&cache, n)).enumerate() {
            let (a, b) = (a.as_ref().unwrap(), b.unwrap());
            assert!(same(&a.0, &b.0) && same(&a.1, &b.1), "{arch:?} {config:?}: layer {l} changed");
        }

        // Not cancelled: the same logits as a plain pass over an identical cache.
        let mut plain = cache.clone();
        let expected = forward(&m, &tokens[12..], &mut plain);
        let go = AtomicBool::new(false);
        let got = forward_cancellable(&mut cache, &go, |ctx| Ok(m.model.forward(Input::Tokens(&chunk), ctx)?)).unwrap();
        assert!(same(&got.expect("not cancelled"), &expected), "{arch:?}: layerwise evaluation changes nothing");
        assert_eq!(cache.len(), 22);
    }
}

/// The engine binary with stdin/stdout/stderr piped.
fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn interrupt(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// The child's stderr, read on a thread so that no wait can hang the test.
struct Stderr {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Stderr {
    fn of(child: &mut Child) -> Stderr {
        let mut err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(k @ 1..) = err.read(&mut buf) {
                if tx.send(buf[..k].to_vec()).is_err() {
                    break;
                }
            }
        });
        Stderr { rx, seen: Vec::new() }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits (at most 60 s) until `needle` has appeared.
    fn until(&mut self, needle: &str) -> String {
        let t = Instant::now();
        while !self.text().contains(needle) {
            let left = Duration::from_secs(60).saturating_sub(t.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.extend(b),
                Err(_) => panic!("`{needle}` never appeared on stderr: {}", self.text()),
            }
        }
        self.text()
    }

    fn rest(&mut self) -> String {
        while let Ok(b) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.extend(b);
        }
        self.text()
    }
}

/// Waits at most `limit`; kills the child and fails if it is still running.
fn wait_within(child: &mut Child, err: &mut Stderr, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, err.rest());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running {limit:?} after the signal: {}", err.text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn smollm2() -> Option<String> {
    let dir = measured::models_dir().join("smollm2-135m-instruct/f32");
    measured::have_models("cancellation (SmolLM2)", &[&dir.join("config.json")]).then(|| dir.display().to_string())
}

#[test]
fn ctrl_c_stops_a_long_prefill_within_a_layer_and_exits_130() {
    let Some(model) = smollm2() else { return };
    // About 2,500 tokens: one 2048-token chunk takes seconds on a CPU.
    let text = "the quick brown fox jumps over the lazy dog ".repeat(280);
    let mut child = spawn(&["generate", "--model", &model, "--prompt", "-", "--max-tokens", "4"]);
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let mut err = Stderr::of(&mut child);
    err.until("loaded ");
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&child);
    // Before, the process ran on for the rest of the chunk (~40 s here); now one layer.
    let (status, err) = wait_within(&mut child, &mut err, Duration::from_secs(10), "prefill");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("(cancelled)") && err.contains("prefilled before the cancel"), "{err}");
}

#[test]
fn ctrl_c_during_load_exits_130_without_generating() {
    let Some(model) = smollm2() else { return };
    let mut child = spawn(&["generate", "--model", &model, "--prompt", "hello", "--max-tokens", "4"]);
    let mut err = Stderr::of(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&child);
    let (status, _) = wait_within(&mut child, &mut err, Duration::from_secs(5), "load");
    assert_eq!(status.code(), Some(130));
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.is_empty(), "nothing was generated: {out:?}");
}

#[test]
fn chat_quits_on_ctrl_c_at_the_prompt_and_survives_a_line_of_invalid_utf8() {
    let tiny = TinyModel::printable(5);
    let dir = tiny.write_temp();
    let model = dir.path().to_str().unwrap();
    let template = dir.path().join("t.jinja");
    std::fs::write(&template, "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    let template = template.to_str().unwrap();
    let mut child = spawn(&["chat", "--model", model, "--max-tokens", "3", "--chat-template", template]);
    let mut err = Stderr::of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\xff\xfe bad\n").unwrap();
    stdin.write_all(b"hello\n").unwrap();
    stdin.flush().unwrap();
    let seen = err.until("prompt tokens from cache");
    assert!(seen.contains("that line is not valid UTF-8 (at byte 0); it was not sent"), "{seen}");
    interrupt(&child);
    let (status, err) = wait_within(&mut child, &mut err, Duration::from_secs(5), "chat prompt");
    assert_eq!(status.code(), Some(130), "{err}");
}

#[test]
fn output_errors_end_the_generation() {
    let Some(model) = smollm2() else { return };
    // A full disk: a message naming stdout, exit 1.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["generate", "--model", &model, "--prompt", "hello", "--max-tokens", "8", "--ignore-eos"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: stdout: No space left on device"), "{err}");

    // A reader that goes away (`| head -c 20`): the process ends, it does not decode on.
    let mut child =
        spawn(&["generate", "--model", &model, "--prompt", "hello", "--max-tokens", "4000", "--ignore-eos"]);
    let mut first = [0u8; 20];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let mut err = Stderr::of(&mut child);
    let (status, err) = wait_within(&mut child, &mut err, Duration::from_secs(20), "broken pipe");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?} {err}");
}
