//! The one array type used by the engine and every plugin: an owned handle to an MLX array
//! that calls through the installed [`OpsTable`].

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};
use crate::ops_table::{Handle, OpsTable, Status};

static OPS: AtomicPtr<OpsTable> = AtomicPtr::new(std::ptr::null_mut());

/// A source of the ops table for code that runs inside the engine itself.
///
/// The engine registers one with `inventory`, so its own code and tests never have to install
/// the table by hand; plugins receive theirs through the descriptor's `init` instead.
pub struct OpsProvider(pub fn() -> &'static OpsTable);
inventory::collect!(OpsProvider);

/// Installs the table all [`Array`]s of this library call through.
///
/// A table smaller than the one this crate was compiled against comes from an older engine that
/// lacks entries this code may call, so it is refused.
pub fn install_ops(table: &'static OpsTable) -> Result<()> {
    let needed = OpsTable::size_at_minor(crate::abi::ABI_MINOR);
    if table.size < needed {
        return Err(Error::Abi(format!(
            "the engine's ops table has {} bytes, ABI {}.{} needs {needed}: the engine is older than the plugin",
            table.size,
            crate::abi::ABI_MAJOR,
            crate::abi::ABI_MINOR
        )));
    }
    OPS.store(table as *const OpsTable as *mut OpsTable, Ordering::Release);
    Ok(())
}

/// Whether an ops table is available (installed, or provided by a linked engine).
pub fn ops_installed() -> bool {
    !OPS.load(Ordering::Acquire).is_null() || inventory::iter::<OpsProvider>.into_iter().next().is_some()
}

/// The installed table.
///
/// # Panics
/// When no table was installed and no engine is linked: a programming error of the host, not
/// something user input can cause.
pub fn ops() -> &'static OpsTable {
    let p = OPS.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only `install_ops` stores into OPS, always from a `&'static OpsTable`.
        return unsafe { &*p };
    }
    if let Some(provider) = inventory::iter::<OpsProvider>.into_iter().next() {
        let table = (provider.0)();
        OPS.store(table as *const OpsTable as *mut OpsTable, Ordering::Release);
        return table;
    }
    panic!("mlx-engine-plugin-api: no ops table installed (plugins get it from the engine at load)")
}

/// Reads the thread's last error message from the shim.
pub(crate) fn last_error() -> Error {
    let mut ptr: *const std::ffi::c_char = std::ptr::null();
    let mut len = 0usize;
    // SAFETY: the shim writes a pointer/length pair into our locals; the text stays valid until
    // the next failing call on this thread, and we copy it before returning.
    unsafe { (ops().last_error)(&mut ptr, &mut len) };
    if ptr.is_null() {
        return Error::Mlx("unknown MLX error".into());
    }
    // SAFETY: ptr/len describe a live byte buffer owned by the shim (see above).
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    Error::Mlx(String::from_utf8_lossy(bytes).into_owned())
}

/// Maps a status code to a `Result`, fetching the message on failure. Public for the host,
/// which binds a few diagnostic shim functions outside the table that report the same way.
pub fn check(status: Status) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// Calls an op that writes one output handle, and wraps the handle.
pub(crate) fn call1(f: impl FnOnce(*mut Handle) -> Status) -> Result<Array> {
    let mut out: Handle = std::ptr::null_mut();
    check(f(&mut out))?;
    // SAFETY: on success the shim wrote a new owned handle.
    unsafe { Array::from_raw(out) }
}

/// An owned reference to an MLX array. Cloning is cheap (a second handle to the same data);
/// arrays are immutable, and operations build a lazy graph that `eval` computes.
///
/// `Array` is `Send` (MLX arrays are reference-counted handles), but a model's arrays should be
/// built and evaluated on that model's worker thread (MLX's default streams are per thread).
/// It is deliberately not `Sync`: evaluating an array (`eval`, reading it) mutates MLX's node
/// in place (it gains its data and drops its inputs), so two threads sharing one `&Array` could
/// race inside MLX.
///
/// Every `Array` has a dtype this crate knows: [`Array::from_raw`] refuses a handle whose dtype
/// code is not one of [`Dtype`]'s (an engine of a later minor could produce one).
pub struct Array {
    handle: NonNull<c_void>,
}

// SAFETY: an MLX array handle is a refcounted, immutable graph node; moving it to another thread
// is sound (MLX itself moves arrays between its scheduler threads).
unsafe impl Send for Array {}

