//! Ctrl-C for the command line. The first press stops the running generation (through its
//! cancel handle: the prefill stops within a layer, decoding within a token) and the command
//! then exits with 130; with nothing running (loading a model, waiting at the chat prompt) or
//! on a second press, the process exits with 130 at once.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::model_kit::CancelHandle;

/// The exit code of a process stopped by SIGINT (128 + 2), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

static PRESSES: AtomicUsize = AtomicUsize::new(0);
static RUNNING: Mutex<Option<CancelHandle>> = Mutex::new(None);

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let first = PRESSES.fetch_add(1, Ordering::SeqCst) == 0;
            let running = RUNNING.lock().ok().and_then(|g| g.clone());
            match running {
                Some(handle) if first => handle.cancel(),
                _ => exit_now(),
            }
        });
    });
}

/// Leaves without running destructors or atexit handlers: the model's worker thread may be
/// inside MLX, and tearing MLX down under it could turn a clean 130 into a crash.
fn exit_now() -> ! {
    let _ = std::io::stdout().flush();
    eprintln!();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process immediately; nothing runs after it.
    unsafe { libc::_exit(EXIT_INTERRUPTED) }
}

/// Makes `handle` the generation the next Ctrl-C stops, until the guard is dropped.
pub fn watch(handle: CancelHandle) -> Watch {
    if let Ok(mut g) = RUNNING.lock() {
        *g = Some(handle);
    }
    Watch
}

pub struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut g) = RUNNING.lock() {
            *g = None;
        }
    }
}

/// Whether Ctrl-C was pressed since the last [`reset`].
pub fn pressed() -> bool {
    PRESSES.load(Ordering::SeqCst) > 0
}

/// Forgets earlier presses (the chat's next turn starts afresh).
pub fn reset() {
    PRESSES.store(0, Ordering::SeqCst);
}
