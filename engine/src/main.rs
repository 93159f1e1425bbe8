use clap::Parser;

fn main() -> std::process::ExitCode {
    // A closed stdout (`| head`) ends the process as it does `cat`, instead of every write
    // failing while the model keeps computing.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = mlx_engine::cli::Cli::parse();
    cli.init_logging();
    let code = match mlx_engine::cli::run(cli) {
        Ok(()) => 0,
        Err(e) => mlx_engine::cli::exit_code(&e),
    };
    // Leave without exit handlers, output flushed first. Everything of ours is dropped by now
    // (the model's worker thread joined inside `run`); what is left are the C++ and C libraries'
    // handlers, and OpenBLAS's thread shutdown among them can wait for good on a worker that
    // never wakes. Seen both in ranks whose ring backend still held its threads (see
    // `launch::joined_a_group`) and, rarely, after a plain `generate` ended early on an output
    // error: a finished process must not turn into a hung one.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `fflush(NULL)` flushes every C stdio stream; `_exit` ends the process at once and
    // nothing runs after it.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(i32::from(code))
    }
}
