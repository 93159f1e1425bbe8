//! `mlx-engine launch`: starts the ranks of a tensor-parallel run on this machine, setting up
//! what `mlx.launch --backend ring` sets up (a hostfile in `MLX_HOSTFILE`, `MLX_RANK` per
//! process), so the same ranks can be started by `mlx.launch` itself across machines
//! (`docs/distributed.md`). Also the helpers `generate --distributed` uses.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlx_engine_plugin_api::distributed::{all_sum, Backend, Group};
use mlx_engine_plugin_api::Array;

use super::common::param;
use super::interrupt;
use crate::distributed::Split;
use crate::error::{Error, Result};
use crate::model_kit::CancelHandle;

/// The environment variable `generate --distributed` defaults to (set by `launch`).
pub const BACKEND_ENV: &str = "MLX_ENGINE_DISTRIBUTED";

/// How long the other ranks get to notice a failed rank and end on their own (MLX's ring
/// backend fails their next collective within about a second) before they are killed.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Comma-separated IP addresses, one per rank (as `mlx.launch --hosts`); every one must be
    /// an address of this machine, since the ranks run here. Default: `-n` times 127.0.0.1.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// The number of ranks on 127.0.0.1 (when --hosts is not given).
    #[arg(short = 'n', long, default_value_t = 2)]
    pub ranks: usize,
    /// MLX's distributed backend (ring: TCP between the hosts; the one the CPU build carries).
    #[arg(long, default_value = "ring", value_parser = ["ring"])]
    pub backend: String,
    /// Rank i listens on this port + i (as `mlx.launch --starting-port`).
    #[arg(short = 'p', long, default_value_t = 32323)]
    pub starting_port: u16,
    /// Ask MLX's ring backend to log its connections (MLX_RING_VERBOSE=1).
    #[arg(long)]
    pub ring_verbose: bool,
    /// The mlx-engine command every rank runs, after `--` (e.g. `generate -m DIR -p TEXT`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The options of a command that can run as one rank of a group (`generate`, `chat`).
#[derive(clap::Args, Clone, Debug)]
pub struct DistributedArgs {
    /// Run as one rank of a tensor-parallel group over MLX's distributed backend BACKEND (any,
    /// ring, mpi, nccl, jaccl), started by `mlx-engine launch` or `mlx.launch`; default: the
    /// MLX_ENGINE_DISTRIBUTED environment variable. Rank 0 prints; the others stay silent.
    #[arg(long, value_name = "BACKEND")]
    pub distributed: Option<String>,
    /// How the model is split over the ranks: `tensor` (each rank keeps its share of every
    /// layer's heads and features) or `pipeline` (each rank keeps a contiguous slice of the
    /// layers, rank 0 the first; for models too large for the ranks' devices even when
    /// sharded). Needs --distributed.
    #[arg(long, value_name = "HOW", default_value = "tensor", value_parser = Split::NAMES)]
    pub split: String,
}

impl DistributedArgs {
    /// The group asked for (joining it), or `None` to run alone; with how to split the model.
    pub fn group(&self) -> Result<(Option<Group>, Split)> {
        let split = Split::parse(&self.split)?;
        let group = group_from(self.distributed.as_deref())?;
        if group.is_none() && split != Split::Tensor {
            return Err(param("split", "a split needs ranks: pass --distributed BACKEND (or run under `launch`)"));
        }
        Ok((group, split))
    }
}

/// Set once this process joined a group (see [`joined_a_group`]).
static JOINED: AtomicBool = AtomicBool::new(false);

/// Whether this process joined a distributed group. Such a process must leave with `_exit`:
/// seen here, its exit handlers can hang for good (OpenBLAS's thread shutdown waits on a worker
/// that never wakes while MLX's ring backend still holds its sockets and threads), which would
/// turn a finished rank into a hung one.
pub fn joined_a_group() -> bool {
    JOINED.load(Ordering::SeqCst)
}

/// The group `generate --distributed BACKEND` (or [`BACKEND_ENV`]) asks for; `None` without.
pub fn group_from(flag: Option<&str>) -> Result<Option<Group>> {
    let env = std::env::var(BACKEND_ENV).ok().filter(|v| !v.is_empty());
    let Some(name) = flag.map(str::to_string).or(env) else { return Ok(None) };
    let backend = Backend::parse(&name).map_err(|e| param("distributed", e.to_string()))?;
    // A write to the socket of a peer that died must fail as an error MLX reports ("connection
    // to a peer was lost"), not kill this rank with SIGPIPE (which `main` restores for stdout's
    // sake; a closed stdout still ends the command, as a BrokenPipe error).
    #[cfg(unix)]
    // SAFETY: changing a signal's disposition; no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let group = crate::distributed::init(backend)?;
    JOINED.store(true, Ordering::SeqCst);
    tracing::info!("rank {} of {} ({} backend)", group.rank(), group.size(), backend.name());
    Ok(Some(group))
}