impl Array {
    /// Takes ownership of a handle returned by the ops table.
    ///
    /// # Safety
    /// `handle` must be an owned handle produced by the installed ops table (or null, which is
    /// reported as an error).
    pub unsafe fn from_raw(handle: Handle) -> Result<Array> {
        let handle = NonNull::new(handle).ok_or_else(|| Error::Abi("the ops table returned a null array".into()))?;
        let a = Array { handle };
        // SAFETY: `a` holds a live handle (dropped, and so freed, on the error path).
        let code = unsafe { (ops().array_dtype)(a.as_raw()) };
        if Dtype::from_code(code).is_err() {
            return Err(Error::Abi(format!(
                "an array has dtype code {code}, which this plugin-api (ABI {}.{}) does not know: \
                 the engine is newer; rebuild against a plugin-api that has it",
                crate::abi::ABI_MAJOR,
                crate::abi::ABI_MINOR
            )));
        }
        Ok(a)
    }

    /// Borrows the raw handle (for passing to the ops table or across the plugin boundary).
    pub fn as_raw(&self) -> Handle {
        self.handle.as_ptr()
    }

    /// Gives up ownership of the handle; the receiver must free it through the ops table.
    pub fn into_raw(self) -> Handle {
        let h = self.handle.as_ptr();
        std::mem::forget(self);
        h
    }

    /// Copies `data` into a new array of the given shape.
    pub fn from_slice<T: Element>(data: &[T], shape: &[i32]) -> Result<Array> {
        let nbytes = std::mem::size_of_val(data);
        // SAFETY: `data` is a live slice of `nbytes` bytes; `T::DTYPE` matches T's layout.
        unsafe { Self::from_raw_bytes(data.as_ptr() as *const c_void, nbytes, shape, T::DTYPE) }
    }

    /// Copies raw little-endian element bytes (e.g. bf16 bit patterns) into a new array.
    pub fn from_bytes(bytes: &[u8], shape: &[i32], dtype: Dtype) -> Result<Array> {
        // SAFETY: `bytes` is a live slice; the shim checks the length against shape and dtype.
        unsafe { Self::from_raw_bytes(bytes.as_ptr() as *const c_void, bytes.len(), shape, dtype) }
    }

    /// # Safety
    /// `data` must point at `nbytes` readable bytes.
    unsafe fn from_raw_bytes(data: *const c_void, nbytes: usize, shape: &[i32], dtype: Dtype) -> Result<Array> {
        let expected = shape.iter().map(|&d| d.max(0) as usize).product::<usize>() * dtype.size_in_bytes();
        if shape.iter().any(|&d| d < 0) || expected != nbytes {
            return Err(Error::Array(format!(
                "{nbytes} bytes of data do not fill shape {shape:?} of {dtype} ({expected} bytes expected)"
            )));
        }
        // SAFETY: the caller guarantees `data`; shape is a live slice.
        call1(|out| unsafe { (ops().array_from_data)(data, nbytes, shape.as_ptr(), shape.len(), dtype as u32, out) })
    }

    /// An array of `shape` filled with `value`.
    pub fn full(shape: &[i32], value: f64, dtype: Dtype) -> Result<Array> {
        // SAFETY: shape is a live slice.
        call1(|out| unsafe { (ops().array_full)(shape.as_ptr(), shape.len(), value, dtype as u32, out) })
    }

    pub fn zeros(shape: &[i32], dtype: Dtype) -> Result<Array> {
        Self::full(shape, 0.0, dtype)
    }

    pub fn ones(shape: &[i32], dtype: Dtype) -> Result<Array> {
        Self::full(shape, 1.0, dtype)
    }

    /// A 0-dimensional array.
    pub fn scalar(value: f64, dtype: Dtype) -> Result<Array> {
        Self::full(&[], value, dtype)
    }

