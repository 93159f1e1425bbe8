//! What `mlx-engine plugins` shows beyond the plugin list: the state of each registry entry and,
//! per plugin, the types it declares that resolve elsewhere. Both are computed with the same
//! resolution code the model loader uses, so the listing cannot disagree with what a load does.

use std::sync::Arc;

use super::library::LoadedPlugin;
use super::registry::{Entry, Kind};
use super::resolve::{declares, Outcome, Via};
use super::PluginHost;

/// What a registry entry points at, for the listing.
#[derive(Clone, Debug)]
pub enum EntryStatus {
    Installed(Arc<LoadedPlugin>),
    NotInstalled,
    /// The file is there but failed to load.
    Broken {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The plugin loaded but does not declare the entry's type.
    Mismatch(Arc<LoadedPlugin>),
}

impl PluginHost {
    /// What each registry entry points at.
    pub fn registry_status(&self) -> Vec<(Entry, EntryStatus)> {
        self.registry()
            .entries()
            .map(|e| {
                let status = match self.files().iter().find(|f| f.answers_to(&e.plugin)) {
                    None => EntryStatus::NotInstalled,
                    Some(f) => match &f.state {
                        Err(reason) => EntryStatus::Broken { path: f.path.clone(), reason: reason.clone() },
                        Ok(p) if !declares(p, e.kind, &e.model_type) => EntryStatus::Mismatch(Arc::clone(p)),
                        Ok(p) => EntryStatus::Installed(Arc::clone(p)),
                    },
                };
                (e.clone(), status)
            })
            .collect()
    }

    /// For one loaded plugin, the types it declares that resolve elsewhere, each with why
    /// (an earlier folder overrides it, the registry picks another plugin, a conflict).
    pub fn shadowed_types(&self, plugin: &Arc<LoadedPlugin>) -> Vec<String> {
        let mut notes = Vec::new();
        for (kind, types) in [(Kind::Text, &plugin.text_types), (Kind::Vision, &plugin.vision_types)] {
            for t in types {
                match self.try_resolve(kind, t) {
                    Outcome::Found(r) if r.provider.is_plugin(plugin) => {}
                    Outcome::Found(r) => {
                        let why = match &r.via {
                            Via::Registry { location } => format!("chosen by {location}"),
                            _ => "earlier folder".into(),
                        };
                        notes.push(format!("{} `{t}` overridden by {} ({why})", kind.table(), r.provider));
                    }
                    Outcome::Failed(e) => notes.push(format!("{} `{t}` unusable: {e}", kind.table())),
                    Outcome::NotFound { .. } => {}
                }
            }
        }
        notes
    }
}
