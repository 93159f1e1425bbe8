//! `chat`'s slash commands and the conversation they act on. Commands are handled here and
//! never reach the model; `//text` sends a message that starts with `/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;
use crate::vision::ImageInput;

pub const HELP: &str = "\
Commands (handled here, never sent to the model):
  /help          this list
  /reset         start a new conversation (the system message stays)
  /system TEXT   set the system message; /system alone removes it
  /save FILE     write the conversation to FILE as JSON: {\"messages\": [{\"role\", \"content\"}, ...]}
  /load FILE     continue the conversation saved in FILE
  /image PATH    add an image to your next message (vision models)
  /exit, /quit   leave (as Ctrl-D does)
  //TEXT         send a message that starts with `/`
Input: end a line with \\ to go on with the message on the next line.
On a terminal: arrows, Home/End, Ctrl-A/E/W/U/K edit the line; Up/Down recall earlier lines,
Ctrl-R searches them. Ctrl-C clears the line, and at an empty prompt a second Ctrl-C in a row
exits (status 130); while a reply is written, Ctrl-C stops it.";

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    Reset,
    Exit,
    /// The new system message; empty removes it.
    System(&'a str),
    Save(&'a str),
    Load(&'a str),
    Image(&'a str),
    Unknown(&'a str),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Nothing,
    Message(&'a str),
    Command(Command<'a>),
}

pub fn parse(line: &str) -> Parsed<'_> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Parsed::Nothing;
    }
    if let Some(message) = line.trim_start().strip_prefix('/').filter(|m| m.starts_with('/')) {
        return if message[1..].trim().is_empty() { Parsed::Nothing } else { Parsed::Message(message) };
    }
    if !trimmed.starts_with('/') {
        return Parsed::Message(line);
    }
    let (name, arg) = match trimmed.find(char::is_whitespace) {
        Some(i) => (&trimmed[..i], trimmed[i..].trim()),
        None => (trimmed, ""),
    };
    Parsed::Command(match name {
        "/help" | "/?" => Command::Help,
        "/reset" => Command::Reset,
        "/exit" | "/quit" => Command::Exit,
        "/system" => Command::System(arg),
        "/save" => Command::Save(arg),
        "/load" => Command::Load(arg),
        "/image" => Command::Image(arg),
        other => Command::Unknown(other),
    })
}

/// The conversation so far, with the images its prompt carries.
pub struct Conversation {
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Every image of the conversation, in order: each turn's prompt holds them all.
    pub images: Vec<ImageInput>,
    /// Images for the next message.
    pub queued: Vec<ImageInput>,
}

impl Conversation {
    pub fn new(system: Option<String>) -> Conversation {
        let mut c = Conversation { system, messages: Vec::new(), images: Vec::new(), queued: Vec::new() };
        c.reset();
        c
    }

    pub fn reset(&mut self) {
        self.messages = self.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect();
        self.images.clear();
        self.queued.clear();
    }

    /// Sets (or, when empty, removes) the system message, here and for later `/reset`s.
    pub fn set_system(&mut self, text: &str) {
        if self.messages.first().is_some_and(|m| m.role == "system") {
            self.messages.remove(0);
        }
        self.system = (!text.is_empty()).then(|| text.to_string());
        if let Some(s) = &self.system {
            self.messages.insert(0, ChatMessage::new("system", s.clone()));
        }
    }

    /// Takes over a loaded conversation; its system message becomes the one `/reset` keeps.
    pub fn replace(&mut self, messages: Vec<ChatMessage>) {
        self.system = messages.first().filter(|m| m.role == "system").map(|m| m.content.clone());
        self.messages = messages;
        self.images.clear();
        self.queued.clear();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    messages: Vec<SavedMessage>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMessage {
    role: String,
    content: String,
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Writes `messages` to `path` as `{"messages": [{"role": ..., "content": ...}, ...]}`.
/// Images are not saved (only their number in each message would be).
pub fn save(path: &Path, messages: &[ChatMessage]) -> Result<()> {
    let saved = Saved {
        messages: messages.iter().map(|m| SavedMessage { role: m.role.clone(), content: m.content.clone() }).collect(),
    };
    let mut text = serde_json::to_string_pretty(&saved).map_err(|e| conversation(path, e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Reads a conversation that [`save`] wrote (or one written by hand in that shape), checking
/// every field.
pub fn load(path: &Path) -> Result<Vec<ChatMessage>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let shape = "expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}";
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| conversation(path, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(conversation(path, format!("not an object; {shape}")));
    }
    let saved: Saved = serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let reason = e.into_inner().to_string();
        conversation(path, if at == "." { format!("{reason}; {shape}") } else { format!("{at}: {reason}") })
    })?;
    for (i, m) in saved.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            let reason = format!("messages[{i}].role: `{}` is not one of {}", m.role, ROLES.join(", "));
            return Err(conversation(path, reason));
        }
        if m.role == "system" && i > 0 {
            return Err(conversation(path, format!("messages[{i}]: a system message can only come first")));
        }
    }
    Ok(saved.messages.into_iter().map(|m| ChatMessage::new(m.role, m.content)).collect())
}

fn conversation(path: &Path, reason: String) -> Error {
    Error::Conversation { path: PathBuf::from(path), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_messages_and_commands() {
        assert_eq!(parse("  "), Parsed::Nothing);
        assert_eq!(parse("hi /there"), Parsed::Message("hi /there"));
        assert_eq!(parse("//etc/passwd is?"), Parsed::Message("/etc/passwd is?"));
        assert_eq!(parse("//"), Parsed::Nothing);
        assert_eq!(parse("/help"), Parsed::Command(Command::Help));
        assert_eq!(parse(" /system  Be brief. "), Parsed::Command(Command::System("Be brief.")));
        assert_eq!(parse("/save a b.json"), Parsed::Command(Command::Save("a b.json")));
        assert_eq!(parse("/sytem x"), Parsed::Command(Command::Unknown("/sytem")));
    }

    #[test]
    fn a_conversation_round_trips_and_bad_files_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        let messages = vec![
            ChatMessage::new("system", "s"),
            ChatMessage::new("user", "u\n\"q\""),
            ChatMessage::new("assistant", "a"),
        ];
        save(&file, &messages).unwrap();
        assert_eq!(load(&file).unwrap(), messages);

        let cases = [
            ("[1]", "not an object; expected {\"messages\""),
            ("{}", "missing field `messages`; expected {\"messages\""),
            ("{\"messages\": [{\"role\": \"user\"}]}", "missing field `content`"),
            ("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", "messages[0].content: invalid type"),
            ("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", "messages[0].role: `bot` is not one of"),
            ("{\"messages\": [], \"extra\": 1}", "unknown field `extra`"),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"system\", \"content\": \"x\"}]}", "messages[1]: a system message can only come first"),
            ("{\"messages\": [", "invalid JSON: EOF while parsing a list at line 1 column 14"),
        ];
        for (text, want) in cases {
            std::fs::write(&file, text).unwrap();
            let e = load(&file).unwrap_err().to_string();
            assert!(e.contains("c.json") && e.contains(want), "{text}: {e}");
        }
        let e = load(&dir.path().join("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn the_system_message_is_set_replaced_and_removed() {
        let mut c = Conversation::new(Some("a".into()));
        c.messages.push(ChatMessage::new("user", "hi"));
        c.set_system("b");
        assert_eq!(c.messages[0], ChatMessage::new("system", "b"));
        assert_eq!(c.messages.len(), 2);
        c.set_system("");
        assert_eq!(c.messages, vec![ChatMessage::new("user", "hi")]);
        c.set_system("c");
        c.reset();
        assert_eq!(c.messages, vec![ChatMessage::new("system", "c")]);
    }
}
