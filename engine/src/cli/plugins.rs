//! `mlx-engine plugins`: what the engine would load and why, so a user whose model type is not
//! found can see every folder searched, every plugin and its types, every file that failed to
//! load (with the reason), and whether each registry entry's plugin is installed.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::plugin_host::EntryStatus;
use crate::plugin_host::{builtin, HostOptions, Kind, PluginHost};
use crate::Result;

/// Arguments of `mlx-engine plugins`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PluginsArgs {
    /// A folder with plugin libraries, searched before all others (repeatable).
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
    /// The registry.toml to use instead of $MLX_ENGINE_REGISTRY / the default one.
    #[arg(long, value_name = "FILE")]
    pub registry: Option<PathBuf>,
}

/// The plugin host for the CLI's `--plugins` / `--registry` options (every subcommand that
/// loads a model uses the same rules).
pub fn host_from_args(plugins: &[PathBuf], registry: Option<&std::path::Path>) -> Result<PluginHost> {
    PluginHost::new(&HostOptions::standard(plugins.to_vec(), registry.map(PathBuf::from)))
}

/// Prints the listing to stdout.
pub fn run(args: &PluginsArgs) -> Result<()> {
    let host = host_from_args(&args.plugins, args.registry.as_deref())?;
    {
        use std::io::Write as _;
        write!(std::io::stdout(), "{}", render(&host)).map_err(super::generate::stdout_error)?;
    }
    Ok(())
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// Left-aligned columns, each as wide as its widest cell.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "  {}", line.trim_end());
    }
}

/// The full listing as text (kept separate from printing so tests can check it).
pub fn render(host: &PluginHost) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Registry: {}", host.registry().source);

    let _ = writeln!(out, "\nPlugin folders (searched in this order, first match wins):");
    if host.folders().is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (i, f) in host.folders().iter().enumerate() {
        let mut line = format!("  {}. {}  [{}]", i + 1, f.path.display(), f.origin);
        if let Some(only) = &f.only {
            let _ =
                write!(line, " only: {}", if only.is_empty() { "(no plugin crates)".into() } else { only.join(", ") });
        }
        if let Some((_, e)) = host.folder_errors().iter().find(|(fi, _)| *fi == i) {
            let _ = write!(line, "  ({e})");
        }
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(out, "\nPlugins:");
    let plugins: Vec<_> = host.plugins().collect();
    if plugins.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let mut rows =
            vec![["NAME", "VERSION", "ABI", "MODEL TYPES", "VISION ADD-ONS", "FILE"].map(String::from).to_vec()];
        let mut notes = Vec::new();
        for p in &plugins {
            rows.push(vec![
                p.name.clone(),
                p.version.clone(),
                format!("{}.{}", p.abi.0, p.abi.1),
                list_or_dash(&p.text_types),
                list_or_dash(&p.vision_types),
                p.path.display().to_string(),
            ]);
            for n in host.shadowed_types(p) {
                notes.push(format!("{}: {n}", p.path.display()));
            }
        }
        table(&mut out, &rows);
        for n in notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }

    let errors: Vec<_> = host.load_errors().collect();
    let _ = writeln!(out, "\nLoad errors:");
    if errors.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (path, reason) in errors {
        let _ = writeln!(out, "  {}: {reason}", path.display());
    }

    let _ = writeln!(out, "\nRegistry entries:");
    let status = host.registry_status();
    if status.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let rows: Vec<Vec<String>> = status
            .iter()
            .map(|(e, s)| {
                let state = match s {
                    EntryStatus::Installed(p) => format!("installed: {}", p.path.display()),
                    EntryStatus::NotInstalled => "not installed".into(),
                    EntryStatus::Broken { path, .. } => format!("load error: {}", path.display()),
                    EntryStatus::Mismatch(p) => {
                        format!("{} does not declare `{}`", p.path.display(), e.model_type)
                    }
                };
                vec![format!("[{}]", e.kind.table()), e.model_type.clone(), format!("-> {}", e.plugin), state]
            })
            .collect();
        table(&mut out, &rows);
    }

    let _ = writeln!(out, "\nBuilt-in architectures:");
    let builtins = builtin::builtins();
    if builtins.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for b in builtins {
        let text: Vec<String> = b.types(Kind::Text).iter().map(|s| s.to_string()).collect();
        let mut vision: Vec<String> = b.types(Kind::Vision).iter().map(|s| s.to_string()).collect();
        if b.fallback && b.vision.is_some() {
            vision.push("any other type with a vision_config (the generic VLM fallback)".into());
        }
        let _ = writeln!(
            out,
            "  {}  model types: {}  vision add-ons: {}",
            b.name,
            list_or_dash(&text),
            list_or_dash(&vision)
        );
    }
    out
}
