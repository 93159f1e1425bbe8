//! `mlx-engine chat`: an interactive conversation on stdin/stdout. Ctrl-C stops the current
//! reply (not the program); `/reset` starts a new conversation; `/image PATH` adds an image to
//! the next message (vision models); `/exit` or end of input quits.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use super::common::{load, print_stats, CacheArgs, DraftArgs, ModelArgs, PrefillBar, SamplingArgs};
use crate::error::Result;
use crate::generate::GenerateRequest;
use crate::model_kit::CancelHandle;
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
    #[command(flatten)]
    pub draft: DraftArgs,
    /// Scale images whose long side exceeds this many pixels down to it (see `/image`).
    #[arg(long, value_name = "PIXELS")]
    pub max_image_size: Option<u32>,
}

pub fn run(args: &ChatArgs) -> Result<()> {
    let template = args.sampling.template()?;
    let template_args = args.sampling.template_args()?;
    crate::stop::StopStrings::new(args.sampling.stop.clone())?;
    let step = args.cache.prefill_step_size()?;
    let (speculation, num_draft_tokens) = args.draft.speculation()?;
    let kit = load(&args.model, &args.cache)?;
    args.draft.load_into(&kit)?;
    let current: Arc<Mutex<Option<CancelHandle>>> = Arc::new(Mutex::new(None));
    let handler_slot = current.clone();
    let _ = ctrlc::set_handler(move || {
        if let Ok(slot) = handler_slot.lock() {
            if let Some(c) = slot.as_ref() {
                c.cancel();
            }
        }
    });
    let fresh = || -> Vec<ChatMessage> { args.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect() };
    let mut messages = fresh();
    // Every image of the conversation, in order: each turn's prompt holds them all.
    let mut images: Vec<ImageInput> = Vec::new();
    let mut queued: Vec<ImageInput> = Vec::new();
    eprintln!("chat: type a message; /image PATH adds an image, /reset starts over, /exit quits, Ctrl-C stops a reply");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
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
            speculation: speculation.clone(),
            num_draft_tokens,
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
        if let Ok(mut slot) = current.lock() {
            *slot = Some(generation.cancel_handle());
        }
        let mut reply = String::new();
        let mut failed = false;
        for result in generation.by_ref() {
            match result {
                Ok(r) => {
                    print!("{}", r.text);
                    let _ = std::io::stdout().flush();
                    reply.push_str(&r.text);
                }
                Err(e) => {
                    eprintln!("\nerror: {e}");
                    failed = true;
                }
            }
        }
        println!();
        if let Ok(mut slot) = current.lock() {
            *slot = None;
        }
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
