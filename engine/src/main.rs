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
    match mlx_engine::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(mlx_engine::cli::exit_code(&e)),
    }
}
