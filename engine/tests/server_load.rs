//! A bounded loopback load test of `mlx-engine serve` (SmolLM2 f32): `scripts/server/load.py`
//! sends requests from concurrent clients with the official `openai` client, a quarter of
//! them with long prompts, half of them streamed, and samples the server's resident memory
//! when idle after each of several rounds. Every request must succeed, and what the server keeps
//! when idle must stay flat after the first round (warm-up: the prompt cache fills). Before
//! glibc's mmap threshold was fixed and the heaps trimmed (`server::memory`), 100 requests at
//! 16 concurrent grew resident memory by 3 GiB, which stayed when idle. About 2 minutes here.

mod measured;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

const REQUESTS: usize = 48;
const CONCURRENCY: usize = 8;
const ROUNDS: usize = 4;
/// Idle resident memory after a later round may exceed that after the first round by at most
/// this much. Measured here: at most +114 MiB (which entries the prompt cache holds, each 6 to
/// 12 MiB, moves it by about that); before the fix, memory kept grew by ~30 MiB per request
/// (1 GiB over these 36), and a leaked row's cache would add 12 MiB or more per request.
const MAX_GROWTH_MIB: f64 = 250.0;

#[test]
fn resident_memory_stays_flat_under_concurrent_mixed_requests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let model = measured::models_dir().join("smollm2-135m-instruct/f32");
    let py = root.join(".venv/bin/python");
    if !measured::have_models("server_load", &[&model, &py]) {
        return;
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["-q", "serve", "--port", "0", "--served-model-name", "smollm2", "--model"])
        .arg(&model)
        .args(["--max-concurrency", &CONCURRENCY.to_string(), "--queue", "64"])
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mlx-engine serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).expect("the listening line");
    let Some(url) = line.trim().strip_prefix("listening on ").map(str::to_string) else {
        let _ = server.kill();
        panic!("the server did not start: {line:?}");
    };
    let t = std::time::Instant::now();
    let out = Command::new(&py)
        .arg(root.join("scripts/server/load.py"))
        .args(["--base-url", &url, "--model", "smollm2", "--pid", &server.id().to_string()])
        .args(["--requests", &REQUESTS.to_string(), "--concurrency", &CONCURRENCY.to_string()])
        .args(["--long-items", "10", "--short-tokens", "12", "--long-tokens", "6", "--rounds", &ROUNDS.to_string()])
        .output()
        .expect("run load.py");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no result ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(result["failures"], 0, "{result}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{result}");
    // [before any request, after round 1, after round 2, ...]
    let idle: Vec<f64> = result["idle_rss_mib"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(idle.len(), ROUNDS + 1, "{result}");
    let growth = idle[2..].iter().fold(f64::MIN, |m, &v| m.max(v)) - idle[1];
    assert!(growth < MAX_GROWTH_MIB, "idle resident memory grew by {growth} MiB after warm-up: {result}");
    measured::note(format_args!(
        "server_load: {REQUESTS} requests at {CONCURRENCY} concurrent in {:.0?}: {result}",
        t.elapsed()
    ));
}
