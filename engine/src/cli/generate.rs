//! `mlx-engine generate`: one prompt (raw text or a chat message) -> streamed text or JSONL.

use std::io::{Read, Write};

use super::common::{load, param, print_stats, CacheArgs, DraftArgs, ImageArgs, ModelArgs, PrefillBar, SamplingArgs};
use crate::error::{Error, Result};
use crate::generate::GenerateRequest;
use crate::tokenizer::ChatMessage;

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw prompt text, encoded as the tokenizer's `encode(text)` does; `-` reads stdin.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    pub prompt: Option<String>,
    /// A user message, rendered with the chat template; `-` reads stdin.
    #[arg(long)]
    pub chat: Option<String>,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[command(flatten)]
    pub images: ImageArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub draft: DraftArgs,
    /// `text` streams the text; `jsonl` prints one JSON object per streamed result (the last
    /// one, with the stop condition, also carries the generation's `stats`).
    #[arg(long, default_value = "text", value_parser = ["text", "jsonl"])]
    pub output: String,
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
    let template = args.sampling.template()?;
    let template_args = args.sampling.template_args()?;
    crate::stop::StopStrings::new(args.sampling.stop.clone())?;
    let step = args.cache.prefill_step_size()?;
    let (speculation, num_draft_tokens) = args.draft.speculation()?;
    let kit = load(&args.model, &args.cache)?;
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
    let req = GenerateRequest {
        prompt_tokens,
        sampling: args.sampling.overrides(),
        max_tokens: args.sampling.max_tokens,
        stop_strings: args.sampling.stop.clone(),
        ignore_eos: args.sampling.ignore_eos,
        prefill_step_size: step,
        ignore_prompt_cache: false,
        images,
        max_image_size: max_size,
        speculation,
        num_draft_tokens,
    };
    let mut generation = kit.generate_with_progress(req, Box::new(PrefillBar::new(step)))?;
    let cancel = generation.cancel_handle();
    let _ = ctrlc::set_handler(move || cancel.cancel());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // The last result waits for the stats, which arrive once the stream has ended.
    let mut last = None;
    for result in generation.by_ref() {
        let result = result?;
        if args.output == "jsonl" {
            if result.stop_condition.is_some() {
                last = Some(json(&result)?);
                continue;
            }
            let _ = writeln!(out, "{}", json(&result)?);
        } else {
            let _ = write!(out, "{}", result.text);
        }
        let _ = out.flush();
    }
    if let Some(last) = last {
        let stats = generation.stats().map(json).transpose()?;
        // Appended as the last field, so the result's own fields keep their order.
        let line = match (stats, last.strip_suffix('}')) {
            (Some(stats), Some(open)) => format!("{open},\"stats\":{stats}}}"),
            _ => last,
        };
        let _ = writeln!(out, "{line}");
    }
    if args.output == "text" {
        let _ = writeln!(out);
    }
    if let Some(stats) = generation.stats() {
        print_stats(stats);
    }
    Ok(())
}
