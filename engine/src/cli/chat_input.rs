//! Where `chat` reads its messages. On a terminal: a line editor (rustyline) with the usual
//! editing keys, a history kept in a file, and a trailing `\` that continues the message on the
//! next line. Otherwise (piped input, scripts): plain lines, so that nothing is echoed or
//! redrawn into a pipe and what a script sends is exactly what the model gets.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustyline::config::Behavior;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, KeyEvent, RepeatCount};

use crate::error::{Error, Result};

/// The environment variable that moves the history file (an empty value keeps no history).
pub const HISTORY_ENV: &str = "MLX_ENGINE_CHAT_HISTORY";

/// What one prompt produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A message or command, its continuation lines joined with `\n`.
    Line(String),
    /// Ctrl-C at the prompt; `empty` when nothing had been typed.
    Interrupted { empty: bool },
    /// Ctrl-D at an empty prompt, or the end of piped input.
    Eof,
    /// A piped line that is not UTF-8: the offset of the first bad byte.
    NotUtf8(usize),
}

pub enum Reader {
    Editor(Box<LineEditor>),
    Plain,
}

impl Reader {
    /// The line editor when stdin is a terminal, plain lines otherwise. `history` (the
    /// `--history` flag) wins over [`HISTORY_ENV`] and the default data-dir file.
    pub fn new(history: Option<&Path>) -> Reader {
        if !std::io::stdin().is_terminal() {
            return Reader::Plain;
        }
        match LineEditor::new(history_file(history)) {
            Ok(e) => Reader::Editor(Box::new(e)),
            Err(e) => {
                // The terminal could not be set up; chat works without editing all the same.
                // (On a terminal it cannot drive, such as TERM=dumb, rustyline itself reads
                // unedited lines.)
                tracing::debug!("no line editor ({e}); reading plain lines");
                Reader::Plain
            }
        }
    }

    /// The file that history goes to, if any.
    pub fn history(&self) -> Option<&Path> {
        match self {
            Reader::Editor(e) => e.history.as_deref(),
            Reader::Plain => None,
        }
    }

    pub fn read(&mut self, prompt: &str) -> Result<Input> {
        match self {
            Reader::Editor(e) => e.read(prompt),
            Reader::Plain => read_plain(prompt),
        }
    }
}

/// The `--history` flag, else [`HISTORY_ENV`], else `$XDG_DATA_HOME/mlx-engine/chat_history`,
/// else `~/.local/share/mlx-engine/chat_history` (relative XDG values are ignored, as the XDG
/// spec asks); `None` for no history.
pub fn history_file(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
    }
    if let Some(v) = std::env::var_os(HISTORY_ENV) {
        return (!v.is_empty()).then(|| PathBuf::from(v));
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let data = std::env::var_os("XDG_DATA_HOME")
        .and_then(absolute)
        .or_else(|| std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".local/share")))?;
    Some(data.join("mlx-engine").join("chat_history"))
}

/// Joins the physical lines of a message: a line ending in `\` (trailing blanks aside) goes on
/// with the next, its backslash dropped.
pub fn join_continued(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len() - 1;
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match line.trim_end_matches([' ', '\t']).strip_suffix('\\') {
            Some(head) if i < last => out.push_str(head),
            _ => out.push_str(line),
        }
        if i < last {
            out.push('\n');
        }
    }
    out
}

fn continues(line: &str) -> bool {
    line.trim_end_matches([' ', '\t', '\r', '\n']).ends_with('\\')
}

