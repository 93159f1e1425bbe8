//! `mlx-engine serve`: the OpenAI-compatible HTTP server (see `crate::server`).

use super::common::{load, param, CacheArgs, DraftArgs, ModelArgs};
use crate::error::Result;
use crate::server::scheduler::Limits;
use crate::server::{self, ServeConfig};
use crate::speculative::{Speculation, DEFAULT_NUM_DRAFT_TOKENS};

/// Prefill chunk of the server when `--prefill-step-size` is not given: small enough that a
/// long prompt lets the other rows decode between its chunks.
pub const SERVE_PREFILL_CHUNK: usize = 256;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Speculative decoding, for a request while it decodes alone (a batch of several decodes
    /// plainly); requests may set `num_draft_tokens`.
    #[command(flatten)]
    pub draft: DraftArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port; the address is printed on stdout (`listening on http://...`).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY`, with KEY read from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Rows decoding at once (the batch).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_concurrency: usize,
    /// Requests waiting for a row; beyond it requests get 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// Request bodies larger than this get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// The model id clients pass as `model` (default: the --model argument as given).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    // Cheap checks before the model loads.
    let (speculation, num_draft_tokens) = args.draft.speculation()?;
    if args.max_concurrency == 0 {
        return Err(param("--max-concurrency", "must be at least 1"));
    }
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => return Err(param("--api-key-env", format!("the environment variable `{var}` is not set or empty"))),
        },
    };
    let prefill_chunk = args.cache.prefill_step_size()?.unwrap_or(SERVE_PREFILL_CHUNK);
    // Before the model loads: blocks the heap has grown around by then would stay there.
    server::memory::fix_mmap_threshold();
    let kit = load(&args.model, &args.cache)?;
    args.draft.load_into(&kit)?;
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        model_id: args.served_model_name.clone().unwrap_or_else(|| args.model.model.display().to_string()),
        api_key,
        limits: Limits {
            max_concurrency: args.max_concurrency,
            queue: args.queue,
            prefill_chunk,
            // `--draft-model` loads the kit's draft model, which `Auto` uses.
            speculation: if speculation == Speculation::DraftModel { Speculation::Auto } else { speculation },
            num_draft_tokens: num_draft_tokens.unwrap_or(DEFAULT_NUM_DRAFT_TOKENS),
        },
        max_body_bytes: args.max_body_bytes,
    };
    server::run(kit, config)
}
