//! Tensor-parallel inference over MLX's distributed layer (`docs/distributed.md`, ADR 0008).
//!
//! Every rank is a separate process running the same request: it loads the whole model, lets
//! the architecture [`shard`](mlx_engine_plugin_api::ModelArch::shard) itself over the group,
//! and then runs the usual prefill and decode loop. The sharded layers sum their partial
//! results over the group, so all ranks hold the same logits and, sampling with the same seed,
//! pick the same tokens; only rank 0 prints them.
//!
//! The ranks must also stop together. Stops decided from the tokens (EOS, stop strings, token
//! limits) agree by construction; a cancel (Ctrl-C, a host dropping the stream) may reach one
//! rank only, or the ranks at different times. So a rank's cancel is only a *request*: at the
//! start of every forward pass the ranks sum their requests ([`Lockstep`]), and when any rank
//! asked, each publishes the cancel to its generation loop *after* that pass. The loop reads
//! its flag only between passes (and between layers inside one), so every rank sees the
//! change at the same point and runs the same collectives; publishing it inside a pass would
//! let a rank that checks between layers stop while another finishes the pass and waits for
//! it forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlx_engine_plugin_api::distributed::all_sum;
pub use mlx_engine_plugin_api::distributed::{Backend, Group};
use mlx_engine_plugin_api::{Array, DynModel, ForwardContext, Input, LayerCache};

use crate::error::{Error, Result};

/// Starts MLX's backend `backend` and returns the group of every rank it finds (strict: a
/// backend that cannot start is an error with MLX's message and what to set).
pub fn init(backend: Backend) -> Result<Group> {
    Group::init(backend, true).map_err(|e| Error::Param {
        name: "distributed".into(),
        reason: format!(
            "cannot start MLX's `{}` backend: {e} (ring reads MLX_RANK and MLX_HOSTFILE, as `mlx.launch` or \
             `mlx-engine launch` set them; see docs/distributed.md)",
            backend.name()
        ),
    })
}

/// How long a rank waits for the next forward pass of a running request before it gives the
/// group up (seconds; `MLX_ENGINE_RANK_TIMEOUT` overrides). MLX's ring backend reports a lost
/// peer as an error when the socket closes cleanly, but a peer killed while data was in
/// flight (ECONNRESET) can leave the other ranks waiting on a collective forever; the watchdog
/// bounds that. It must exceed the slowest legitimate gap between passes (one prefill chunk).
pub const DEFAULT_RANK_TIMEOUT_SECS: u64 = 120;

/// The environment variable that overrides [`DEFAULT_RANK_TIMEOUT_SECS`].
pub const RANK_TIMEOUT_ENV: &str = "MLX_ENGINE_RANK_TIMEOUT";

/// [`RANK_TIMEOUT_ENV`] or the default.
fn rank_timeout() -> Result<Duration> {
    match std::env::var(RANK_TIMEOUT_ENV) {
        Err(_) => Ok(Duration::from_secs(DEFAULT_RANK_TIMEOUT_SECS)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(Error::Param {
                name: RANK_TIMEOUT_ENV.into(),
                reason: format!("`{v}` is not a positive number of seconds"),
            }),
        },
    }
}

/// The cancel flags of the request a [`Lockstep`] model is serving.
#[derive(Default)]
struct Flags {
    /// Set by this rank's host (its [`CancelHandle`](crate::CancelHandle)).
    requested: Arc<AtomicBool>,
    /// What the generation loop reads: set once the ranks agreed to stop.
    agreed: Arc<AtomicBool>,
    /// While a request runs: when its last forward pass started (the watchdog's clock).
    progress: Option<Instant>,
}

/// Shared between a [`Lockstep`] model and the worker that starts requests on it.
#[derive(Clone, Default)]
pub struct CancelRelay(Arc<Mutex<Flags>>);

impl CancelRelay {
    /// Starts a request cancelled through `requested`; returns the flag its generation loop
    /// must read instead.
    pub fn begin(&self, requested: Arc<AtomicBool>) -> Arc<AtomicBool> {
        let agreed = Arc::new(AtomicBool::new(false));
        if let Ok(mut f) = self.0.lock() {
            *f = Flags { requested, agreed: agreed.clone(), progress: Some(Instant::now()) };
        }
        agreed
    }

    /// The request ended: the ranks may now idle for as long as they like.
    pub fn end(&self) {
        if let Ok(mut f) = self.0.lock() {
            f.progress = None;
        }
    }

    fn tick(&self) {
        if let Ok(mut f) = self.0.lock() {
            if f.progress.is_some() {
                f.progress = Some(Instant::now());
            }
        }
    }

    /// Ends the process when a running request makes no progress for `timeout` (see
    /// [`DEFAULT_RANK_TIMEOUT_SECS`]); the thread ends with the relay.
    fn watch(&self, rank: i32, timeout: Duration) {
        let weak = Arc::downgrade(&self.0);
        let spawned = std::thread::Builder::new().name("mlx-engine-rank-watchdog".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(flags) = weak.upgrade() else { return };
            let stalled = flags.lock().ok().and_then(|f| f.progress).is_some_and(|t| t.elapsed() > timeout);
            if stalled {
                eprintln!(
                    "error: rank {rank}: no progress for {}s: another rank died or stopped answering (set \
                     {RANK_TIMEOUT_ENV} to wait longer)",
                    timeout.as_secs()
                );
                // The worker is stuck inside MLX, so nothing can unwind it: leave now.
                // SAFETY: `_exit` ends the process at once; nothing runs after it.
                unsafe { libc::_exit(1) }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("rank {rank}: no watchdog ({e}): a lost peer may hang this rank");
        }
    }

    fn current(&self) -> (Arc<AtomicBool>, Arc<AtomicBool>) {
        match self.0.lock() {
            Ok(f) => (f.requested.clone(), f.agreed.clone()),
            Err(_) => Default::default(),
        }
    }
}

/// How a model is split over the ranks of a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// Every rank keeps its share of each layer's heads and features
    /// ([`ModelArch::shard`](mlx_engine_plugin_api::ModelArch::shard)).
    #[default]
    Tensor,
    /// Every rank keeps a contiguous slice of the layers
    /// ([`ModelArch::pipeline`](mlx_engine_plugin_api::ModelArch::pipeline), ADR 0011).
    Pipeline,
}

