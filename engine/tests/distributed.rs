//! Tensor parallelism on the CPU: ranks are real processes of the engine binary talking over
//! MLX's ring backend on loopback, started by `mlx-engine launch` or by hand with the
//! environment `mlx.launch` sets (MLX_RANK, MLX_HOSTFILE). Greedy tokens of 2 ranks must equal
//! 1 rank's; a dead rank must fail the others with a clear error, in bounded time; a cancel on
//! any one rank must stop them all at the same token.

mod common_models;
mod measured;
mod ranks;
mod tokenizer_fixtures;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common_models::Arch;
use ranks::{free_ports, one_rank, run, smollm2, tiny, two_ranks, Ranks, EXE};
use serde_json::Value;

#[test]
fn two_ranks_give_the_greedy_tokens_of_one_on_a_tiny_llama() {
    let dir = tiny(Arch::Llama, 11);
    let m = dir.path().to_str().unwrap();
    let args = ["-m", m, "-p", "hello world", "-n", "24", "--temp", "0", "--ignore-eos"];
    let (want, _) = one_rank(&args);
    let (got, _, err) = two_ranks(&args);
    assert_eq!(want.len(), 24);
    assert_eq!(got, want, "{err}");
}

#[test]
fn two_ranks_give_the_greedy_tokens_of_one_on_tiny_gemma3_and_qwen2() {
    // Gemma 3: sliding-window layers, q/k norms; qwen2: q/k/v biases (sliced with their rows).
    for (arch, seed) in [(Arch::Gemma3, 12), (Arch::Qwen2, 13)] {
        let dir = tiny(arch, seed);
        let m = dir.path().to_str().unwrap();
        let args = ["-m", m, "-p", "hello world", "-n", "16", "--temp", "0", "--ignore-eos"];
        let (want, _) = one_rank(&args);
        let (got, _, err) = two_ranks(&args);
        assert_eq!(got, want, "{arch:?}: {err}");
    }
}

#[test]
fn two_ranks_give_the_greedy_tokens_of_one_on_smollm2_f32() {
    let Some(m) = smollm2() else { return };
    // 9 heads and 3 KV heads over 2 ranks: rank 0 keeps 2 KV groups, rank 1 one.
    let args = ["-m", &m, "--chat", "What is the capital of France?", "-n", "16", "--temp", "0"];
    let (want, _) = one_rank(&args);
    let (got, _, err) = two_ranks(&args);
    assert!(want.len() >= 8, "{want:?}");
    assert_eq!(got, want, "{err}");
}

#[test]
fn sampling_ranks_share_the_seed_rank_0_draws() {
    let dir = tiny(Arch::Llama, 14);
    let m = dir.path().to_str().unwrap();
    // No --seed: rank 0 draws one and the ranks sum it in. Had rank 1 sampled with another
    // seed, its tokens (and so its half of every layer) would differ and rank 0's tokens would
    // not be those of one rank with the reported seed.
    let args = ["-m", m, "-p", "hello world", "-n", "24", "--temp", "1.5", "--ignore-eos"];
    let (got, seed, err) = two_ranks(&args);
    let seed = seed.unwrap_or_else(|| panic!("no seed in the stats: {err}")).to_string();
    let mut seeded = args.to_vec();
    seeded.extend(["--seed", &seed]);
    let (want, _) = one_rank(&seeded);
    assert_eq!(got, want, "seed {seed}: {err}");
}

