//! MLX's `compile` of a Rust closure (ABI 1.1): the closure is traced once per input signature
//! and the traced graph is fused into fewer kernels (element-wise chains become one).
//!
//! The closure crosses to the shim as a C callback ([`CompileFn`]) over a boxed payload. The
//! callback catches the closure's panics and returns its errors as messages, so neither unwinds
//! into C++; the caller of [`Compiled::call`] gets them back as [`Error`]s.
//!
//! On CPU, MLX turns each fused kernel into C++ and builds it with the system compiler the first
//! time it runs (cached under `$TMPDIR/mlx`); `MLX_DISABLE_COMPILE=1` makes [`Compiled::call`]
//! run the closure as it is, for deployments without a compiler.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::array::{check, ops, Array};
use crate::error::{Error, Result};
use crate::export::borrow;
use crate::ops_table::{CompiledHandle, Handle, Status};

type Closure = dyn Fn(&[Array]) -> Result<Vec<Array>> + Send + Sync;

/// A compiled function of `n_inputs` arrays to `n_outputs` arrays.
pub struct Compiled {
    handle: CompiledHandle,
    n_inputs: usize,
    n_outputs: usize,
}

// SAFETY: the shim's compiled function is immutable once built (MLX keeps its trace caches per
// thread) and the closure it calls back is `Send + Sync`, so it may be called from, and dropped
// on, any thread.
unsafe impl Send for Compiled {}
// SAFETY: see `Send`.
unsafe impl Sync for Compiled {}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled({} -> {})", self.n_inputs, self.n_outputs)
    }
}

impl Compiled {
    /// Compiles `f`, which must be a pure function of its inputs (arrays it captures are baked
    /// into the graph as constants). `shapeless`: no retrace when input shapes change; only
    /// sound for element-wise functions (MLX checks and refuses otherwise).
    pub fn new<F>(n_inputs: usize, n_outputs: usize, shapeless: bool, f: F) -> Result<Compiled>
    where
        F: Fn(&[Array]) -> Result<Vec<Array>> + Send + Sync + 'static,
    {
        let payload: Box<Box<Closure>> = Box::new(Box::new(f));
        let payload = Box::into_raw(payload) as *mut c_void;
        let mut handle: CompiledHandle = std::ptr::null_mut();
        // SAFETY: `payload` is a leaked `Box<Box<Closure>>` that the shim owns from here on (it
        // frees it through `free_payload`, also when this call fails); the callbacks match
        // `CompileFn` / `FreePayloadFn`.
        check(unsafe {
            (ops().compile)(trampoline, payload, free_payload, n_inputs, n_outputs, shapeless, &mut handle)
        })?;
        Ok(Compiled { handle, n_inputs, n_outputs })
    }

    /// Applies the compiled function; fails on a wrong number of inputs and with the closure's
    /// own error (or panic message) when tracing it fails.
    pub fn call(&self, inputs: &[&Array]) -> Result<Vec<Array>> {
        if inputs.len() != self.n_inputs {
            return Err(Error::Array(format!(
                "compiled function takes {} inputs, got {}",
                self.n_inputs,
                inputs.len()
            )));
        }
        let raw: Vec<Handle> = inputs.iter().map(|a| a.as_raw()).collect();
        let mut outs: Vec<Handle> = vec![std::ptr::null_mut(); self.n_outputs];
        // SAFETY: live borrowed inputs; room for `n_outputs` owned handles.
        check(unsafe { (ops().compiled_call)(self.handle, raw.as_ptr(), raw.len(), outs.as_mut_ptr(), outs.len()) })?;
        // SAFETY: on success every slot holds a new owned handle.
        outs.into_iter().map(|h| unsafe { Array::from_raw(h) }).collect()
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: the handle came from `compile` and is freed once.
        unsafe { (ops().compiled_free)(self.handle) };
    }
}

fn run(
    payload: *mut c_void,
    inputs: *const Handle,
    n_inputs: usize,
    outputs: *mut Handle,
    n_outputs: usize,
) -> Result<()> {
    // SAFETY: the shim passes back the payload made in `Compiled::new`.
    let f = unsafe { &*(payload as *const Box<Closure>) };
    let ins = (0..n_inputs)
        // SAFETY: the shim passes `n_inputs` live handles, borrowed for this call.
        .map(|i| unsafe { borrow(*inputs.add(i)) }.map(|a| (*a).clone()))
        .collect::<Result<Vec<Array>>>()?;
    let outs = f(&ins)?;
    if outs.len() != n_outputs {
        return Err(Error::Array(format!("compiled closure returned {} arrays, declared {n_outputs}", outs.len())));
    }
    for (i, a) in outs.into_iter().enumerate() {
        // SAFETY: the shim gave room for `n_outputs` handles and takes ownership of them.
        unsafe { *outputs.add(i) = a.into_raw() };
    }
    Ok(())
}

unsafe extern "C" fn trampoline(
    payload: *mut c_void,
    inputs: *const Handle,
    n_inputs: usize,
    outputs: *mut Handle,
    n_outputs: usize,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> Status {
    let err = match catch_unwind(AssertUnwindSafe(|| run(payload, inputs, n_inputs, outputs, n_outputs))) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(p) => format!("compiled closure {}", Error::from_panic(p)),
    };
    let n = floor_char_boundary(&err, msg_cap);
    // SAFETY: the shim gives a buffer of `msg_cap` bytes and a length slot.
    unsafe {
        std::ptr::copy_nonoverlapping(err.as_ptr(), msg as *mut u8, n);
        *msg_len = n;
    }
    1
}

/// The largest prefix length of `s` that is at most `cap` bytes and ends on a char boundary.
fn floor_char_boundary(s: &str, cap: usize) -> usize {
    let mut n = s.len().min(cap);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

unsafe extern "C" fn free_payload(payload: *mut c_void) {
    // A panicking destructor of something the closure captured must not unwind into C++.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `payload` is the `Box<Box<Closure>>` leaked in `Compiled::new`, freed once.
        drop(unsafe { Box::from_raw(payload as *mut Box<Closure>) });
    }));
}

/// The number of primitives (kernels) evaluating `arrays` would run now: the unevaluated
/// nodes reachable from them, a multi-output primitive counted once. For measuring what a
/// change to a forward pass costs per step.
pub fn graph_primitives(arrays: &[&Array]) -> Result<usize> {
    let raw: Vec<Handle> = arrays.iter().map(|a| a.as_raw()).collect();
    let mut n = 0usize;
    // SAFETY: live borrowed handles and one out slot.
    check(unsafe { (ops().graph_primitives)(raw.as_ptr(), raw.len(), &mut n) })?;
    Ok(n)
}
