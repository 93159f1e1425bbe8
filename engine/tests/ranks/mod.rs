//! Ranks of the engine binary on loopback for the distributed tests: free ports, runs through
//! `mlx-engine launch` or started by hand with the environment `mlx.launch` sets (MLX_RANK,
//! MLX_HOSTFILE), and the token ids of their `--output jsonl`.
//!
//! A test file includes it with `mod common_models; mod measured; mod ranks; mod tokenizer_fixtures;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common_models::{Arch, TinyModel};
use crate::measured;

pub const EXE: &str = env!("CARGO_BIN_EXE_mlx-engine");

/// A base port whose next `n - 1` ports are free too (the ring backend listens on one per
/// rank), so parallel tests and other programs on the machine do not collide.
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else { continue };
        let base = first.local_addr().unwrap().port();
        if base > u16::MAX - n {
            continue;
        }
        drop(first);
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// `mlx-engine ARGS`: exit status, stdout, stderr.
pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(EXE).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status, text(&out.stdout), text(&out.stderr))
}

/// The token ids of a `--output jsonl` run, and the seed its stats report.
pub fn tokens_of(jsonl: &str) -> (Vec<u64>, Option<u64>) {
    let mut ids = Vec::new();
    let mut seed = None;
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for t in v["tokens"].as_array().into_iter().flatten() {
            ids.push(t["id"].as_u64().unwrap());
        }
        if let Some(s) = v["stats"]["seed"].as_u64() {
            seed = Some(s);
        }
    }
    (ids, seed)
}

/// `generate ARGS --output jsonl` on one rank.
pub fn one_rank(args: &[&str]) -> (Vec<u64>, Option<u64>) {
    let mut all = vec!["generate", "--output", "jsonl"];
    all.extend_from_slice(args);
    let (st, out, err) = run(&all);
    assert!(st.success(), "1 rank: {err}");
    tokens_of(&out)
}

/// The same through `mlx-engine launch -n 2` (rank 0's output).
pub fn two_ranks(args: &[&str]) -> (Vec<u64>, Option<u64>, String) {
    n_ranks(2, args)
}

/// The same through `mlx-engine launch -n N`.
pub fn n_ranks(n: u16, args: &[&str]) -> (Vec<u64>, Option<u64>, String) {
    let (ranks, port) = (n.to_string(), free_ports(n).to_string());
    let mut all = vec!["launch", "-n", &ranks, "-p", &port, "--", "generate", "--output", "jsonl"];
    all.extend_from_slice(args);
    let (st, out, err) = run(&all);
    assert!(st.success(), "{n} ranks: {err}");
    let (ids, seed) = tokens_of(&out);
    (ids, seed, err)
}

/// Ranks started by hand, as `mlx.launch` would: rank `i` gets MLX_RANK=i and the hostfile.
pub struct Ranks {
    pub children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Ranks {
    pub fn spawn(n: usize, args: &[&str]) -> Ranks {
        Ranks::spawn_with(n, args, &[])
    }

    pub fn spawn_with(n: usize, args: &[&str], env: &[(&str, &str)]) -> Ranks {
        Ranks::start(&vec![args; n], env, false)
    }

    /// Rank `i` runs `per_rank[i]`, its stdin a pipe ([`Ranks::write_stdin`]).
    pub fn spawn_per_rank(per_rank: &[&[&str]]) -> Ranks {
        Ranks::start(per_rank, &[], true)
    }

    fn start(per_rank: &[&[&str]], env: &[(&str, &str)], piped_stdin: bool) -> Ranks {
        let n = per_rank.len();
        let dir = tempfile::tempdir().unwrap();
        let base = free_ports(n as u16);
        let hosts: Vec<Value> = (0..n).map(|i| serde_json::json!([format!("127.0.0.1:{}", base + i as u16)])).collect();
        let hostfile = dir.path().join("hosts.json");
        std::fs::write(&hostfile, Value::Array(hosts).to_string()).unwrap();
        let children = per_rank
            .iter()
            .enumerate()
            .map(|(rank, args)| {
                Command::new(EXE)
                    .args(*args)
                    .args(["--distributed", "ring"])
                    .env("MLX_RANK", rank.to_string())
                    .env("MLX_HOSTFILE", &hostfile)
                    .envs(env.iter().copied())
                    .stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        Ranks { children, _dir: dir }
    }

    /// Writes `text` to rank `i`'s stdin and closes it.
    pub fn write_stdin(&mut self, i: usize, text: &str) {
        let mut stdin = self.children[i].stdin.take().expect("spawned with a piped stdin");
        std::io::Write::write_all(&mut stdin, text.as_bytes()).unwrap();
    }

    /// Waits for rank `i` at most `limit`; its status and stderr (killing it on timeout).
    pub fn wait(&mut self, i: usize, limit: Duration) -> (ExitStatus, String) {
        let child = &mut self.children[i];
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                return (st, err);
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("rank {i} still running {limit:?} later: {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rank 0's stdout, line by line, read on a thread.
    pub fn stdout_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let out = self.children[0].stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn smollm2() -> Option<String> {
    let dir = measured::models_dir().join("smollm2-135m-instruct/f32");
    measured::have_models("distributed (SmolLM2)", &[&dir.join("config.json")]).then(|| dir.display().to_string())
}

pub fn tiny(arch: Arch, seed: u64) -> tempfile::TempDir {
    TinyModel::new(arch, seed).write_temp()
}

/// `mlx-engine ARGS` with `input` on its stdin: exit status, stdout, stderr.
pub fn run_with_input(args: &[&str], input: &str) -> (ExitStatus, String, String) {
    let mut child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    // Written on a thread, so a child that stops reading cannot block the test.
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status, text(&out.stdout), text(&out.stderr))
}

/// `mlx-engine launch -n N -- ARGS` with `input` on the launcher's stdin (the ranks share it).
pub fn launch_with_input(n: usize, args: &[&str], input: &str) -> (ExitStatus, String, String) {
    let (ranks, port) = (n.to_string(), free_ports(n as u16).to_string());
    let mut all = vec!["launch", "-n", &ranks, "-p", &port, "--"];
    all.extend_from_slice(args);
    run_with_input(&all, input)
}

/// Two ranks decode from model folder `m` (with `extra` arguments) until a SIGINT to rank 1
/// stops both with exit 130 at the same token: rank 0 learns it at the next forward pass.
pub fn cancel_on_rank_1_stops_both(m: &str, extra: &[&str]) {
    let mut args = vec!["generate", "-m", m, "-p", "Count:", "-n", "5000", "--ignore-eos", "--output", "jsonl"];
    args.extend_from_slice(extra);
    let mut ranks = Ranks::spawn(2, &args);
    let lines = ranks.stdout_lines();
    lines.recv_timeout(Duration::from_secs(120)).expect("rank 0 streams tokens");
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(ranks.children[1].id() as i32, libc::SIGINT) }, 0);
    let (st1, err1) = ranks.wait(1, Duration::from_secs(20));
    let (st0, err0) = ranks.wait(0, Duration::from_secs(20));
    assert_eq!(st1.code(), Some(130), "rank 1: {err1}");
    assert_eq!(st0.code(), Some(130), "rank 0: {err0}");
    let rest: Vec<String> = lines.try_iter().collect();
    let last: Value = serde_json::from_str(rest.last().expect("rank 0's final record")).unwrap();
    assert_eq!(last["stop_condition"]["reason"], "user_cancelled", "{last}");
}

/// Waits for `child` at most `limit` (killing it and failing, naming `what`, after that): its
/// status and stderr.
pub fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, String) {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} still runs {limit:?} later");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st, err)
}
