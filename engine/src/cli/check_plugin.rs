//! `mlx-engine check-plugin`: the conformance kit (`crate::conformance`) from the command line,
//! one line per check, exit status 1 when any fails.

use std::io::Write as _;
use std::path::PathBuf;

use crate::conformance::{check_plugin, CheckOptions, Status};
use crate::{Error, Result};

/// Arguments of `mlx-engine check-plugin`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckPluginArgs {
    /// The plugin file to check (libNAME.so / libNAME.dylib).
    #[arg(value_name = "PLUGIN")]
    pub plugin: PathBuf,
    /// The model's config.json (its model_type must be one the plugin declares).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The checkpoint: a .safetensors file or a folder of them [default: the config's folder].
    #[arg(long, value_name = "PATH")]
    pub weights: Option<PathBuf>,
    /// A golden recorded with mlx-lm by scripts/plugin-kit/record_golden.py.
    #[arg(long, value_name = "FILE")]
    pub golden: Option<PathBuf>,
    /// Greedy steps that must agree with the golden (each prompt).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub min_steps: usize,
}

pub fn run(args: &CheckPluginArgs) -> Result<()> {
    let report = check_plugin(&CheckOptions {
        plugin: args.plugin.clone(),
        config: args.config.clone(),
        weights: args.weights.clone(),
        golden: args.golden.clone(),
        min_steps: args.min_steps,
    })?;
    let mut out = std::io::stdout().lock();
    for c in &report.checks {
        let mark = match c.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        writeln!(out, "{mark} {}: {}", c.name, c.detail).map_err(super::generate::stdout_error)?;
    }
    let failed = report.checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(Error::Param {
            name: "check-plugin".into(),
            reason: format!("{failed} of {} checks failed for {}", report.checks.len(), args.plugin.display()),
        });
    }
    let skipped = report.checks.iter().filter(|c| c.status == Status::Skip).count();
    writeln!(out, "{} checks passed, {skipped} not applicable", report.checks.len() - skipped)
        .map_err(super::generate::stdout_error)?;
    Ok(())
}
