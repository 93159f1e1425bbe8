//! The plugin-api error type, shared by plugins and the engine's array layer.

/// Errors raised by array operations, weight loading and plugin glue.
///
/// Messages say what was expected and what was found; MLX's own message is kept verbatim.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    /// An MLX operation failed (its C++ exception text, as MLX wrote it).
    #[error("{0}")]
    Mlx(String),
    /// The ABI contract was broken (no ops table, table too small, bad code).
    #[error("plugin ABI: {0}")]
    Abi(String),
    /// Reading elements with the wrong type or a wrong element count.
    #[error("array: {0}")]
    Array(String),
    /// The model configuration is missing a key or has a bad value.
    #[error("config: {0}")]
    Config(String),
    /// A weight is missing or has the wrong shape or dtype.
    #[error("weights: {0}")]
    Weights(String),
    /// Architecture code panicked (in a plugin or a built-in); the request fails, the process
    /// continues.
    #[error("panicked: {0}")]
    Panic(String),
    /// An error reported across the plugin boundary (from the engine or from a plugin).
    #[error("{0}")]
    Boundary(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Turns a caught panic payload into an error message.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Error {
        let msg = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        Error::Panic(msg)
    }
}