/// The seed every rank samples with: `seed` when given (the same on every rank, as they run
/// one command line), else one rank 0 draws, summed with the others' zeros.
pub fn shared_seed(group: &Group, seed: Option<u64>) -> Result<u64> {
    if let Some(s) = seed {
        return Ok(s);
    }
    let mine = if group.rank() == 0 { drawn_seed() } else { 0 };
    let halves = Array::from_slice(&[mine as u32, (mine >> 32) as u32], &[2])?;
    let v = all_sum(&halves, group)?.to_vec::<u32>()?;
    match v.as_slice() {
        [lo, hi] => Ok(u64::from(*lo) | (u64::from(*hi) << 32)),
        _ => Err(param("seed", "the shared seed came back with the wrong size")),
    }
}

/// A seed from the clock and the process id (not cryptographic; sampling needs none).
pub fn drawn_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64's finaliser, so close clocks give unrelated seeds.
    let mut z = mixed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `mlx.launch`'s ring hostfile: one list of `ip:port` per rank, ports counting up.
pub fn ring_hostfile(hosts: &[String], starting_port: u16) -> Result<String> {
    let entries = hosts
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let port = u16::try_from(usize::from(starting_port) + i)
                .map_err(|_| param("starting-port", format!("{starting_port} + {i} is not a port")))?;
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(param("hosts", format!("`{ip}` is not an IP address (the ring backend needs IPs)")));
            }
            Ok(serde_json::json!([format!("{ip}:{port}")]))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(entries).to_string())
}

/// Removes the hostfile when the launch ends, however it ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The commands that run as ranks of a group.
pub const RANK_COMMANDS: [&str; 2] = ["generate", "chat"];

/// Fails when this process was started as a rank ([`BACKEND_ENV`], as `launch` sets it) to run
/// `command`, which cannot run as one: each rank would serve the whole model on its own.
pub fn refuse_ranks(command: &str) -> Result<()> {
    match std::env::var(BACKEND_ENV) {
        Ok(v) if !v.is_empty() => Err(param(
            "distributed",
            format!(
                "`{command}` does not run on several ranks yet ({BACKEND_ENV}={v} is set, as `mlx-engine launch` \
                 sets it): only {} do; run `{command}` without launch",
                RANK_COMMANDS.join(" and ")
            ),
        )),
        _ => Ok(()),
    }
}

pub fn run(args: &LaunchArgs) -> Result<()> {
    // Checked here too, so no rank starts (and loads a model) for a command that would fail.
    let first = args.command.first().map(String::as_str).unwrap_or_default();
    if !RANK_COMMANDS.contains(&first) {
        return Err(param(
            "launch",
            format!("`{first}` does not run on several ranks; launch runs {}", RANK_COMMANDS.join(" or ")),
        ));
    }
    let hosts = if args.hosts.is_empty() { vec!["127.0.0.1".to_string(); args.ranks] } else { args.hosts.clone() };
    if hosts.len() < 2 {
        return Err(param("hosts", "a distributed run needs at least 2 ranks"));
    }
    let text = ring_hostfile(&hosts, args.starting_port)?;
    let path = std::env::temp_dir().join(format!("mlx-engine-hosts-{}.json", std::process::id()));
    std::fs::write(&path, text).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    let hostfile = TempFile(path);
    let exe = std::env::current_exe().map_err(|e| Error::Io { path: "<current exe>".into(), source: e })?;

    // The ranks share this machine's cores: without a setting of the user's, each rank's BLAS
    // gets its share (on 2 cores, 2 ranks with 2 BLAS threads each decode at half the speed of
    // 1 thread each; docs/distributed.md).
    let blas_threads = std::env::var_os("OPENBLAS_NUM_THREADS").is_none().then(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / hosts.len()).max(1).to_string()
    });
    // On a terminal, rank 0 becomes its foreground process (as the only rank is without
    // `launch`): `chat` reads and edits lines there, and Ctrl-C reaches it directly. In a
    // background group it would be stopped (SIGTTIN) at its first read.
    let terminal = foreground::Terminal::take();
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..hosts.len() {
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("MLX_RANK", rank.to_string())
            .env("MLX_HOSTFILE", &hostfile.0)
            .env(BACKEND_ENV, &args.backend);
        if args.ring_verbose {
            cmd.env("MLX_RING_VERBOSE", "1");
        }
        if let Some(n) = &blas_threads {
            cmd.env("OPENBLAS_NUM_THREADS", n);
        }
        // Their own process group: a Ctrl-C at the terminal reaches this launcher only, which
        // hands it to rank 0, and the ranks then stop together (see `distributed`).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if rank == 0 && terminal.is_some() {
            foreground::give_terminal(&mut cmd);
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                return Err(Error::Io { path: exe.clone(), source: e });
            }
        }
    }
    let mut terminal = terminal;
    let status = supervise(&mut children, &mut terminal);
    drop(terminal);
    let status = status?;
    drop(hostfile);
    match status {
        None => Ok(()),
        // Cancelled: the ranks stopped together and exited as an interrupted command does.
        Some((_, st)) if st.code() == Some(interrupt::EXIT_INTERRUPTED) => Err(Error::Interrupted),
        Some((rank, st)) => Err(param("launch", format!("rank {rank} failed ({})", describe(st)))),
    }
}

