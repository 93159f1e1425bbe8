//! Which code builds a model type, in the order of ARCHITECTURE.md:
//!
//! 1. a `registry.toml` entry -> the plugin of that name, first match in folder order;
//! 2. else the plugins that declare the type, in the first folder that has any (two there is a
//!    conflict only the registry can settle; a later folder is overridden, not in conflict);
//! 3. else a built-in;
//! 4. (vision only) else the generic VLM fallback (`crate::vision::generic`), unless a registry
//!    entry names a plugin for the type that is not installed: the registry says a dedicated
//!    add-on exists, and its "not installed" error helps more than the fallback's guess;
//! 5. else an error naming the type and listing what is available.
//!
//! A registry entry whose plugin is installed but broken (or does not declare the type) is an
//! error right away: the user asked for that plugin. An entry whose plugin is simply absent
//! falls through to steps 2-3 with a warning, because the shipped registry names plugins that
//! may not be installed and a plugin dropped into a folder should still be usable; if nothing
//! else provides the type, the error says which plugin file the registry wanted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use mlx_engine_plugin_api::{DtypePolicy, DynModel, DynVision, Weights, WeightsFormat};

use super::builtin::{builtins, vision_fallback, BuiltinArch};
use super::folders::library_file_name;
use super::library::LoadedPlugin;
use super::registry::{Entry, Kind};
use super::PluginHost;
use crate::error::{Error, Result};

/// Where the code of a resolved model type lives.
#[derive(Clone)]
pub enum Provider {
    Plugin(Arc<LoadedPlugin>),
    Builtin(&'static BuiltinArch),
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Plugin(p) => write!(f, "plugin `{}` {} ({})", p.name, p.version, p.path.display()),
            Provider::Builtin(b) => write!(f, "built-in `{}`", b.name),
        }
    }
}

impl Provider {
    pub(super) fn is_plugin(&self, p: &Arc<LoadedPlugin>) -> bool {
        matches!(self, Provider::Plugin(q) if Arc::ptr_eq(p, q))
    }
}

/// Which rule chose the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A registry entry, at this `file:line`.
    Registry {
        location: String,
    },
    /// The only plugin in its folder declaring the type.
    Declared,
    Builtin,
    /// The generic VLM fallback (vision only): no add-on claims the type.
    Fallback,
}