fn read_plain(prompt: &str) -> Result<Input> {
    let mut text = String::new();
    eprint!("{prompt}");
    loop {
        let mut bytes = Vec::new();
        let n = std::io::stdin()
            .lock()
            .read_until(b'\n', &mut bytes)
            .map_err(|e| Error::Io { path: "stdin".into(), source: e })?;
        if n == 0 {
            // End of input inside a continued message: send what there is.
            return Ok(if text.is_empty() { Input::Eof } else { Input::Line(join_continued(&text)) });
        }
        let line = match String::from_utf8(bytes) {
            Ok(l) => l,
            Err(e) => return Ok(Input::NotUtf8(e.utf8_error().valid_up_to())),
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(line);
        if !continues(line) {
            return Ok(Input::Line(join_continued(&text)));
        }
    }
}

pub struct LineEditor {
    editor: Editor<Continuation, FileHistory>,
    history: Option<PathBuf>,
    /// Set by the Ctrl-C binding: whether the line was empty when it was pressed (rustyline's
    /// `Interrupted` does not say).
    interrupted_empty: Arc<AtomicBool>,
}

impl LineEditor {
    fn new(history: Option<PathBuf>) -> rustyline::Result<LineEditor> {
        let config = rustyline::Config::builder()
            // The terminal itself, not stdout: `chat > reply.txt` keeps the prompt and the
            // redraws out of the file.
            .behavior(Behavior::PreferTerm)
            .auto_add_history(false)
            .history_ignore_dups(true)?
            .max_history_size(1000)?
            .build();
        let mut editor = Editor::with_history(config, FileHistory::new())?;
        editor.set_helper(Some(Continuation));
        let interrupted_empty = Arc::new(AtomicBool::new(false));
        editor
            .bind_sequence(KeyEvent::ctrl('C'), EventHandler::Conditional(Box::new(CtrlC(interrupted_empty.clone()))));
        let mut e = LineEditor { editor, history: None, interrupted_empty };
        e.history = history.filter(|p| e.open_history(p));
        Ok(e)
    }

    /// Loads the history file, creating its folder; false (and a debug line, since chat works
    /// as well without) when it cannot be used.
    fn open_history(&mut self, path: &Path) -> bool {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::debug!("no chat history: cannot create {}: {e}", dir.display());
                return false;
            }
        }
        match self.editor.load_history(path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!("no chat history: cannot read {}: {e}", path.display());
                return false;
            }
        }
        // Writable? Find out now rather than after the first message.
        if let Err(e) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            tracing::debug!("no chat history: cannot write {}: {e}", path.display());
            return false;
        }
        tracing::debug!("chat history in {}", path.display());
        true
    }

    fn read(&mut self, prompt: &str) -> Result<Input> {
        self.interrupted_empty.store(false, Ordering::SeqCst);
        match self.editor.readline(prompt) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    self.remember(&text);
                }
                Ok(Input::Line(join_continued(&text)))
            }
            Err(ReadlineError::Interrupted) => {
                Ok(Input::Interrupted { empty: self.interrupted_empty.load(Ordering::SeqCst) })
            }
            Err(ReadlineError::Eof) => Ok(Input::Eof),
            Err(ReadlineError::Io(e)) => Err(Error::Io { path: "terminal".into(), source: e }),
            Err(e) => Err(Error::Io { path: "terminal".into(), source: std::io::Error::other(e.to_string()) }),
        }
    }

    /// Adds `text` to the history, and to the file at once: a second Ctrl-C during a reply
    /// leaves without running destructors.
    fn remember(&mut self, text: &str) {
        let _ = self.editor.add_history_entry(text);
        if let Some(path) = &self.history {
            if let Err(e) = self.editor.append_history(path) {
                tracing::debug!("chat history: cannot write {}: {e}; keeping it in memory", path.display());
                self.history = None;
            }
        }
    }
}

/// Enter on a line that ends in `\` starts a new line of the same message.
struct Continuation;

impl Validator for Continuation {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if continues(ctx.input()) { ValidationResult::Incomplete } else { ValidationResult::Valid(None) })
    }
}

impl rustyline::completion::Completer for Continuation {
    type Candidate = String;
}
impl rustyline::hint::Hinter for Continuation {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Continuation {}
impl rustyline::Helper for Continuation {}

struct CtrlC(Arc<AtomicBool>);

impl ConditionalEventHandler for CtrlC {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        self.0.store(ctx.line().is_empty(), Ordering::SeqCst);
        Some(Cmd::Interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_join_without_their_backslash() {
        assert_eq!(join_continued("one \\\ntwo\\  \nthree"), "one \ntwo\nthree");
        // A backslash on the last line is text; so is one inside a line.
        assert_eq!(join_continued("a\\b\\"), "a\\b\\");
        assert_eq!(join_continued("x\\\r\ny"), "x\ny");
        assert!(continues("go on \\ ") && !continues("a\\b"));
    }

    #[test]
    fn an_empty_history_setting_keeps_none() {
        assert_eq!(history_file(Some(Path::new(""))), None);
        assert_eq!(history_file(Some(Path::new("/tmp/h"))), Some(PathBuf::from("/tmp/h")));
    }
}
