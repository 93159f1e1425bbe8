//! The plugin folders, in search order, and which files in them are plugin candidates.
//!
//! Order (first match wins): every `--plugins DIR`, then `$MLX_ENGINE_PLUGIN_PATH`, then
//! `plugins/` beside the registry.toml in use, then `plugins/` beside the executable (bundled
//! installs), then the build's output folder. User-chosen folders come first so a user can
//! always override what ships with the engine.
//!
//! The build's output folder (`target/<profile>/`, where cargo puts the workspace's plugin
//! cdylibs as `lib<name>.so`) also holds every other artifact of the build. Rather than dlopen
//! everything there (running foreign initialisers and reporting errors for files that never were
//! plugins), only files named after the workspace's plugin crates are considered: their lib
//! names are read from `plugins/*/Cargo.toml` of the workspace the engine was built from. So a
//! stale or broken workspace plugin is still reported, and nothing else is touched.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable with extra plugin folders (OS path-list syntax, like `PATH`).
pub const PLUGIN_PATH_ENV: &str = "MLX_ENGINE_PLUGIN_PATH";

/// Why a folder is searched; shown by `mlx-engine plugins`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--plugins DIR`.
    Cli,
    /// `$MLX_ENGINE_PLUGIN_PATH`.
    Env,
    /// `plugins/` beside the registry.toml in use.
    BesideRegistry,
    /// `plugins/` beside the executable.
    BesideExe,
    /// The cargo output folder the engine was built into.
    Build,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Cli => "--plugins",
            Origin::Env => "$MLX_ENGINE_PLUGIN_PATH",
            Origin::BesideRegistry => "beside registry.toml",
            Origin::BesideExe => "beside the executable",
            Origin::Build => "build output",
        })
    }
}

/// One folder searched for plugins.
#[derive(Clone, Debug)]
pub struct Folder {
    pub path: PathBuf,
    pub origin: Origin,
    /// In the build folder, the only file names considered (see the module docs); `None`
    /// elsewhere: every `*.so` / `*.dylib` is a candidate.
    pub only: Option<Vec<String>>,
}

/// Options that decide which folders are searched.
#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// `--plugins` folders, searched first, in the order given.
    pub cli: Vec<PathBuf>,
    /// Read `$MLX_ENGINE_PLUGIN_PATH`.
    pub env: bool,
    /// The registry.toml in use (its `plugins/` subfolder is searched). `None` for the
    /// embedded registry, and for the workspace's own: its `plugins/` holds the plugin crates'
    /// sources, whose builds are found through the build folder instead.
    pub registry_file: Option<PathBuf>,
    /// Search `plugins/` beside the executable and the build's output folder.
    pub defaults: bool,
}

/// The file name of plugin `name` on this platform (`libname.so`, `libname.dylib`).
pub fn library_file_name(name: &str) -> String {
    format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// The plugin name a file name stands for (`libtiny.so` -> `tiny`), if it is a library name.
pub fn plugin_name_of(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(std::env::consts::DLL_SUFFIX)?;
    Some(stem.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(stem))
}

/// The folders to search, in order, without duplicates (the first mention of a folder keeps its
/// place) and without folders that do not exist, except `--plugins` ones: a folder the user
/// named is kept so the listing can say it is missing.
pub fn search_folders(opts: &FolderOptions) -> Vec<Folder> {
    let mut out: Vec<Folder> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut push = |path: PathBuf, origin: Origin, only: Option<Vec<String>>, keep_missing: bool| {
        if !keep_missing && !path.is_dir() {
            return;
        }
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.insert(key) {
            out.push(Folder { path, origin, only });
        }
    };
    for p in &opts.cli {
        push(p.clone(), Origin::Cli, None, true);
    }
    if opts.env {
        if let Some(list) = std::env::var_os(PLUGIN_PATH_ENV) {
            for p in std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()) {
                if !p.is_dir() {
                    crate::diagnostics::warn_once(format!(
                        "${PLUGIN_PATH_ENV}: {} is not a folder; skipped",
                        p.display()
                    ));
                }
                push(p, Origin::Env, None, false);
            }
        }
    }
    if let Some(dir) = opts.registry_file.as_deref().and_then(Path::parent) {
        push(dir.join("plugins"), Origin::BesideRegistry, None, false);
    }
    if opts.defaults {
        if let Some(dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
            push(dir.join("plugins"), Origin::BesideExe, None, false);
        }
        if let Some(dir) = build_output_folder() {
            push(dir, Origin::Build, Some(workspace_plugin_files()), false);
        }
    }
    out
}

/// `target/<profile>/` of the build that compiled this engine.
///
/// Derived from the build script's `OUT_DIR` (`target/<profile>/build/mlx-engine-<hash>/out`),
/// which is exact for the engine binary, tests and examples alike, unlike guessing from the
/// executable's location (`deps/` for tests, anywhere once installed).
pub fn build_output_folder() -> Option<PathBuf> {
    let out_dir = Path::new(env!("OUT_DIR"));
    let build = out_dir.parent()?.parent()?;
    if build.file_name()? != "build" {
        return None;
    }
    let profile = build.parent()?;
    profile.is_dir().then(|| profile.to_path_buf())
}

/// File names of the workspace's plugin crates (`plugins/*/Cargo.toml`, `[lib] name` or the
/// package name with `-` as `_`, as cargo names the cdylib).
pub fn workspace_plugin_files() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugins");
    let root = root.canonicalize().unwrap_or(root);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| crate_lib_name(&e.path().join("Cargo.toml")))
        .map(|n| library_file_name(&n))
        .collect();
    names.sort();
    names
}

/// The library name a crate manifest produces, if it can be read.
fn crate_lib_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let from_lib = table.get("lib").and_then(|l| l.get("name")).and_then(|n| n.as_str());
    let name = match from_lib {
        Some(n) => n.to_string(),
        None => table.get("package")?.get("name")?.as_str()?.to_string(),
    };
    Some(name.replace('-', "_"))
}

/// Plugin candidates in one folder, sorted by file name so results do not depend on the order
/// the file system lists them in. A folder that cannot be read yields an error for the listing.
pub fn candidates(folder: &Folder) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder.path)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // `is_file` follows symlinks: a link to a library counts, a folder does not.
        .filter(|p| {
            if p.is_symlink() && !p.exists() && folder.only.is_none() {
                crate::diagnostics::warn_once(format!(
                    "plugin folder {}: {} is a broken symbolic link; skipped",
                    folder.path.display(),
                    p.display()
                ));
            }
            p.is_file()
        })
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            match &folder.only {
                Some(only) => only.iter().any(|o| o == name),
                None => plugin_name_of(name).is_some_and(|n| !n.is_empty()),
            }
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let f = library_file_name("tiny");
        assert_eq!(plugin_name_of(&f), Some("tiny"));
        assert_eq!(plugin_name_of("README.md"), None);
    }

    #[test]
    fn duplicate_and_missing_folders() {
        let d = std::env::temp_dir();
        let opts = FolderOptions {
            cli: vec![d.clone(), d.clone(), d.join("definitely-missing-mlx-engine")],
            ..Default::default()
        };
        let f = search_folders(&opts);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].origin, Origin::Cli);
    }
}
