//! The plugin host: finds plugin libraries, checks and loads them, and answers "which code
//! builds model type X" for the model loader.
//!
//! - [`registry`]: `registry.toml` (model type -> plugin name), and which file is in use.
//! - [`folders`]: the plugin folders in search order and the candidate files in each.
//! - [`library`]: loading and checking one plugin file; model objects that pin their library.
//! - [`builtin`]: architectures compiled in, registered with `inventory`.
//! - [`resolve`]: the resolution order of ARCHITECTURE.md.
//! - [`listing`]: registry-entry states and overrides for `mlx-engine plugins`.
//!
//! Every candidate file is loaded when the host is built, and a file that fails is recorded
//! rather than fatal: one broken plugin must not take down models that do not need it, and the
//! listing can show every problem at once. The error surfaces again, naming the file, when a
//! lookup would have needed that plugin.

pub mod builtin;
pub mod folders;
pub mod library;
pub mod listing;
pub mod registry;
pub mod resolve;

use std::path::PathBuf;
use std::sync::Arc;

pub use builtin::BuiltinArch;
pub use folders::{Folder, Origin};
pub use library::LoadedPlugin;
pub use listing::EntryStatus;
pub use registry::{Kind, Registry, RegistrySource};
pub use resolve::{Provider, Resolved, Via};

use crate::error::Result;

/// What the host searches. [`HostOptions::standard`] is what the CLI uses;
/// [`HostOptions::isolated`] ignores the environment and the default locations, for embedders
/// and tests that must not pick up whatever happens to be installed.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// `--plugins` folders, searched first.
    pub plugin_dirs: Vec<PathBuf>,
    /// `--registry FILE`.
    pub registry: Option<PathBuf>,
    /// Also use `$MLX_ENGINE_PLUGIN_PATH`, `$MLX_ENGINE_REGISTRY`, the registry and plugins
    /// beside the executable, the workspace registry, the embedded registry and the build's
    /// plugin folder.
    pub defaults: bool,
}

impl HostOptions {
    /// The full search of ARCHITECTURE.md, with the CLI's folders and registry first.
    pub fn standard(plugin_dirs: Vec<PathBuf>, registry: Option<PathBuf>) -> HostOptions {
        HostOptions { plugin_dirs, registry, defaults: true }
    }

    /// Only the given folders and registry (none: an empty registry).
    pub fn isolated(plugin_dirs: Vec<PathBuf>, registry: Option<PathBuf>) -> HostOptions {
        HostOptions { plugin_dirs, registry, defaults: false }
    }
}

/// One candidate file and what became of it.
#[derive(Debug)]
pub struct PluginFile {
    /// Index into [`PluginHost::folders`].
    pub folder: usize,
    pub path: PathBuf,
    /// The plugin, or why it could not be loaded.
    pub state: Result<Arc<LoadedPlugin>, String>,
}

impl PluginFile {
    pub fn plugin(&self) -> Option<&Arc<LoadedPlugin>> {
        self.state.as_ref().ok()
    }

    /// Whether this file is plugin `name`: by file name (`lib<name>.so`, what the registry
    /// means) or by the name its descriptor declares (a renamed file still answers to it).
    pub fn answers_to(&self, name: &str) -> bool {
        let by_file =
            self.path.file_name().and_then(|n| n.to_str()).and_then(folders::plugin_name_of).is_some_and(|n| n == name);
        by_file || self.plugin().is_some_and(|p| p.name == name)
    }
}

/// The loaded plugins, registry and built-ins of one engine instance.
#[derive(Debug)]
pub struct PluginHost {
    registry: Registry,
    folders: Vec<Folder>,
    /// Problems with whole folders (a `--plugins` folder that is missing or unreadable).
    folder_errors: Vec<(usize, String)>,
    /// Every candidate file, in search order (folder by folder, by file name within one).
    files: Vec<PluginFile>,
}

impl PluginHost {
    /// Reads the registry and loads every plugin in the folders. Only a malformed or missing
    /// explicitly-named registry is an error; bad plugin files are recorded.
    pub fn new(opts: &HostOptions) -> Result<PluginHost> {
        let registry = if opts.defaults {
            Registry::discover(opts.registry.as_deref())?
        } else {
            match &opts.registry {
                Some(p) => Registry::load(p, "--registry")?,
                None => Registry::empty(),
            }
        };
        let folder_opts = folders::FolderOptions {
            cli: opts.plugin_dirs.clone(),
            env: opts.defaults,
            registry_file: match &registry.source {
                RegistrySource::File { found_by, .. } if *found_by == registry::FOUND_IN_WORKSPACE => None,
                source => source.path().map(PathBuf::from),
            },
            defaults: opts.defaults,
        };
        let folders = folders::search_folders(&folder_opts);
        if let Some(f) = folders.iter().find(|f| f.origin == folders::Origin::Cli && !f.path.is_dir()) {
            return Err(crate::Error::Param {
                name: "plugins".into(),
                reason: format!("{} is not a folder", f.path.display()),
            });
        }
        let mut folder_errors = Vec::new();
        let mut files = Vec::new();
        for (i, folder) in folders.iter().enumerate() {
            let candidates = match folders::candidates(folder) {
                Ok(c) => c,
                Err(e) => {
                    folder_errors.push((i, format!("cannot read folder: {e}")));
                    continue;
                }
            };
            for path in candidates {
                let state = LoadedPlugin::load(&path).map(Arc::new).map_err(|e| match e {
                    crate::Error::Plugin { reason, .. } => reason,
                    other => other.to_string(),
                });
                if let Err(reason) = &state {
                    crate::diagnostics::warn_once(format!("plugin {}: {reason}", path.display()));
                }
                files.push(PluginFile { folder: i, path, state });
            }
        }
        Ok(PluginHost { registry, folders, folder_errors, files })
    }

    /// The host the CLI and library users get by default: the full search, no extra folders.
    pub fn discover() -> Result<PluginHost> {
        PluginHost::new(&HostOptions::standard(Vec::new(), None))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn folders(&self) -> &[Folder] {
        &self.folders
    }

    /// Problems with whole folders, by folder index.
    pub fn folder_errors(&self) -> &[(usize, String)] {
        &self.folder_errors
    }

    /// Every candidate file in search order, loaded or not.
    pub fn files(&self) -> &[PluginFile] {
        &self.files
    }

    /// The plugins that loaded, in search order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.files.iter().filter_map(PluginFile::plugin)
    }

    /// Files that could not be loaded, with the reason.
    pub fn load_errors(&self) -> impl Iterator<Item = (&PathBuf, &str)> {
        self.files.iter().filter_map(|f| f.state.as_ref().err().map(|r| (&f.path, r.as_str())))
    }
}

// The host is shared by the model workers of one engine; keep it thread-safe by construction.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PluginHost>();
    assert_send_sync::<Resolved>();
};