/// Waits for every rank. A rank that fails gives the others [`GRACE`] to end on their own,
/// then they are killed. Returns the first failure, if any.
/// The terminal goes back to the launcher once rank 0 has ended (a Ctrl-C then reaches it).
fn supervise(
    children: &mut [Child],
    terminal: &mut Option<foreground::Terminal>,
) -> Result<Option<(usize, ExitStatus)>> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<(usize, ExitStatus, Instant)> = None;
    let mut cancel = CancelHandle::new();
    let mut watch = Some(interrupt::watch(cancel.clone()));
    while done.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let status = c.try_wait().map_err(|e| Error::Io { path: format!("<rank {i}>").into(), source: e })?;
            if let Some(st) = status {
                done[i] = Some(st);
                if i == 0 {
                    *terminal = None;
                }
                if !st.success() && first_failure.is_none() {
                    first_failure = Some((i, st, Instant::now()));
                }
            }
        }
        if cancel.is_cancelled() {
            // Forward the press to rank 0 and watch for the next one (which rank 0 then takes
            // as "exit now").
            signal_interrupt(&children[0]);
            drop(watch.take());
            interrupt::reset();
            cancel = CancelHandle::new();
            watch = Some(interrupt::watch(cancel.clone()));
        }
        if let Some((_, _, at)) = first_failure {
            if at.elapsed() > GRACE {
                kill_all(children);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(watch);
    Ok(first_failure.map(|(i, st, _)| (i, st)).or_else(|| {
        // Every rank exited; report any that did not succeed (killed ranks included).
        done.iter().enumerate().find_map(|(i, st)| st.filter(|s| !s.success()).map(|s| (i, s)))
    }))
}

/// Hands the controlling terminal to rank 0's process group and back.
#[cfg(unix)]
mod foreground {
    use std::process::Command;

    /// The launcher's hold on its terminal (stdin), given back to its own process group on drop.
    pub struct Terminal;

    impl Terminal {
        /// `Some` when stdin is a terminal whose foreground group is the launcher's.
        pub fn take() -> Option<Terminal> {
            // SAFETY: queries of this process's own state.
            let ours = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
            ours.then_some(Terminal)
        }
    }

    impl Drop for Terminal {
        fn drop(&mut self) {
            // The launcher is now in the background: without ignoring SIGTTOU, taking the
            // terminal back would stop it.
            // SAFETY: signal disposition changes and a terminal call on stdin, no handler code.
            unsafe {
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpgrp());
                libc::signal(libc::SIGTTOU, old);
            }
        }
    }

    /// Makes the child's process group (its own, set before this runs) the terminal's
    /// foreground group before it executes.
    pub fn give_terminal(cmd: &mut Command) {
        // SAFETY: the closure runs in the forked child and calls only async-signal-safe
        // functions (signal, tcsetpgrp, getpgrp); SIGTTOU is restored before exec, since an
        // ignored signal would stay ignored in the new program.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                let r = libc::tcsetpgrp(0, libc::getpgrp());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(not(unix))]
mod foreground {
    pub struct Terminal;
    impl Terminal {
        pub fn take() -> Option<Terminal> {
            None
        }
    }
    pub fn give_terminal(_cmd: &mut std::process::Command) {}
}

#[cfg(unix)]
fn signal_interrupt(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: sends a signal to our own child; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

#[cfg(not(unix))]
fn signal_interrupt(_child: &Child) {}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
}

fn describe(st: ExitStatus) -> String {
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&st) {
        return format!("killed by signal {sig}");
    }
    match st.code() {
        Some(c) => format!("exit code {c}"),
        None => "no exit code".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostfile_is_mlx_launch_ring_format() {
        let hosts = vec!["127.0.0.1".to_string(), "10.0.0.2".to_string()];
        assert_eq!(ring_hostfile(&hosts, 5000).unwrap(), r#"[["127.0.0.1:5000"],["10.0.0.2:5001"]]"#);
        assert!(ring_hostfile(&["gpu-box".to_string()], 5000).unwrap_err().to_string().contains("not an IP"));
        assert!(ring_hostfile(&hosts, 65535).is_err());
    }
}
