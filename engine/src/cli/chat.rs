//! `mlx-engine chat`: an interactive conversation on stdin/stdout. Ctrl-C stops the current
//! reply (at the prompt, or pressed twice, it quits); `/reset` starts a new conversation; `/image PATH` adds an image to
//! the next message (vision models); `/exit` or end of input quits.

use std::io::{BufRead, Write};

use super::common::{load, print_stats, CacheArgs, ModelArgs, PrefillBar, SamplingArgs};
use super::generate::stdout_error;
use super::interrupt;
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, StopReason};
use crate::tokenizer::ChatMessage;
use crate::vision::ImageInput;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that starts every conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Scale images whose long side exceeds this many pixels down to it (see `/image`).
    #[arg(long, value_name = "PIXELS")]
    pub max_image_size: Option<u32>,
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
    let kit = load(&args.model, &args.cache)?;
    let fresh = || -> Vec<ChatMessage> { args.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect() };
    // A model without a usable chat template would fail every turn: find out now.
    let mut probe = fresh();
    probe.push(ChatMessage::new("user", "hello"));
    kit.tokenize_chat(&probe, template.as_ref(), &template_args)?;
    let mut messages = fresh();
    // Every image of the conversation, in order: each turn's prompt holds them all.
    let mut images: Vec<ImageInput> = Vec::new();
    let mut queued: Vec<ImageInput> = Vec::new();
    eprintln!("chat: type a message; /image PATH adds an image, /reset starts over, /exit quits, Ctrl-C stops a reply");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut bytes = Vec::new();
        match stdin.lock().read_until(b'\n', &mut bytes) {
            Ok(0) => {
                eprintln!();
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(Error::Io { path: "stdin".into(), source: e }),
        }
        let line = match String::from_utf8(bytes) {
            Ok(l) => l,
            Err(e) => {
                // Not the end of the conversation: say so and wait for the next line.
                eprintln!(
                    "error: that line is not valid UTF-8 (at byte {}); it was not sent",
                    e.utf8_error().valid_up_to()
                );
                continue;
            }
        };
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = fresh();
                images.clear();
                queued.clear();
                eprintln!("(conversation reset)");
                continue;
            }
            l if l.starts_with("/image") => {
                let path = l["/image".len()..].trim();
                if path.is_empty() {
                    eprintln!("usage: /image PATH (the image goes with your next message)");
                } else {
                    queued.push(ImageInput::from_arg(path));
                    eprintln!("(image {} queued for the next message)", images.len() + queued.len());
                }
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::with_images("user", line.to_string(), queued.len()));
        let all: Vec<ImageInput> = images.iter().chain(&queued).cloned().collect();
        let max_size = args.max_image_size;
        let prompt_tokens =
            match kit.tokenize_chat_with_images(&messages, template.as_ref(), &template_args, &all, max_size) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    messages.pop();
                    queued.clear();
                    continue;
                }
            };
        let req = GenerateRequest {
            prompt_tokens,
            sampling: args.sampling.overrides(),
            max_tokens: args.sampling.max_tokens,
            stop_strings: args.sampling.stop.clone(),
            ignore_eos: args.sampling.ignore_eos,
            prefill_step_size: step,
            ignore_prompt_cache: false,
            images: all,
            max_image_size: max_size,
        };
        let mut generation = match kit.generate_with_progress(req, Box::new(PrefillBar::new(step))) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                messages.pop();
                queued.clear();
                continue;
            }
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
            messages.pop();
            queued.clear();
            continue;
        }
        images.append(&mut queued);
        if let Some(stats) = generation.stats() {
            print_stats(stats);
        }
        messages.push(ChatMessage::new("assistant", reply));
    }
    Ok(())
}
