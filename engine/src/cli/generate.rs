//! `mlx-engine generate`: one prompt (raw text or a chat message) -> streamed text or JSONL.

use std::io::{Read, Write};

use super::common::{
    load_in, load_quietly_in, param, print_stats, CacheArgs, DraftArgs, ImageArgs, ModelArgs, PrefillBar, SamplingArgs,
    Summary,
};
use super::constraint_args::ConstraintArgs;
use super::interrupt;
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, NoProgress, PromptProgress, StopReason};
use crate::tokenizer::ChatMessage;

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw prompt text, encoded as the tokenizer's `encode(text)` does; `-` reads stdin.
    /// One of --prompt and --chat is required.
    #[arg(short, long, conflicts_with = "chat")]
    pub prompt: Option<String>,
    /// A user message, rendered with the chat template; `-` reads stdin.
    #[arg(short, long)]
    pub chat: Option<String>,
    /// A system message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub images: ImageArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub draft: DraftArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// `text` streams the text; `jsonl` prints one JSON object per streamed result (the last
    /// one, with the stop condition, also carries the generation's `stats`).
    #[arg(long, default_value = "text", value_parser = ["text", "jsonl"])]
    pub output: String,
    #[command(flatten)]
    pub distributed: super::launch::DistributedArgs,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| param("output", e.to_string()))
}

fn read_arg(s: &str) -> Result<String> {
    if s != "-" {
        return Ok(s.to_string());
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| Error::Io { path: "<stdin>".into(), source: e })?;
    Ok(text)
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    // Validate what can be checked without the model first.
    if args.prompt.is_none() && args.chat.is_none() {
        return Err(param("prompt", "pass --prompt TEXT (raw text) or --chat TEXT (a message for the chat template)"));
    }
    if args.prompt.is_some() {
        // A raw prompt is encoded as it is; these would be silently ignored.
        for (flag, set) in [
            ("--system", args.system.is_some()),
            ("--chat-template", args.sampling.chat_template.is_some()),
            ("--chat-template-args", args.sampling.chat_template_args.is_some()),
        ] {
            if set {
                return Err(param(flag, "applies to --chat messages, not to a raw --prompt"));
            }
        }
    }
    args.sampling.check()?;
    let template = args.sampling.template()?;
    let template_args = args.sampling.template_args()?;
    let step = args.cache.prefill_step_size()?;
    let constraint = args.constraint.constraint()?;
    let (speculation, num_draft_tokens) = args.draft.speculation()?;
    let (group, split) = args.distributed.group()?;
    if group.is_some() && args.draft.draft_model.is_some() {
        return Err(param("draft-model", "speculative decoding does not run under --distributed"));
    }
    // Rank 0 owns the output; the others run the same request silently.
    let rank0 = group.as_ref().is_none_or(|g| g.rank() == 0);
    let kit = if rank0 {
        load_in(&args.model, &args.cache, group.clone(), split)?
    } else {
        load_quietly_in(&args.model, &args.cache, group.clone(), split)?
    };
    args.draft.load_into(&kit)?;
    let images = args.images.inputs();
    let max_size = args.images.max_image_size;
    let prompt_tokens = match (&args.prompt, &args.chat) {
        (Some(p), _) => kit.tokenize_with_images(&read_arg(p)?, &images, max_size)?,
        (None, Some(c)) => {
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(ChatMessage::new("system", s.clone()));
            }
            messages.push(ChatMessage::with_images("user", read_arg(c)?, images.len()));
            kit.tokenize_chat_with_images(&messages, template.as_ref(), &template_args, &images, max_size)?
        }
        (None, None) => return Err(param("prompt", "pass --prompt TEXT or --chat TEXT")),
    };
    let mut sampling = args.sampling.overrides();
    if let Some(g) = &group {
        // Every rank samples, so they must draw the same random numbers.
        sampling.seed = Some(super::launch::shared_seed(g, sampling.seed)?);
    }
    let req = GenerateRequest {
        prompt_tokens,
        sampling,
        max_tokens: args.sampling.max_tokens,
        stop_strings: args.sampling.stop.clone(),
        ignore_eos: args.sampling.ignore_eos,
        prefill_step_size: step,
        ignore_prompt_cache: false,
        images,
        max_image_size: max_size,
        speculation,
        num_draft_tokens,
        constraint,
    };
    let progress: Box<dyn PromptProgress> = if rank0 { Box::new(PrefillBar::new(step)) } else { Box::new(NoProgress) };
    let mut generation = kit.generate_with_progress(req, progress)?;
    let _watch = interrupt::watch(generation.cancel_handle());
    let stdout = std::io::stdout();
    let mut out: Box<dyn Write> = if rank0 { Box::new(stdout.lock()) } else { Box::new(std::io::sink()) };
    let mut reason = None;
    // In jsonl the last result waits for the stats, which arrive once the stream has ended.
    let mut last = None;
    for result in generation.by_ref() {
        let result = result?;
        reason = result.stop_condition.as_ref().map(|c| c.reason);
        let written = if args.output == "jsonl" {
            if result.stop_condition.is_some() {
                last = Some(json(&result)?);
                continue;
            }
            writeln!(out, "{}", json(&result)?)
        } else {
            write!(out, "{}", result.text)
        };
        // A reader that went away (`| head`) or a full disk ends the work now, not at the end.
        written.and_then(|()| out.flush()).map_err(stdout_error)?;
    }
    if let Some(last) = last {
        let stats = generation.stats().map(|s| json(&Summary::of(s))).transpose()?;
        // Appended as the last field, so the result's own fields keep their order.
        let line = match (stats, last.strip_suffix('}')) {
            (Some(stats), Some(open)) => format!("{open},\"stats\":{stats}}}"),
            _ => last,
        };
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(stdout_error)?;
    }
    if args.output == "text" {
        writeln!(out).and_then(|()| out.flush()).map_err(stdout_error)?;
    }
    let cut = match reason {
        Some(StopReason::UserCancelled) => Some("cancelled"),
        Some(StopReason::TokenLimit) if args.output == "text" => Some("stopped at --max-tokens"),
        _ => None,
    };
    if let Some(why) = cut.filter(|_| rank0) {
        eprintln!("({why})");
    }
    if let Some(stats) = generation.stats().filter(|_| rank0) {
        print_stats(stats);
    }
    if reason == Some(StopReason::UserCancelled) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

pub(super) fn stdout_error(e: std::io::Error) -> Error {
    Error::Io { path: "stdout".into(), source: e }
}
