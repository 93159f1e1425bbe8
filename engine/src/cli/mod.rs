//! The `mlx-engine` command line: thin layers over the library API.

pub mod bench;
pub mod bench_speculative;
pub mod chat;
pub mod common;
pub mod forward;
pub mod generate;
pub mod plugins;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mlx-engine", version, about = "LLM inference on MLX with architecture plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
}

/// Runs the command; the binary maps an error to a message and a non-zero exit.
pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Plugins(a) => plugins::run(&a),
        Command::Forward(a) => forward::run(&a),
        Command::Bench(a) => bench::run_bench(&a),
    }
}