/// The answer to "who builds this model type".
#[derive(Clone, Debug)]
pub struct Resolved {
    pub kind: Kind,
    pub model_type: String,
    pub provider: Provider,
    pub via: Via,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}` -> {}", self.kind.table(), self.model_type, self.provider)?;
        match &self.via {
            Via::Registry { location } => write!(f, ", chosen by {location}"),
            Via::Declared => Ok(()),
            Via::Builtin => Ok(()),
            Via::Fallback => write!(f, " (the generic VLM fallback: no add-on claims `{}`)", self.model_type),
        }
    }
}

impl Resolved {
    /// The plugin file, for plugin providers.
    pub fn path(&self) -> Option<&Path> {
        match &self.provider {
            Provider::Plugin(p) => Some(&p.path),
            Provider::Builtin(_) => None,
        }
    }

    /// Builds the text architecture (the resolution must be for [`Kind::Text`]).
    pub fn create_model(
        &self,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynModel>> {
        match &self.provider {
            Provider::Plugin(p) => p.create_model(&self.model_type, config_json, weights, format),
            Provider::Builtin(b) => b.create_model(&self.model_type, config_json, weights, format),
        }
    }

    /// The provider's `config.json` for a GGUF file of this (text) type; `None` when it does not
    /// map GGUF (built-ins never do).
    pub fn gguf_config(&self, gguf_json: &str) -> Result<Option<String>> {
        match &self.provider {
            Provider::Plugin(p) => p.gguf_config(&self.model_type, gguf_json),
            Provider::Builtin(_) => Ok(None),
        }
    }

    /// The provider's dtype policy for each checkpoint tensor name.
    pub fn dtype_policy(&self, names: &[&str]) -> Result<Vec<DtypePolicy>> {
        match &self.provider {
            Provider::Plugin(p) => p.dtype_policy(&self.model_type, names),
            Provider::Builtin(_) => Ok(vec![DtypePolicy::Compute; names.len()]),
        }
    }

    /// Builds the vision add-on (the resolution must be for [`Kind::Vision`]).
    pub fn create_vision(
        &self,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynVision>> {
        match &self.provider {
            Provider::Plugin(p) => p.create_vision(&self.model_type, config_json, weights, format),
            Provider::Builtin(b) => b.create_vision(&self.model_type, config_json, weights, format),
        }
    }
}

/// Result of one lookup before the "nothing found" error is worded (kept separate so listing
/// what *is* available cannot recurse into resolving again).
pub(super) enum Outcome<'a> {
    Found(Resolved),
    Failed(Error),
    NotFound { missing: Option<&'a Entry> },
}

pub(super) fn declares(p: &LoadedPlugin, kind: Kind, model_type: &str) -> bool {
    let types = match kind {
        Kind::Text => &p.text_types,
        Kind::Vision => &p.vision_types,
    };
    types.iter().any(|t| t == model_type)
}

fn join_types(types: &[String]) -> String {
    if types.is_empty() {
        "nothing".into()
    } else {
        types.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
    }
}

impl PluginHost {
    /// The text architecture for `model_type`.
    pub fn resolve_text(&self, model_type: &str) -> Result<Resolved> {
        self.resolve(Kind::Text, model_type)
    }

    /// The vision add-on for `model_type`.
    pub fn resolve_vision(&self, model_type: &str) -> Result<Resolved> {
        self.resolve(Kind::Vision, model_type)
    }

    /// Resolves `model_type` for the lookup `kind`.
    pub fn resolve(&self, kind: Kind, model_type: &str) -> Result<Resolved> {
        match self.try_resolve(kind, model_type) {
            Outcome::Found(r) => {
                tracing::debug!("{} model type `{model_type}` resolved to {}", kind.table(), r.provider);
                let by_registry = matches!(r.via, Via::Registry { .. });
                if let Some(entry) = self.registry().get(kind, model_type).filter(|_| !by_registry) {
                    crate::diagnostics::warn_once(format!(
                        "{}: plugin `{}` for {} model type `{model_type}` is not installed; using {}",
                        self.registry().locate(entry),
                        entry.plugin,
                        kind.table(),
                        r.provider
                    ));
                }
                Ok(r)
            }
            Outcome::Failed(e) => Err(e),
            Outcome::NotFound { missing: Some(entry) } => Err(Error::PluginNotInstalled {
                model_type: model_type.to_string(),
                plugin: entry.plugin.clone(),
                location: self.registry().locate(entry),
                file: library_file_name(&entry.plugin),
                searched: self.searched_folders(),
            }),
            Outcome::NotFound { missing: None } => Err(Error::UnknownModelType {
                model_type: model_type.to_string(),
                available: self.available_text(kind),
            }),
        }
    }

    /// Resolves and builds a text model.
    pub fn create_model(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynModel>> {
        self.resolve_text(model_type)?.create_model(config_json, weights, format)
    }

    /// Resolves and builds a vision add-on.
    pub fn create_vision(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynVision>> {
        self.resolve_vision(model_type)?.create_vision(config_json, weights, format)
    }

    pub(super) fn try_resolve(&self, kind: Kind, model_type: &str) -> Outcome<'_> {
        let mut missing = None;
        if let Some(entry) = self.registry().get(kind, model_type) {
            let location = self.registry().locate(entry);
            match self.files().iter().find(|f| f.answers_to(&entry.plugin)) {
                Some(file) => {
                    return match &file.state {
                        Err(reason) => Outcome::Failed(Error::Plugin {
                            path: file.path.clone(),
                            reason: format!(
                                "{reason} (needed for {} model type `{model_type}` by {location})",
                                kind.table()
                            ),
                        }),
                        Ok(p) if !declares(p, kind, model_type) => Outcome::Failed(Error::Plugin {
                            path: file.path.clone(),
                            reason: format!(
                                "{location} maps {} model type `{model_type}` to plugin `{}`, but it provides only {}",
                                kind.table(),
                                entry.plugin,
                                join_types(match kind {
                                    Kind::Text => &p.text_types,
                                    Kind::Vision => &p.vision_types,
                                })
                            ),
                        }),
                        Ok(p) => Outcome::Found(Resolved {
                            kind,
                            model_type: model_type.to_string(),
                            provider: Provider::Plugin(Arc::clone(p)),
                            via: Via::Registry { location },
                        }),
                    };
                }
                None => missing = Some(entry),
            }
        }
        for folder in 0..self.folders().len() {
            let claimants: Vec<&Arc<LoadedPlugin>> = self
                .files()
                .iter()
                .filter(|f| f.folder == folder)
                .filter_map(|f| f.plugin())
                .filter(|p| declares(p, kind, model_type))
                .collect();
            match claimants.as_slice() {
                [] => continue,
                [p] => {
                    return Outcome::Found(Resolved {
                        kind,
                        model_type: model_type.to_string(),
                        provider: Provider::Plugin(Arc::clone(p)),
                        via: Via::Declared,
                    })
                }
                many => {
                    let files = many
                        .iter()
                        .map(|p| format!("{} (plugin `{}`)", p.path.display(), p.name))
                        .collect::<Vec<_>>()
                        .join(" and ");
                    return Outcome::Failed(Error::Conflict { model_type: model_type.to_string(), files });
                }
            }
        }
        if let Some(b) = builtins().into_iter().find(|b| b.provides(kind, model_type)) {
            return Outcome::Found(Resolved {
                kind,
                model_type: model_type.to_string(),
                provider: Provider::Builtin(b),
                via: Via::Builtin,
            });
        }
        if kind == Kind::Vision && missing.is_none() {
            if let Some(b) = vision_fallback() {
                return Outcome::Found(Resolved {
                    kind,
                    model_type: model_type.to_string(),
                    provider: Provider::Builtin(b),
                    via: Via::Fallback,
                });
            }
        }
        Outcome::NotFound { missing }
    }

    /// Every model type of `kind` that resolves, with its provider, sorted by type.
    pub fn available(&self, kind: Kind) -> Vec<Resolved> {
        let mut types: BTreeMap<String, ()> = BTreeMap::new();
        for e in self.registry().entries().filter(|e| e.kind == kind) {
            types.insert(e.model_type.clone(), ());
        }
        for p in self.plugins() {
            let declared = match kind {
                Kind::Text => &p.text_types,
                Kind::Vision => &p.vision_types,
            };
            for t in declared {
                types.insert(t.clone(), ());
            }
        }
        for b in builtins() {
            for t in b.types(kind) {
                types.insert(t.to_string(), ());
            }
        }
        types
            .keys()
            .filter_map(|t| match self.try_resolve(kind, t) {
                Outcome::Found(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The `available` text of an unknown-type error: what resolves, what the registry wants
    /// but is missing, and a pointer to load errors that might explain the gap.
    fn available_text(&self, kind: Kind) -> String {
        let found = self.available(kind);
        let mut text = if found.is_empty() {
            "none".to_string()
        } else {
            found
                .iter()
                .map(|r| match &r.provider {
                    Provider::Plugin(p) => format!("`{}` (plugin {})", r.model_type, p.name),
                    Provider::Builtin(b) => format!("`{}` (built-in {})", r.model_type, b.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if kind == Kind::Vision {
            text = format!("vision add-ons {text}");
        }
        let missing: Vec<String> = self
            .registry()
            .entries()
            .filter(|e| e.kind == kind && !self.files().iter().any(|f| f.answers_to(&e.plugin)))
            .map(|e| format!("`{}` -> {}", e.model_type, e.plugin))
            .collect();
        if !missing.is_empty() {
            text.push_str(&format!("; in registry.toml but not installed: {}", missing.join(", ")));
        }
        let broken = self.load_errors().count();
        if broken > 0 {
            text.push_str(&format!("; {broken} plugin file(s) could not be loaded (see `mlx-engine plugins`)"));
        }
        if self.folders().is_empty() {
            text.push_str("; no plugin folders are searched");
        }
        text
    }

    fn searched_folders(&self) -> String {
        if self.folders().is_empty() {
            return "any plugin folder (none are configured)".into();
        }
        self.folders().iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}