#[test]
fn a_rank_that_dies_fails_the_others_with_a_clear_error_within_seconds() {
    let Some(m) = smollm2() else { return };
    let args = ["generate", "-m", &m, "-p", "Count:", "-n", "5000", "--ignore-eos", "--output", "jsonl"];
    // MLX reports most lost peers at once; the watchdog (10 s here) bounds the rest.
    let mut ranks = Ranks::spawn_with(2, &args, &[("MLX_ENGINE_RANK_TIMEOUT", "10")]);
    let lines = ranks.stdout_lines();
    // Decoding has started once rank 0 streams a token.
    lines.recv_timeout(Duration::from_secs(120)).expect("rank 0 streams tokens");
    ranks.children[1].kill().unwrap();
    let t = Instant::now();
    let (st, err) = ranks.wait(0, Duration::from_secs(30));
    assert!(!st.success(), "{st:?}: {err}");
    let clear = err.contains("connection to a peer was lost") || err.contains("another rank died or stopped answering");
    assert!(clear, "{st:?}: {err}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_cancel_on_one_rank_stops_every_rank_at_the_same_token() {
    let Some(m) = smollm2() else { return };
    ranks::cancel_on_rank_1_stops_both(&m, &[]);
}

#[test]
fn without_a_launcher_the_ring_backend_fails_naming_what_to_set() {
    let dir = tiny(Arch::Llama, 15);
    let m = dir.path().to_str().unwrap();
    let out = Command::new(EXE)
        .args(["generate", "-m", m, "-p", "x", "-n", "1", "--distributed", "ring"])
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot start MLX's `ring` backend") && err.contains("MLX_HOSTFILE"), "{err}");
    let (st, _, err) = run(&["generate", "-m", m, "-p", "x", "--distributed", "tcp"]);
    assert!(!st.success() && err.contains("unknown distributed backend `tcp`"), "{err}");
}

#[test]
fn a_model_that_does_not_split_over_the_ranks_is_refused_naming_the_field() {
    let dir = tiny(Arch::Llama, 16);
    let m = dir.path().to_str().unwrap();
    // The tiny llama has 2 KV heads: 3 ranks cannot share them.
    let port = free_ports(3).to_string();
    let (st, _, err) = run(&["launch", "-n", "3", "-p", &port, "--", "generate", "-m", m, "-p", "x", "-n", "1"]);
    assert!(!st.success());
    assert!(err.contains("num_key_value_heads") && err.contains("3 ranks"), "{err}");
}

#[test]
fn ctrl_c_to_the_launcher_stops_every_rank_and_exits_130() {
    let Some(m) = smollm2() else { return };
    let port = free_ports(2).to_string();
    let mut launcher = Command::new(EXE)
        .args(["launch", "-n", "2", "-p", &port, "--", "generate", "-m", &m, "-p", "Count:", "-n", "5000"])
        .args(["--ignore-eos", "--output", "jsonl"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = launcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("rank 0 streams tokens through the launcher");
    // The ranks run in their own process group: only the launcher gets this, as from a terminal.
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(launcher.id() as i32, libc::SIGINT) }, 0);
    let (st, err) = ranks::wait_at_most(&mut launcher, Duration::from_secs(30), "the launch after Ctrl-C");
    assert_eq!(st.code(), Some(130), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let rest: Vec<String> = rx.try_iter().collect();
    let last: Value = serde_json::from_str(rest.last().expect("rank 0's final record")).unwrap();
    assert_eq!(last["stop_condition"]["reason"], "user_cancelled", "{last}");
}

#[test]
fn serve_is_refused_under_launch_and_under_its_environment_at_once() {
    let dir = tiny(Arch::Llama, 17);
    let m = dir.path().to_str().unwrap();
    let port = free_ports(2).to_string();
    let (st, _, err) = run(&["launch", "-n", "2", "-p", &port, "--", "serve", "--model", m, "--port", "0"]);
    assert!(
        !st.success() && err.contains("`serve` does not run on several ranks; launch runs generate or chat"),
        "{err}"
    );
    // A rank started as `launch` starts them (or by hand with its variable) fails before it
    // loads the model or binds a port, instead of serving the whole model on every rank.
    let mut serve = Command::new(EXE)
        .args(["serve", "--model", m, "--port", "0"])
        .env("MLX_ENGINE_DISTRIBUTED", "ring")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, err) = ranks::wait_at_most(&mut serve, Duration::from_secs(20), "serve under MLX_ENGINE_DISTRIBUTED");
    assert!(!st.success());
    assert!(err.contains("`serve` does not run on several ranks yet (MLX_ENGINE_DISTRIBUTED=ring is set"), "{err}");
}