impl Split {
    pub const NAMES: [&'static str; 2] = ["tensor", "pipeline"];

    pub fn parse(name: &str) -> Result<Split> {
        match name {
            "tensor" => Ok(Split::Tensor),
            "pipeline" => Ok(Split::Pipeline),
            _ => Err(Error::Param {
                name: "split".into(),
                reason: format!("`{name}` is not a split; expected one of {}", Split::NAMES.join(", ")),
            }),
        }
    }
}

/// A split model whose ranks agree on cancelling (see the module docs).
pub struct Lockstep {
    inner: Box<dyn DynModel>,
    group: Group,
    relay: CancelRelay,
}

impl Lockstep {
    /// Splits `model` over `group` and wraps it; requests must start through `relay`.
    pub fn split(mut model: Box<dyn DynModel>, group: Group, split: Split, relay: CancelRelay) -> Result<Lockstep> {
        match split {
            Split::Tensor => model.shard(&group)?,
            Split::Pipeline => model.pipeline(&group)?,
        }
        relay.watch(group.rank(), rank_timeout()?);
        Ok(Lockstep { inner: model, group, relay })
    }

    /// Whether any rank asked to cancel, summed over the group (synchronously: one tiny
    /// collective, ordered after everything this rank scheduled before, as on every rank).
    fn any_requested(&self, requested: &AtomicBool) -> mlx_engine_plugin_api::Result<bool> {
        let mine = Array::from_slice(&[i32::from(requested.load(Ordering::Relaxed))], &[1])?;
        let total = all_sum(&mine, &self.group)?;
        Ok(total.to_vec::<i32>()?.first().copied().unwrap_or(0) > 0)
    }
}

impl DynModel for Lockstep {
    fn cache_layout(&self) -> Vec<LayerCache> {
        self.inner.cache_layout()
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> mlx_engine_plugin_api::Result<Array> {
        self.relay.tick();
        let (requested, agreed) = self.relay.current();
        let stop = self.any_requested(&requested)?;
        let out = self.inner.forward(input, ctx);
        if stop {
            agreed.store(true, Ordering::Relaxed);
        }
        out
    }

    fn embed_tokens(&self, ids: &Array) -> mlx_engine_plugin_api::Result<Array> {
        self.inner.embed_tokens(ids)
    }

    fn honours_last_position_only(&self) -> bool {
        self.inner.honours_last_position_only()
    }

    fn embeddings_scale(&self) -> mlx_engine_plugin_api::Result<f32> {
        self.inner.embeddings_scale()
    }

    fn shard(&mut self, _group: &Group) -> mlx_engine_plugin_api::Result<()> {
        Err(mlx_engine_plugin_api::Error::Config("the model is already split over a group".into()))
    }

    fn pipeline(&mut self, _group: &Group) -> mlx_engine_plugin_api::Result<()> {
        Err(mlx_engine_plugin_api::Error::Config("the model is already split over a group".into()))
    }
}

/// Rank 0's `bytes` on every rank (the others pass `None`, and what they pass is ignored): the
/// length, then the bytes packed in `u32` words, each summed over the group with the other
/// ranks' zeros. Collective and synchronous; run it on the thread whose stream runs the
/// model's collectives ([`ModelKit::run_on_worker`](crate::ModelKit::run_on_worker)), so
/// that it queues behind any pass still in flight instead of interleaving with it on the
/// group's connections.
pub fn broadcast(group: &Group, bytes: Option<&[u8]>) -> Result<Vec<u8>> {
    let mine = bytes.filter(|_| group.rank() == 0).unwrap_or_default();
    let len = u32::try_from(mine.len())
        .map_err(|_| Error::Param { name: "distributed".into(), reason: "a broadcast of over 4 GiB".into() })?;
    let total = all_sum(&Array::from_slice(&[len], &[1])?, group)?.to_vec::<u32>()?;
    let n = total.first().copied().unwrap_or(0) as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut words = vec![0u32; n.div_ceil(4)];
    for (w, chunk) in words.iter_mut().zip(mine.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_le_bytes(b);
    }
    let summed = all_sum(&Array::from_slice(&words, &[words.len() as i32])?, group)?.to_vec::<u32>()?;
    let mut out: Vec<u8> = summed.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.truncate(n);
    Ok(out)
}

/// How many ranks of `group` answer `false` (each passes its own answer): the ranks agree on
/// whether all of them can go on. Collective; run it as [`broadcast`].
pub fn count_refusals(group: &Group, ok: bool) -> Result<i32> {
    let mine = Array::from_slice(&[i32::from(!ok)], &[1])?;
    Ok(all_sum(&mine, group)?.to_vec::<i32>()?.first().copied().unwrap_or(0))
}
