//! The `mlx-engine` command line: thin layers over the library API.

pub mod bench;
pub mod bench_speculative;
pub mod bench_speed;
pub mod chat;
pub mod chat_commands;
pub mod chat_input;
pub mod chat_ranks;
pub mod check_plugin;
pub mod common;
pub mod constraint_args;
pub mod forward;
pub mod generate;
pub mod interrupt;
pub mod launch;
pub mod new_plugin;
pub mod plugins;
pub mod serve;

use clap::{Parser, Subcommand};

/// `println!` that returns the write error (a full disk, a closed pipe) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(|e| crate::Error::Io { path: "stdout".into(), source: e })?
    }};
}
pub(crate) use outln;

#[derive(Parser)]
#[command(name = "mlx-engine", version, about = "LLM inference on MLX with architecture plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print errors only (no warnings).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log output on stderr: -v info, -vv debug. MLX_ENGINE_LOG (a tracing filter such as
    /// `mlx_engine=debug`) overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Cli {
    /// Logs to stderr: warnings by default, without colour unless stderr is a terminal.
    pub fn init_logging(&self) {
        use std::io::IsTerminal;
        // The server's request log is what it is run for: on by default.
        let quiet_default = if matches!(self.command, Command::Serve(_)) { "info" } else { "warn" };
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (_, 0) => quiet_default,
            (_, 1) => "info",
            _ => "debug",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_env("MLX_ENGINE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .without_time()
            .with_target(false)
            .try_init();
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt or a chat message, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// An interactive chat that keeps the conversation (`/reset` starts over).
    Chat(chat::ChatArgs),
    /// List the plugins found in the plugin folders, their model types and load errors.
    Plugins(plugins::PluginsArgs),
    /// Run one forward pass over token ids and print the most likely next tokens.
    Forward(forward::ForwardArgs),
    /// Measure time to first token with and without the prompt cache, peak memory vs prompt
    /// length with and without KV quantization, and decoding with and without speculation.
    Bench(bench::BenchArgs),
    /// Check a plugin file against a checkpoint (and a golden recorded with mlx-lm): shapes,
    /// cached decode, caches, quantized weights, error containment (docs/plugin-authoring.md).
    CheckPlugin(check_plugin::CheckPluginArgs),
    /// Write a new out-of-tree plugin crate (from the llama or gemma3 plugin) with a
    /// conformance test.
    NewPlugin(new_plugin::NewPluginArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions, completions,
    /// models, health) with continuous batching.
    Serve(serve::ServeArgs),
    /// Run an mlx-engine command as N tensor-parallel ranks on this machine (MLX's ring
    /// backend, set up as `mlx.launch` does): `launch -n 2 -- generate -m DIR -p TEXT`.
    Launch(launch::LaunchArgs),
}

/// Runs the command; the binary maps an error to a message and a non-zero exit.
pub fn run(cli: Cli) -> crate::Result<()> {
    // The server handles SIGINT and SIGTERM itself (graceful shutdown).
    if let Command::Serve(a) = &cli.command {
        launch::refuse_ranks("serve")?;
        return serve::run(a);
    }
    interrupt::install();
    match cli.command {
        Command::Generate(a) => generate::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Plugins(a) => plugins::run(&a),
        Command::Forward(a) => forward::run(&a),
        Command::Bench(a) => bench::run_bench(&a),
        Command::CheckPlugin(a) => check_plugin::run(&a),
        Command::NewPlugin(a) => new_plugin::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Launch(a) => launch::run(&a),
    }
}

/// Reports `e` on stderr (unless the user caused it) and gives the exit code: 130 after Ctrl-C,
/// 141 (as if killed by SIGPIPE) when stdout's reader went away, 1 otherwise.
pub fn exit_code(e: &crate::Error) -> u8 {
    match e {
        crate::Error::Interrupted => interrupt::EXIT_INTERRUPTED as u8,
        crate::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe => 141,
        e => {
            eprintln!("error: {e}");
            1
        }
    }
}
