//! The engine's error type: one enum, grouped by where things went wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An MLX / array operation failed (message from MLX or the plugin API).
    #[error(transparent)]
    Array(#[from] mlx_engine_plugin_api::Error),

    /// A plugin library could not be used; names the file and the reason.
    #[error("plugin {}: {reason}", path.display())]
    Plugin { path: PathBuf, reason: String },

    /// `registry.toml` is malformed; names the file, line and reason.
    #[error("{}:{line}: {reason}", path.display())]
    Registry { path: PathBuf, line: usize, reason: String },

    /// No plugin or built-in provides a model type.
    #[error("no architecture for model type `{model_type}`; available: {available}")]
    UnknownModelType { model_type: String, available: String },

    /// `registry.toml` names a plugin for a model type, the plugin file is in no plugin folder,
    /// and nothing else provides the type.
    #[error("model type `{model_type}` needs plugin `{plugin}` ({location}), which is not installed: no {file} in {searched}")]
    PluginNotInstalled { model_type: String, plugin: String, location: String, file: String, searched: String },

    /// Two plugins in one folder claim a model type and the registry does not decide.
    #[error("model type `{model_type}` is claimed by several plugins in one folder: {files}; add an entry to registry.toml to choose")]
    Conflict { model_type: String, files: String },

    /// A model folder or file is missing something or holds bad data.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },

    /// A request parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    Param { name: String, reason: String },

    /// A tokenizer could not be built or used; names the file (or folder) and the reason.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    /// A chat template failed to compile or render (including `raise_exception` from the
    /// template itself); names where the template came from.
    #[error("chat template {}: {reason}", path.display())]
    ChatTemplate { path: PathBuf, reason: String },

    /// An image could not be read, decoded or prepared; names the image (its file path, or
    /// `data URL` / `image bytes`) and what was expected. (Not `source`: thiserror would take a
    /// field of that name for the error's cause.)
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },

    /// A model could not be downloaded from the Hugging Face hub; names the repository, and the
    /// URL and the hub's answer where there was one.
    #[error("`{repo}` is not a local path, and cannot be downloaded from the Hugging Face hub: {reason}")]
    Download { repo: String, reason: String },

    /// A saved chat conversation (`/load FILE`) is malformed; names the file and the field.
    #[error("conversation {}: {reason}", path.display())]
    Conversation { path: PathBuf, reason: String },

    /// The HTTP server could not start or run (`mlx-engine serve`: binding the address, the
    /// async runtime, the model's scheduler).
    #[error("server: {reason}")]
    Server { reason: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// The user stopped the command (Ctrl-C); what was produced so far has been written.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
