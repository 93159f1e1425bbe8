//! `mlx-engine chat` on a terminal, driven through a pseudo-terminal as a person would type:
//! line editing and history (rustyline), slash commands that stay out of the conversation,
//! `/save` and `/load`, a trailing `\` for multi-line messages, Ctrl-C and Ctrl-D. What the
//! model received is read back from `/save`'s JSON, so each check is on the conversation
//! itself, not on how the screen was redrawn.

mod measured;

use std::path::{Path, PathBuf};

use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};
use serde_json::Value;

const LEFT: &str = "\x1b[D";
const UP: &str = "\x1b[A";
const ENTER: &str = "\r";

fn model() -> Option<PathBuf> {
    let dir = measured::models_dir().join("smollm2-135m-instruct/f32");
    measured::have_models("chat_pty (SmolLM2)", &[&dir.join("config.json")]).then_some(dir)
}

struct Chat {
    p: PtySession,
    dir: tempfile::TempDir,
    /// What it printed before its first prompt.
    intro: String,
}

impl Chat {
    /// `chat` on the model (greedy, with `args`), its history file in a fresh folder.
    fn start(model: &Path, args: &[&str]) -> Chat {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"));
        cmd.args(["chat", "-m", model.to_str().unwrap(), "--temp", "0"]).args(args);
        cmd.env("MLX_ENGINE_CHAT_HISTORY", dir.path().join("history")).env("HOME", dir.path()).env("TERM", "xterm");
        cmd.env_remove("MLX_ENGINE_LOG").env_remove("XDG_DATA_HOME");
        let options = Options::default().timeout_ms(Some(120_000)).strip_ansi_escape_codes(true);
        let mut p = spawn_with_options(cmd, options).unwrap();
        let intro = p.exp_string("/help lists the commands").unwrap();
        p.exp_string("> ").unwrap();
        Chat { p, dir, intro }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn send(&mut self, keys: &str) {
        self.p.send(keys).unwrap();
        self.p.flush().unwrap();
    }

    /// Sends `keys` then Enter, and waits for the reply to finish (its stats line) and the next
    /// prompt.
    fn say(&mut self, keys: &str) {
        self.send(keys);
        self.send(ENTER);
        self.p.exp_string("tok/s").unwrap();
        self.p.exp_string("> ").unwrap();
    }

    /// Runs a command and waits until stderr shows `expect`, then the next prompt: what it
    /// printed.
    fn command(&mut self, line: &str, expect: &str) -> String {
        self.send(line);
        self.send(ENTER);
        let before = self.p.exp_string(expect).unwrap_or_else(|e| panic!("{line}: no `{expect}`: {e}"));
        let after = self.p.exp_string("> ").unwrap();
        format!("{before}{expect}{after}")
    }

    /// `/save`s the conversation and reads it back as (role, content) pairs.
    fn saved(&mut self, name: &str) -> Vec<(String, String)> {
        let file = self.path(name);
        self.command(&format!("/save {}", file.display()), "(saved ");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let role_content =
            |m: &Value| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string());
        v["messages"].as_array().unwrap().iter().map(role_content).collect()
    }

    /// Waits for the process to end: its exit code and the last output.
    fn end(mut self) -> (i32, String) {
        let rest = self.p.exp_eof().unwrap();
        match self.p.process().wait().unwrap() {
            WaitStatus::Exited(_, code) => (code, rest),
            other => panic!("chat ended by {other:?}: {rest}"),
        }
    }
}

fn users(conv: &[(String, String)]) -> Vec<&str> {
    conv.iter().filter(|(r, _)| r == "user").map(|(_, c)| c.as_str()).collect()
}

#[test]
fn edited_lines_and_recalled_history_reach_the_model_and_ctrl_d_exits() {
    let Some(model) = model() else { return };
    let mut chat = Chat::start(&model, &["-n", "3"]);
    // "helo world", the cursor moved back 7 to after "hel", an "l" inserted there.
    chat.say(&format!("helo world{}l", LEFT.repeat(7)));
    // Up recalls it; End-of-line editing appends to it.
    chat.say(&format!("{UP}!"));
    let conv = chat.saved("conv.json");
    assert_eq!(users(&conv), ["hello world", "hello world!"], "{conv:?}");
    assert_eq!(conv.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["user", "assistant", "user", "assistant"]);
    assert!(!conv[1].1.is_empty(), "the model answered: {conv:?}");
    // Ctrl-D at an empty prompt: exit 0, the shell's prompt on a line of its own.
    chat.p.send_control('d').unwrap();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    std::fs::rename(chat.path("history"), &history).unwrap();
    let (code, rest) = chat.end();
    assert_eq!(code, 0, "{rest}");
    assert!(rest.contains('\n') && rest.trim().is_empty(), "{rest:?}");
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("hello world\n") && kept.contains("hello world!\n") && kept.contains("/save "), "{kept}");

    // The next chat starts with that history (`--history` beats the environment): Up three
    // times passes the /save and the second message to reach the first.
    let mut chat = Chat::start(&model, &["-n", "3", "--history", history.to_str().unwrap()]);
    chat.say(&format!("{UP}{UP}{UP}"));
    let conv = chat.saved("again.json");
    assert_eq!(users(&conv), ["hello world"], "{conv:?}");
}

