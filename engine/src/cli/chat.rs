//! `mlx-engine chat`: an interactive conversation. On a terminal, lines are edited with
//! rustyline (history, a trailing `\` continues the message); piped input is read line by line.
//! Slash commands (`/help` lists them) never reach the model. Ctrl-C stops the current reply;
//! at the prompt it clears the line, and twice in a row at an empty prompt it quits (130);
//! Ctrl-D, `/exit` or the end of input quit (0).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::chat_commands::{self, Command, Conversation, Parsed};
use super::chat_input::{Input, Reader};
use super::chat_ranks::{self, Leader};
use super::common::{
    load_in, load_quietly_in, param, print_stats, CacheArgs, DraftArgs, ModelArgs, PrefillBar, SamplingArgs,
};
use super::generate::stdout_error;
use super::interrupt;
use super::launch::{drawn_seed, DistributedArgs};
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, StopReason};
use crate::model_kit::ModelKit;
use crate::speculative::Speculation;
use crate::tokenizer::{ChatMessage, ChatTemplate};
use crate::vision::ImageInput;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that starts every conversation (`/system TEXT` changes it).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Scale images whose long side exceeds this many pixels down to it (see `/image`).
    #[arg(long, value_name = "PIXELS")]
    pub max_image_size: Option<u32>,
    /// Where the line history is kept [default: $MLX_ENGINE_CHAT_HISTORY, else
    /// $XDG_DATA_HOME/mlx-engine/chat_history, else ~/.local/share/mlx-engine/chat_history]; an
    /// empty MLX_ENGINE_CHAT_HISTORY keeps none.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Rank 0 reads the input and prints the replies; the other ranks run the same turns
    /// silently (images and a draft model are refused).
    #[command(flatten)]
    pub distributed: DistributedArgs,
}

/// What every turn shares: the model and the settings checked once at the start.
struct Session<'a> {
    args: &'a ChatArgs,
    kit: ModelKit,
    template: Option<ChatTemplate>,
    template_args: serde_json::Map<String, serde_json::Value>,
    step: Option<usize>,
    speculation: Speculation,
    num_draft_tokens: Option<usize>,
    /// Under `--distributed`, on rank 0: sends every turn to the other ranks.
    leader: Option<Leader>,
}

pub fn run(args: &ChatArgs) -> Result<()> {
    // Checked once here, not on every turn (each would fail the same way).
    args.sampling.check()?;
    if args.sampling.top_logprobs.is_some() {
        return Err(super::common::param(
            "--top-logprobs",
            "chat prints text only; use `generate --output jsonl` to see logprobs",
        ));
    }
    let template = args.sampling.template()?;
    let template_args = args.sampling.template_args()?;
    let step = args.cache.prefill_step_size()?;
    let (speculation, num_draft_tokens) = args.draft.speculation()?;
    let (group, split) = args.distributed.group()?;
    if group.is_some() && args.draft.draft_model.is_some() {
        return Err(param("draft-model", "speculative decoding does not run under --distributed"));
    }
    let follower = group.clone().filter(|g| g.rank() != 0);
    let kit = match follower {
        Some(_) => load_quietly_in(&args.model, &args.cache, group.clone(), split)?,
        None => load_in(&args.model, &args.cache, group.clone(), split)?,
    };
    args.draft.load_into(&kit)?;
    let leader = group.filter(|g| g.rank() == 0).map(Leader::new);
    let session = Session { args, kit, template, template_args, step, speculation, num_draft_tokens, leader };
    if let Some(g) = follower {
        let options = session.options();
        return chat_ranks::follow(&session.kit, &g, &options, |tokens, seed| {
            session.request(tokens, Some(seed), Vec::new())
        });
    }
    let end = session.converse();
    // However the conversation ended but for a broken group, the other ranks end with it.
    if let (Some(leader), Ok(()) | Err(Error::Interrupted)) = (&session.leader, &end) {
        leader.quit(&session.kit)?;
    }
    end
}

