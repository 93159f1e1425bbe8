//! Shape discovery: how the conformance kit (`mlx-engine check-plugin` without a checkpoint)
//! learns which tensors an architecture needs, from the architecture's own loading code.
//!
//! The engine asks by passing a weights set that holds only [`DECLARE_MARKER`]. The factory
//! then runs `sanitize` and `new` on no weights while this thread records every tensor the
//! model takes with a shape ([`Weights::take_shaped`], which every `nn` loader uses), handing
//! zeros back so construction proceeds, and answers with an error whose message carries the
//! list after [`DECLARED_PREFIX`] as JSON `[[name, [dims..]], ..]`. The kit then writes random
//! tensors of those shapes and builds the model for real. No ABI entry is needed: the request
//! and the answer ride on what every ABI version already passes.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::traits::Weights;

/// The tensor name that asks a factory for its declared shapes instead of a model.
pub const DECLARE_MARKER: &str = "\u{1}mlx-engine:declare-shapes";
/// What precedes the JSON list in the factory's answer.
pub const DECLARED_PREFIX: &str = "declared tensor shapes: ";

/// Tensor names with their shapes, in the order the model took them.
pub type Declared = Vec<(String, Vec<i32>)>;

thread_local! {
    static RECORD: RefCell<Option<Declared>> = const { RefCell::new(None) };
}

/// Whether this thread is recording; if so, records `name` with `shape`.
pub(crate) fn record(name: &str, shape: &[i32]) -> bool {
    RECORD.with(|r| match r.borrow_mut().as_mut() {
        Some(list) => {
            list.push((name.to_string(), shape.to_vec()));
            true
        }
        None => false,
    })
}

pub(crate) fn recording() -> bool {
    RECORD.with(|r| r.borrow().is_some())
}

/// Takes the marker out of `weights`: true when the engine asked for declared shapes.
pub(crate) fn requested(weights: &mut Weights) -> bool {
    weights.remove(DECLARE_MARKER).is_some()
}

/// Runs `build` while recording and turns what it took into the answer: an error carrying
/// the list (or `build`'s own error); the model built from zeros is dropped.
pub(crate) fn answer(build: impl FnOnce() -> Result<()>) -> Error {
    /// Ends the recording even if `build` panics, so a later real load on this thread is
    /// never handed zeros for a missing tensor.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            RECORD.with(|r| r.borrow_mut().take());
        }
    }
    RECORD.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let stop = Stop;
    let built = build();
    let list = RECORD.with(|r| r.borrow_mut().take()).unwrap_or_default();
    drop(stop);
    if let Err(e) = built {
        return e;
    }
    match serde_json::to_string(&list) {
        Ok(json) => Error::Abi(format!("{DECLARED_PREFIX}{json}")),
        Err(e) => Error::Abi(format!("cannot encode declared shapes: {e}")),
    }
}

/// The declared shapes in an error message from [`answer`] (after any prefixes the host added).
pub fn parse_declared(message: &str) -> Option<Declared> {
    let at = message.find(DECLARED_PREFIX)?;
    serde_json::from_str(&message[at + DECLARED_PREFIX.len()..]).ok()
}
