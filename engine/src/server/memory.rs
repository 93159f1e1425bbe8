//! Keeping the server's resident memory flat under churn (glibc's allocator).
//!
//! MLX's CPU buffers come from `malloc`. glibc serves a large allocation with `mmap` (returned
//! to the system on `free`) only while it is above a threshold that *rises* to the size of
//! every mmapped block freed, up to 32 MiB. A server frees blocks of ever different sizes (a
//! stacked batch is rebuilt whenever a row joins or leaves, prompts have every length), so
//! the threshold soon sits at 32 MiB and those blocks come from the heap arenas instead, where
//! freed memory stays resident and fragments: 300 requests at 16 concurrent grew resident
//! memory from 1.3 to 5.5 GiB while MLX's live arrays stayed near 1.1 GiB. A fixed threshold
//! keeps blocks above it in `mmap` (one `mmap`/`munmap` per large buffer, small next to the
//! work a buffer of that size takes); `malloc_trim` when the batch empties returns what the
//! heaps hold free.

/// The fixed threshold: blocks of at least this many bytes are mmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Fixes glibc's mmap threshold for the process, unless `MALLOC_MMAP_THRESHOLD_` (glibc's own
/// setting) is set. Returns the threshold set, if any. Best called before the model loads
/// (`serve` does): a heap that has already grown keeps serving large blocks from its free
/// chunks.
pub fn fix_mmap_threshold() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return None;
        }
        // SAFETY: mallopt only changes glibc's allocation policy; it may be called at any time.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } == 1;
        ok.then_some(MMAP_THRESHOLD as usize)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// At most one [`trim`] per this interval while the batch is busy.
pub const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Returns the heaps' free memory to the system. It takes the allocator's locks and walks the
/// free lists (milliseconds), so the scheduler calls it when the batch empties and at most
/// every [`TRIM_INTERVAL`] while rows come and go.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}