    /// `[start, stop)` in steps of `step`.
    pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
        // SAFETY: plain value arguments.
        call1(|out| unsafe { (ops().array_arange)(start, stop, step, dtype as u32, out) })
    }

    pub fn ndim(&self) -> usize {
        // SAFETY: self holds a live handle.
        unsafe { (ops().array_ndim)(self.as_raw()) }
    }

    pub fn shape(&self) -> Vec<i32> {
        let n = self.ndim();
        let mut v = vec![0i32; n];
        // SAFETY: `v` has room for `n` dims, the array's ndim.
        unsafe { (ops().array_shape)(self.as_raw(), v.as_mut_ptr(), n) };
        v
    }

    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: i32) -> Result<i32> {
        let shape = self.shape();
        let n = shape.len() as i32;
        let a = if axis < 0 { axis + n } else { axis };
        if a < 0 || a >= n {
            return Err(Error::Array(format!("axis {axis} is out of range for shape {shape:?}")));
        }
        Ok(shape[a as usize])
    }

    pub fn dtype(&self) -> Dtype {
        // SAFETY: self holds a live handle.
        let code = unsafe { (ops().array_dtype)(self.as_raw()) };
        match Dtype::from_code(code) {
            Ok(d) => d,
            // `from_raw` checked the code, and an MLX array's dtype never changes.
            Err(e) => unreachable!("{e}"),
        }
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        // SAFETY: self holds a live handle.
        unsafe { (ops().array_size)(self.as_raw()) }
    }

    pub fn nbytes(&self) -> usize {
        self.size() * self.dtype().size_in_bytes()
    }

    /// Evaluates and copies the elements out, row-major; `T` must match the dtype exactly.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::Array(format!(
                "cannot read an array of {} as {} (convert it with astype first)",
                self.dtype(),
                T::DTYPE
            )));
        }
        let mut v = vec![T::default(); self.size()];
        let nbytes = std::mem::size_of_val(v.as_slice());
        // SAFETY: `v` has exactly size * itemsize writable bytes.
        check(unsafe { (ops().array_read)(self.as_raw(), v.as_mut_ptr() as *mut c_void, nbytes) })?;
        Ok(v)
    }

    /// Evaluates and copies the raw element bytes out, row-major.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.nbytes()];
        // SAFETY: `v` has exactly nbytes writable bytes.
        check(unsafe { (ops().array_read)(self.as_raw(), v.as_mut_ptr() as *mut c_void, v.len()) })?;
        Ok(v)
    }

    /// Converts to f32 and reads the elements.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if self.dtype() == Dtype::F32 {
            self.to_vec()
        } else {
            self.astype(Dtype::F32)?.to_vec()
        }
    }

    /// Reads the elements as f64, converting on the host from whatever real dtype the array
    /// has. Unlike `astype(F64)` this needs no device op, so it also works on backends without
    /// float64 (MLX's CUDA backend) — e.g. for GGUF metadata numbers.
    pub fn to_f64_host(&self) -> Result<Vec<f64>> {
        let bytes = self.to_bytes()?;
        let dt = self.dtype();
        let n = dt.size_in_bytes();
        let conv = |c: &[u8]| -> Option<f64> {
            let b = |k: usize| -> [u8; 8] {
                let mut a = [0u8; 8];
                a[..k].copy_from_slice(&c[..k]);
                a
            };
            Some(match dt {
                Dtype::Bool | Dtype::U8 => c[0] as f64,
                Dtype::I8 => c[0] as i8 as f64,
                Dtype::U16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                Dtype::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                Dtype::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                Dtype::U64 => u64::from_le_bytes(b(8)) as f64,
                Dtype::I64 => i64::from_le_bytes(b(8)) as f64,
                Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                Dtype::F64 => f64::from_le_bytes(b(8)),
                Dtype::BF16 => f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64,
                Dtype::F16 => f16_to_f64(u16::from_le_bytes([c[0], c[1]])),
                Dtype::Complex64 => return None,
            })
        };
        bytes
            .chunks_exact(n)
            .map(|c| conv(c).ok_or_else(|| Error::Array(format!("cannot read {dt} elements as real numbers"))))
            .collect()
    }

    /// The single element of a one-element array, as `T` (converting the dtype if needed).
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.size() != 1 {
            return Err(Error::Array(format!("item() needs one element, the array has shape {:?}", self.shape())));
        }
        let a = if self.dtype() == T::DTYPE { self.clone() } else { self.astype(T::DTYPE)? };
        Ok(a.to_vec::<T>()?[0])
    }

    pub fn astype(&self, dtype: Dtype) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().astype)(self.as_raw(), dtype as u32, out) })
    }

    /// Computes this array now.
    pub fn eval(&self) -> Result<()> {
        eval(&[self])
    }
}

/// Computes the arrays (and everything they depend on).
pub fn eval(arrays: &[&Array]) -> Result<()> {
    let handles: Vec<Handle> = arrays.iter().map(|a| a.as_raw()).collect();
    // SAFETY: `handles` are live borrowed handles.
    check(unsafe { (ops().eval)(handles.as_ptr(), handles.len()) })
}

/// Starts computing the arrays and returns at once (lets the next step's graph be built while
/// this one runs).
pub fn async_eval(arrays: &[&Array]) -> Result<()> {
    let handles: Vec<Handle> = arrays.iter().map(|a| a.as_raw()).collect();
    // SAFETY: `handles` are live borrowed handles.
    check(unsafe { (ops().async_eval)(handles.as_ptr(), handles.len()) })
}

impl Drop for Array {
    fn drop(&mut self) {
        // SAFETY: we own the handle and drop it exactly once.
        unsafe { (ops().array_free)(self.as_raw()) }
    }
}

impl Clone for Array {
    fn clone(&self) -> Self {
        // A clone only allocates a new handle to the same node; failing means the allocator is
        // exhausted, where aborting the clone is the only option.
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().array_clone)(self.as_raw(), out) })
            .unwrap_or_else(|e| panic!("cloning an array handle failed: {e}"))
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array(shape={:?}, dtype={})", self.shape(), self.dtype())
    }
}

/// IEEE half precision bits to f64.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}
