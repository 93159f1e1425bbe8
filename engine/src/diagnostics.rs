//! Warnings for the user: each distinct message once per process. The same condition is met
//! again and again (a registry entry on every resolve, generation_config.json on every
//! request), and a warning repeated on every request is noise that hides the next one.

use std::collections::HashSet;
use std::sync::Mutex;

static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Logs `message` at warn level unless it has been logged before.
pub fn warn_once(message: String) {
    let first = match SEEN.lock() {
        Ok(mut seen) => seen.get_or_insert_with(HashSet::new).insert(message.clone()),
        Err(_) => true,
    };
    if first {
        tracing::warn!("{message}");
    }
}
