//! `chat --distributed`: rank 0 owns the conversation (stdin, stdout, the slash commands); before
//! each reply it sends the turn's prompt tokens and seed to the other ranks, which run the same
//! generation silently and wait for the next one. Quitting on rank 0 (end of input, `/exit`,
//! Ctrl-C twice) sends a last message that ends every rank.
//!
//! The messages travel as a collective broadcast over the model's own group
//! ([`distributed::broadcast`]), run on the model's worker thread so that they queue behind
//! any forward pass still in flight (the decoder queues one step ahead) rather than racing it
//! on the group's connections.

use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::common::param;
use super::interrupt;
use crate::distributed::{self, Group};
use crate::error::Result;
use crate::generate::{GenerateRequest, NoProgress};
use crate::model_kit::ModelKit;

/// What rank 0 sends before each reply, or to end the chat.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Turn {
        prompt_tokens: Vec<u32>,
        seed: u64,
        /// Rank 0's generation options (the same command line gives the same text); a rank
        /// whose own differ would run other steps and desynchronise the group.
        options: String,
    },
    Quit,
}

/// Runs `f` on the model's worker thread and waits for its result.
fn on_worker<T: Send + 'static>(kit: &ModelKit, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    kit.run_on_worker(move |_| {
        let _ = tx.send(f());
    })?;
    rx.recv().map_err(|_| param("distributed", "the model's worker stopped"))?
}

/// The message of rank 0 (`Some`) on every rank.
fn exchange(kit: &ModelKit, group: &Group, message: Option<&Message>) -> Result<Message> {
    let bytes = message.map(serde_json::to_vec).transpose().map_err(|e| param("distributed", e.to_string()))?;
    let g = group.clone();
    let got = on_worker(kit, move || distributed::broadcast(&g, bytes.as_deref()))?;
    serde_json::from_slice(&got)
        .map_err(|e| param("distributed", format!("rank {}: a garbled message from rank 0: {e}", group.rank())))
}

/// Whether every rank can run the turn (each says for itself).
fn all_agree(kit: &ModelKit, group: &Group, ok: bool) -> Result<bool> {
    let g = group.clone();
    Ok(on_worker(kit, move || distributed::count_refusals(&g, ok))? == 0)
}

/// Rank 0's side.
pub struct Leader {
    group: Group,
}

impl Leader {
    pub fn new(group: Group) -> Leader {
        Leader { group }
    }

    /// Sends a turn to the other ranks before rank 0 generates it; fails when a rank cannot
    /// follow (then every rank ends).
    pub fn turn(&self, kit: &ModelKit, prompt_tokens: &[u32], seed: u64, options: String) -> Result<()> {
        let message = Message::Turn { prompt_tokens: prompt_tokens.to_vec(), seed, options };
        exchange(kit, &self.group, Some(&message))?;
        if !all_agree(kit, &self.group, true)? {
            return Err(param(
                "distributed",
                "another rank runs chat with other options than rank 0 (every rank must run the same command line; \
                 its own error says which)",
            ));
        }
        Ok(())
    }

    /// Ends every rank's chat.
    pub fn quit(&self, kit: &ModelKit) -> Result<()> {
        exchange(kit, &self.group, Some(&Message::Quit)).map(drop)
    }
}

/// A rank other than 0: runs each turn rank 0 sends, printing nothing (errors go to stderr, as
/// rank 0 reports its own), until rank 0 quits. `options` describes this rank's generation
/// options as rank 0 describes its own; `request` builds the request of a turn.
pub fn follow(
    kit: &ModelKit,
    group: &Group,
    options: &str,
    request: impl Fn(Vec<u32>, u64) -> GenerateRequest,
) -> Result<()> {
    let rank = group.rank();
    loop {
        let (prompt_tokens, seed, theirs) = match exchange(kit, group, None)? {
            Message::Quit => return Ok(()),
            Message::Turn { prompt_tokens, seed, options } => (prompt_tokens, seed, options),
        };
        let same = theirs == options;
        if !all_agree(kit, group, same)? {
            return Err(param(
                "distributed",
                if same {
                    format!("rank {rank}: another rank runs chat with other options than rank 0")
                } else {
                    format!(
                        "rank {rank} runs chat with other options than rank 0 (every rank must run the same command \
                         line): rank 0 has {theirs}, rank {rank} has {options}"
                    )
                },
            ));
        }
        let mut generation = match kit.generate_with_progress(request(prompt_tokens, seed), Box::new(NoProgress)) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: rank {rank}: {e}");
                continue;
            }
        };
        // A Ctrl-C sent to this rank cancels the reply on every rank, as one to rank 0 does.
        let watch = interrupt::watch(generation.cancel_handle());
        for result in generation.by_ref() {
            if let Err(e) = result {
                eprintln!("error: rank {rank}: {e}");
            }
        }
        drop(watch);
        interrupt::reset();
    }
}