impl Session<'_> {
    /// The generation options every turn shares, as text (compared across ranks).
    fn options(&self) -> String {
        let a = self.args;
        format!(
            "{:?}",
            (a.sampling.overrides(), a.sampling.max_tokens, &a.sampling.stop, a.sampling.ignore_eos, self.step)
        )
    }

    /// The request of a turn; `seed` replaces --seed (under --distributed every turn has one).
    fn request(&self, prompt_tokens: Vec<u32>, seed: Option<u64>, images: Vec<ImageInput>) -> GenerateRequest {
        let args = self.args;
        let mut sampling = args.sampling.overrides();
        sampling.seed = seed.or(sampling.seed);
        GenerateRequest {
            prompt_tokens,
            sampling,
            max_tokens: args.sampling.max_tokens,
            stop_strings: args.sampling.stop.clone(),
            ignore_eos: args.sampling.ignore_eos,
            prefill_step_size: self.step,
            ignore_prompt_cache: false,
            images,
            max_image_size: args.max_image_size,
            speculation: self.speculation,
            num_draft_tokens: self.num_draft_tokens,
            constraint: None,
        }
    }

    /// Rank 0's (or the only rank's) conversation: reads lines until the input ends.
    fn converse(&self) -> Result<()> {
        let (args, session) = (self.args, self);
        let mut conv = Conversation::new(args.system.clone());
        // A model without a usable chat template would fail every turn: find out now.
        let mut probe = conv.messages.clone();
        probe.push(ChatMessage::new("user", "hello"));
        session.kit.tokenize_chat(&probe, session.template.as_ref(), &session.template_args)?;
        let mut input = Reader::new(args.history.as_deref());
        eprintln!("chat: type a message; /help lists the commands, /exit quits, Ctrl-C stops a reply");
        // Whether the last prompt ended in Ctrl-C: a second one at an empty prompt quits.
        let mut interrupted = false;
        loop {
            let line = match input.read("> ")? {
                Input::Eof => {
                    eprintln!();
                    break;
                }
                Input::Interrupted { empty } => {
                    if empty && interrupted {
                        return Err(Error::Interrupted);
                    }
                    interrupted = true;
                    if empty {
                        eprintln!("(Ctrl-C again to exit, or Ctrl-D)");
                    }
                    continue;
                }
                Input::NotUtf8(at) => {
                    // Not the end of the conversation: say so and wait for the next line.
                    eprintln!("error: that line is not valid UTF-8 (at byte {at}); it was not sent");
                    continue;
                }
                Input::Line(l) => l,
            };
            interrupted = false;
            let command = match chat_commands::parse(&line) {
                Parsed::Nothing => continue,
                Parsed::Message(text) => {
                    session.turn(&mut conv, text)?;
                    continue;
                }
                Parsed::Command(c) => c,
            };
            match command {
                Command::Exit => break,
                Command::Help => {
                    eprintln!("{}", chat_commands::HELP);
                    if let Some(h) = input.history() {
                        eprintln!("History file: {}", h.display());
                    }
                }
                Command::Reset => {
                    conv.reset();
                    eprintln!("(conversation reset)");
                }
                Command::System(text) => {
                    conv.set_system(text);
                    if text.is_empty() {
                        eprintln!("(system message removed)");
                    } else {
                        eprintln!("(system message set)");
                    }
                }
                Command::Save("") => eprintln!("usage: /save FILE"),
                Command::Save(file) => match chat_commands::save(Path::new(file), &conv.messages) {
                    Ok(()) if conv.images.is_empty() => eprintln!("(saved {} messages to {file})", conv.messages.len()),
                    Ok(()) => eprintln!("(saved {} messages to {file}, without their images)", conv.messages.len()),
                    Err(e) => eprintln!("error: could not save the conversation: {e}"),
                },
                Command::Load("") => eprintln!("usage: /load FILE"),
                Command::Load(file) => match session.check_loaded(Path::new(file)) {
                    Ok(messages) => {
                        eprintln!("(loaded {} messages from {file})", messages.len());
                        conv.replace(messages);
                    }
                    Err(e) => eprintln!("error: could not load the conversation: {e}"),
                },
                Command::Image("") => {
                    eprintln!("usage: /image PATH (the image goes with your next message)")
                }
                Command::Image(_) if session.leader.is_some() => {
                    eprintln!("error: images are not sent to the other ranks of a --distributed chat; the image was not queued")
                }
                Command::Image(path) => {
                    conv.queued.push(ImageInput::from_arg(path));
                    eprintln!("(image {} queued for the next message)", conv.images.len() + conv.queued.len());
                }
                Command::Unknown(name) => {
                    eprintln!("unknown command {name} (not sent to the model); /help lists the commands, //TEXT sends a message starting with /")
                }
            }
        }
        Ok(())
    }

    /// A saved conversation, checked against this model's chat template too (a template that
    /// refuses it would fail every later turn).
    fn check_loaded(&self, file: &Path) -> Result<Vec<ChatMessage>> {
        let messages = chat_commands::load(file)?;
        let mut probe = messages.clone();
        probe.push(ChatMessage::new("user", "hello"));
        self.kit.tokenize_chat(&probe, self.template.as_ref(), &self.template_args).map_err(|e| {
            Error::Conversation { path: file.to_path_buf(), reason: format!("the chat template refuses it: {e}") }
        })?;
        Ok(messages)
    }

    /// Sends `text` with the queued images and prints the reply. A turn that fails is taken
    /// back (its message and images leave the conversation) and the chat goes on; only a
    /// failed write to stdout ends it.
    fn turn(&self, conv: &mut Conversation, text: &str) -> Result<()> {
        let args = self.args;
        conv.messages.push(ChatMessage::with_images("user", text.to_string(), conv.queued.len()));
        let all: Vec<ImageInput> = conv.images.iter().chain(&conv.queued).cloned().collect();
        let max_size = args.max_image_size;
        let tokens = self.kit.tokenize_chat_with_images(
            &conv.messages,
            self.template.as_ref(),
            &self.template_args,
            &all,
            max_size,
        );
        let prompt_tokens = match tokens {
            Ok(t) => t,
            Err(e) => return take_back(conv, &e),
        };
        // The other ranks run the same turn: they need its tokens, and the seed every rank samples with.
        let mut seed = None;
        if let Some(leader) = &self.leader {
            let s = args.sampling.seed.unwrap_or_else(drawn_seed);
            leader.turn(&self.kit, &prompt_tokens, s, self.options())?;
            seed = Some(s);
        }
        let req = self.request(prompt_tokens, seed, all);
        let mut generation = match self.kit.generate_with_progress(req, Box::new(PrefillBar::new(self.step))) {
            Ok(g) => g,
            Err(e) => return take_back(conv, &e),
        };
        let watch = interrupt::watch(generation.cancel_handle());
        let mut reply = String::new();
        let mut failed = false;
        let mut reason = None;
        let mut out = std::io::stdout();
        for result in generation.by_ref() {
            match result {
                Ok(r) => {
                    reason = r.stop_condition.as_ref().map(|c| c.reason);
                    write!(out, "{}", r.text).and_then(|()| out.flush()).map_err(stdout_error)?;
                    reply.push_str(&r.text);
                }
                Err(e) => {
                    eprintln!("\nerror: {e}");
                    failed = true;
                }
            }
        }
        drop(watch);
        writeln!(out).map_err(stdout_error)?;
        match reason {
            Some(StopReason::UserCancelled) => eprintln!("(cancelled)"),
            Some(StopReason::TokenLimit) => eprintln!("(stopped at --max-tokens)"),
            _ => {}
        }
        interrupt::reset();
        if failed {
            conv.messages.pop();
            conv.queued.clear();
            return Ok(());
        }
        let mut queued = std::mem::take(&mut conv.queued);
        conv.images.append(&mut queued);
        if let Some(stats) = generation.stats() {
            print_stats(stats);
        }
        conv.messages.push(ChatMessage::new("assistant", reply));
        Ok(())
    }
}

fn take_back(conv: &mut Conversation, e: &Error) -> Result<()> {
    eprintln!("error: {e}");
    conv.messages.pop();
    conv.queued.clear();
    Ok(())
}