#[test]
fn commands_stay_out_of_the_conversation_and_save_load_round_trips() {
    let Some(model) = model() else { return };
    let mut chat = Chat::start(&model, &["-n", "3"]);
    let help = chat.command("/help", "while a reply is written, Ctrl-C stops it");
    assert!(help.contains("/save FILE") && help.contains("end a line with \\"), "{help}");
    assert!(help.contains(&format!("History file: {}", chat.path("history").display())), "{help}");
    chat.command("/bogus thing", "unknown command /bogus (not sent to the model)");
    chat.command("/system Answer in one word.", "(system message set)");
    // A trailing backslash goes on with the message on the next line.
    chat.send("first line\\");
    chat.send(ENTER);
    chat.say("second line");
    let conv = chat.saved("a.json");
    assert_eq!(conv[0], ("system".to_string(), "Answer in one word.".to_string()));
    assert_eq!(users(&conv), ["first line\nsecond line"], "{conv:?}");
    assert_eq!(conv.len(), 3, "only the message and its reply: {conv:?}");

    // A bad file: the message names it and the field, and the chat goes on as it was.
    let bad = chat.path("bad.json");
    std::fs::write(&bad, r#"{"messages": [{"role": "user"}]}"#).unwrap();
    let said = chat.command(&format!("/load {}", bad.display()), "missing field `content`");
    assert!(said.contains("could not load the conversation") && said.contains("bad.json"), "{said}");
    chat.command(&format!("/load {}", chat.path("nope.json").display()), "nope.json: No such file");
    assert_eq!(chat.saved("b.json"), conv);

    // /reset keeps the system message; /load brings the saved conversation back, and the
    // next turn goes on from it.
    chat.command("/reset", "(conversation reset)");
    assert_eq!(chat.saved("c.json"), conv[..1]);
    chat.command(&format!("/load {}", chat.path("a.json").display()), "(loaded 3 messages");
    chat.say("third");
    let now = chat.saved("d.json");
    assert_eq!(now[..3], conv[..]);
    assert_eq!(users(&now), ["first line\nsecond line", "third"]);
    chat.command("/system", "(system message removed)");
    assert_eq!(chat.saved("e.json")[..], now[1..]);
    chat.send("/exit");
    chat.send(ENTER);
    assert_eq!(chat.end().0, 0);
}

#[test]
fn ctrl_c_clears_the_line_stops_a_reply_and_twice_exits() {
    let Some(model) = model() else { return };
    let mut chat = Chat::start(&model, &["-n", "2000", "--ignore-eos"]);
    // Ctrl-C drops what was typed: only the next line is sent.
    chat.send("never sent");
    chat.p.send_control('c').unwrap();
    // (Keys typed before the next prompt is up would be lost with the old line's editor state.)
    chat.p.exp_string("> ").unwrap();
    chat.send("kept");
    chat.send(ENTER);
    // Ctrl-C during the reply (its first letters are out) stops it and the chat goes on.
    chat.p.exp_string("kept").unwrap();
    chat.p.exp_regex("[A-Za-z]{3}").unwrap();
    chat.p.send_control('c').unwrap();
    chat.p.exp_string("(cancelled)").unwrap();
    chat.p.exp_string("> ").unwrap();
    let conv = chat.saved("conv.json");
    assert_eq!(users(&conv), ["kept"], "{conv:?}");
    // At an empty prompt: a hint, then a second Ctrl-C in a row exits with 130.
    chat.p.send_control('c').unwrap();
    chat.p.exp_string("Ctrl-C again to exit").unwrap();
    // At the editor's prompt, not in between (where Ctrl-C is a signal, which also exits 130).
    chat.p.exp_string("> ").unwrap();
    chat.p.send_control('c').unwrap();
    let (code, rest) = chat.end();
    assert_eq!(code, 130, "{rest}");
}

#[test]
fn a_history_file_that_cannot_be_written_is_skipped() {
    let Some(model) = model() else { return };
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let history = blocker.path().join("history");
    let mut chat = Chat::start(&model, &["-n", "3", "-vv", "--history", history.to_str().unwrap()]);
    assert!(chat.intro.contains("no chat history: cannot create"), "{}", chat.intro);
    chat.say("hi");
    let help = chat.command("/help", "while a reply is written, Ctrl-C stops it");
    assert!(!help.contains("History file"), "{help}");
    assert_eq!(users(&chat.saved("conv.json")), ["hi"]);
    chat.p.send_control('d').unwrap();
    assert_eq!(chat.end().0, 0);
}

#[test]
fn piped_input_is_read_as_plain_lines_with_the_same_commands() {
    let Some(model) = model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conv.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["chat", "-m", model.to_str().unwrap(), "--temp", "0", "-n", "3"])
        .env("MLX_ENGINE_CHAT_HISTORY", dir.path().join("history"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!("first\\\nsecond\n/help\n/save {}\n", file.display());
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("/save FILE"), "{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["messages"][0]["content"], "first\nsecond", "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "{v}");
    // The reply alone on stdout: no prompt, no terminal codes, and no history written.
    assert!(!stdout.contains("> ") && !stdout.contains('\x1b'), "{stdout:?}");
    assert!(!dir.path().join("history").exists());
}
