//! MLX's distributed layer (ABI 1.2): a [`Group`] of processes and the collectives tensor
//! parallelism needs. The engine creates the group ([`Group::init`]) and hands it to a model's
//! [`ModelArch::shard`](crate::ModelArch::shard); layers keep clones of it and call
//! [`all_sum`] / [`all_gather`] in their forward pass. The collectives are lazy graph nodes like
//! every other op: the communication happens when the result is evaluated, and a lost peer
//! shows up there as an error (MLX's ring backend: "connection to a peer was lost").

use std::ffi::c_char;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::array::{call1, check, ops, Array};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ops_table::GroupHandle;

/// Which communication backend MLX uses, by MLX's own names (`mx.distributed.init(backend=...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The first one available, in MLX's order of preference.
    Any,
    /// TCP sockets between the hosts of `MLX_HOSTFILE` (CPU; what `mlx.launch --backend ring` sets up).
    Ring,
    /// An MPI library loaded at run time (`libmpi.so`, or `MLX_MPI_LIBNAME`), under `mpirun`.
    Mpi,
    /// NVIDIA's NCCL (CUDA builds of MLX only).
    Nccl,
    /// RDMA over Thunderbolt (macOS builds only).
    Jaccl,
}

impl Backend {
    pub const ALL: [Backend; 5] = [Backend::Any, Backend::Ring, Backend::Mpi, Backend::Nccl, Backend::Jaccl];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Any => "any",
            Backend::Ring => "ring",
            Backend::Mpi => "mpi",
            Backend::Nccl => "nccl",
            Backend::Jaccl => "jaccl",
        }
    }

    /// Parses MLX's name of a backend.
    pub fn parse(name: &str) -> Result<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
            Error::Config(format!("unknown distributed backend `{name}` (one of {})", names.join(", ")))
        })
    }

    /// Whether MLX in this process can start this backend (the wheel must carry it: the CPU
    /// wheel has ring and MPI, and MPI also needs the library at run time).
    pub fn is_available(self) -> Result<bool> {
        let name = self.name();
        let mut out = false;
        // SAFETY: a borrowed string and one out-slot.
        check(unsafe { (ops().dist_is_available)(name.as_ptr() as *const c_char, name.len(), &mut out) })?;
        Ok(out)
    }
}

/// A group of processes that communicate through one backend. Cloning is cheap (one owned
/// handle behind an `Arc`), so every sharded layer can keep its own.
#[derive(Clone)]
pub struct Group {
    handle: Arc<Owned>,
    rank: i32,
    size: i32,
}

/// The owned group handle, freed once when the last clone goes.
struct Owned(NonNull<std::ffi::c_void>);

// SAFETY: the handle is a copy of MLX's `Group` (a shared_ptr to the backend), which MLX's own
// scheduler threads use concurrently; nothing here mutates it.
unsafe impl Send for Owned {}
// SAFETY: as for Send: the handle is only read (rank, size, collectives take it by const ref).
unsafe impl Sync for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: we own the handle and free it once.
        unsafe { (ops().dist_group_free)(self.0.as_ptr()) }
    }
}

impl Group {
    /// MLX's `distributed::init(strict, backend)`: the group of all processes the backend finds
    /// from its environment. With `strict`, a backend that cannot start is an error (MLX's
    /// message); without, the result is the singleton group (rank 0 of 1).
    pub fn init(backend: Backend, strict: bool) -> Result<Group> {
        let name = backend.name();
        let mut out: GroupHandle = std::ptr::null_mut();
        // SAFETY: a borrowed string and one out-slot.
        check(unsafe { (ops().dist_init)(name.as_ptr() as *const c_char, name.len(), strict, &mut out) })?;
        // SAFETY: on success the shim wrote a new owned handle.
        unsafe { Group::from_raw(out) }
    }

    /// Takes ownership of a group handle.
    ///
    /// # Safety
    /// `handle` must be an owned group handle from the installed ops table (null is an error).
    pub unsafe fn from_raw(handle: GroupHandle) -> Result<Group> {
        let handle = NonNull::new(handle).ok_or_else(|| Error::Abi("the ops table returned a null group".into()))?;
        // Built first so the handle is freed if a query fails.
        let mut g = Group { handle: Arc::new(Owned(handle)), rank: 0, size: 0 };
        // SAFETY: live handle, one out-slot each.
        unsafe {
            check((ops().dist_group_rank)(g.as_raw(), &mut g.rank))?;
            check((ops().dist_group_size)(g.as_raw(), &mut g.size))?;
        }
        Ok(g)
    }

    /// A new handle to a group borrowed from the other side of the boundary.
    ///
    /// # Safety
    /// `handle` must be a live group handle for the duration of the call.
    pub unsafe fn clone_raw(handle: GroupHandle) -> Result<Group> {
        let mut out: GroupHandle = std::ptr::null_mut();
        // SAFETY: guaranteed by the caller; one out-slot.
        check(unsafe { (ops().dist_group_clone)(handle, &mut out) })?;
        // SAFETY: on success the shim wrote a new owned handle.
        unsafe { Group::from_raw(out) }
    }

    /// Borrows the raw handle (to pass through the ops table or across the plugin boundary).
    pub fn as_raw(&self) -> GroupHandle {
        self.handle.0.as_ptr()
    }

    pub fn rank(&self) -> i32 {
        self.rank
    }

    pub fn size(&self) -> i32 {
        self.size
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.size)
    }
}

/// Element-wise sum of `x` over the ranks; every rank gets the same values.
pub fn all_sum(x: &Array, group: &Group) -> Result<Array> {
    // SAFETY: borrowed handles, one out-slot.
    call1(|out| unsafe { (ops().all_sum)(x.as_raw(), group.as_raw(), out) })
}

/// The ranks' `x` concatenated along axis 0, in rank order.
pub fn all_gather(x: &Array, group: &Group) -> Result<Array> {
    // SAFETY: borrowed handles, one out-slot.
    call1(|out| unsafe { (ops().all_gather)(x.as_raw(), group.as_raw(), out) })
}

/// Sends `x` to rank `dst`: evaluate the result (a copy of `x`) to make the send happen.
pub fn send(x: &Array, dst: i32, group: &Group) -> Result<Array> {
    // SAFETY: borrowed handles, one out-slot.
    call1(|out| unsafe { (ops().send)(x.as_raw(), dst, group.as_raw(), out) })
}

/// Receives an array of `shape` and `dtype` from rank `src`.
pub fn recv(shape: &[i32], dtype: Dtype, src: i32, group: &Group) -> Result<Array> {
    // SAFETY: a borrowed shape and group, one out-slot.
    call1(|out| unsafe { (ops().recv)(shape.as_ptr(), shape.len(), dtype as u32, src, group.as_raw(), out) })
}
