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
    if mlx_engine::cli::launch::joined_a_group() {
        // A rank leaves without exit handlers (see `joined_a_group`), output flushed first.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        unsafe { libc::_exit(i32::from(code)) }
    }
    std::process::ExitCode::from(code)
}
