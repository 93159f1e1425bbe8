//! `chat --distributed`: rank 0 reads the conversation from stdin and prints the replies; the
//! other ranks receive every turn (its prompt tokens and seed) and run it silently; the end of
//! input on rank 0 ends every rank. Two ring ranks on loopback must print what one rank prints.

mod common_models;
mod measured;
mod ranks;
mod tokenizer_fixtures;

use ranks::{launch_with_input, run_with_input, smollm2, Ranks};

const TURNS: &str = "What is the capital of France?\n/help\nAnd of Italy?\n";

/// The replies (stdout) of `chat ARGS` on one rank and on two.
fn one_and_two(args: &[&str], input: &str) -> ((String, String), (String, String)) {
    let mut all = vec!["chat"];
    all.extend_from_slice(args);
    let (st, out1, err1) = run_with_input(&all, input);
    assert!(st.success(), "1 rank: {err1}");
    let (st, out2, err2) = launch_with_input(2, &all, input);
    assert!(st.success(), "2 ranks: {err2}");
    ((out1, err1), (out2, err2))
}

/// The seeds the stats lines on stderr report, one per sampled reply.
fn seeds(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.split(" | seed ").nth(1)).map(|s| s.trim().to_string()).collect()
}

#[test]
fn a_greedy_chat_of_two_turns_on_two_ranks_prints_what_one_rank_prints() {
    let Some(m) = smollm2() else { return };
    let ((out1, _), (out2, err2)) = one_and_two(&["-m", &m, "-n", "12", "--temp", "0"], TURNS);
    // Two replies, the second one after the first in the history (its tokens from the cache).
    assert_eq!(out1.lines().filter(|l| !l.trim().is_empty()).count(), 2, "{out1}");
    assert_eq!(out2, out1, "{err2}");
    assert!(err2.contains("tokens from cache"), "{err2}");
}

#[test]
fn a_sampled_reply_uses_the_seed_rank_0_draws_on_every_rank() {
    let Some(m) = smollm2() else { return };
    let input = "Tell me a word.\n";
    let (st, out2, err2) = launch_with_input(2, &["chat", "-m", &m, "-n", "12", "--temp", "1.5"], input);
    assert!(st.success(), "{err2}");
    // Had rank 1 sampled another token, the ranks' halves of every layer would mix two inputs
    // and rank 0's reply would not be one rank's reply with that seed.
    let seed = seeds(&err2).pop().unwrap_or_else(|| panic!("no seed in the stats: {err2}"));
    let (st, out1, err1) = run_with_input(&["chat", "-m", &m, "-n", "12", "--temp", "1.5", "--seed", &seed], input);
    assert!(st.success(), "{err1}");
    assert_eq!(out2, out1, "seed {seed}: {err2}");
}

#[test]
fn a_rank_started_with_other_options_ends_the_chat_naming_them() {
    let Some(m) = smollm2() else { return };
    // Started by hand, the ranks' command lines can differ: rank 1 has another --max-tokens.
    let mut ranks = Ranks::spawn_per_rank(&[
        &["chat", "-m", &m, "-n", "12", "--temp", "0"],
        &["chat", "-m", &m, "-n", "13", "--temp", "0"],
    ]);
    ranks.write_stdin(0, "Hello\n");
    let (st1, err1) = ranks.wait(1, std::time::Duration::from_secs(120));
    let (st0, err0) = ranks.wait(0, std::time::Duration::from_secs(30));
    assert!(!st1.success() && !st0.success(), "{err0}\n{err1}");
    assert!(err1.contains("rank 1 runs chat with other options than rank 0") && err1.contains("Some(13)"), "{err1}");
    assert!(err0.contains("another rank runs chat with other options than rank 0"), "{err0}");
}

#[test]
fn launched_on_a_terminal_rank_0_reads_the_lines_and_ctrl_d_ends_every_rank() {
    let Some(m) = smollm2() else { return };
    let args = ["chat", "-m", &m, "-n", "10", "--temp", "0"];
    let question = "What is the capital of France?";
    let (st, want, err) = run_with_input(&args, &format!("{question}\n"));
    assert!(st.success(), "{err}");
    // Under a pseudo-terminal, as a person runs it: rank 0 must be the terminal's foreground
    // process (in the background it would be stopped at its first read), and rustyline edits there.
    let port = ranks::free_ports(2).to_string();
    let mut cmd = std::process::Command::new(ranks::EXE);
    cmd.args(["launch", "-n", "2", "-p", &port, "--"]).args(args);
    cmd.env("MLX_ENGINE_CHAT_HISTORY", "").env("TERM", "xterm").env_remove("MLX_ENGINE_LOG");
    let options = rexpect::session::Options::default().timeout_ms(Some(120_000)).strip_ansi_escape_codes(true);
    let mut p = rexpect::session::spawn_with_options(cmd, options).unwrap();
    p.exp_string("/help lists the commands").unwrap();
    p.exp_string("> ").unwrap();
    p.send(&format!("{question}\r")).unwrap();
    p.flush().unwrap();
    let reply = p.exp_string("tok/s").unwrap();
    assert!(reply.contains(want.trim()), "{reply:?} lacks one rank's reply {want:?}");
    p.exp_string("> ").unwrap();
    p.send_control('d').unwrap();
    let rest = p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0, "{rest}"),
        other => panic!("the launch ended by {other:?}: {rest}"),
    }
}
