//! The ops table: the one native surface a plugin sees.
//!
//! The engine fills an [`OpsTable`] with the functions of its C++ shim over MLX and hands a
//! pointer to it to every plugin at load. Plugins therefore link no native code, share the
//! engine's single MLX runtime (allocator, streams, default device) and keep working across
//! engine releases of the same ABI major.
//!
//! Conventions every entry follows (they are part of the ABI, see `docs/adr/0001-plugin-abi.md`):
//! - A [`Handle`] is an opaque pointer to one MLX array. Input handles are *borrowed*; every
//!   handle written to an `out` pointer is *owned* by the caller, who releases it with
//!   [`OpsTable::array_free`].
//! - A [`Status`] of 0 means success. Any other value means failure: the message is then
//!   available from [`OpsTable::last_error`] on the same thread, valid until the next failing
//!   call on that thread. No C++ exception crosses the table.
//! - Shapes and axes are `(pointer, length)` pairs of `i32`; a negative axis counts from the end.
//! - Optional array arguments are null handles.
//! - The table is append-only: new entries go at the end, and `size` tells a plugin how much of
//!   the table the engine it runs in provides.

use std::ffi::{c_char, c_void};

/// Opaque, owned-or-borrowed reference to one MLX array (see the module docs for ownership).
pub type Handle = *mut c_void;
/// Opaque loaded file (safetensors / GGUF): arrays plus metadata, released with `bundle_free`.
pub type BundleHandle = *mut c_void;
/// 0 = success; otherwise read [`OpsTable::last_error`].
pub type Status = i32;

/// Element-wise unary operations, selected by code in [`OpsTable::unary`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg = 0,
    Exp = 1,
    Log = 2,
    Sqrt = 3,
    Rsqrt = 4,
    Tanh = 5,
    Erf = 6,
    Sigmoid = 7,
    Abs = 8,
    Square = 9,
    Sin = 10,
    Cos = 11,
    Floor = 12,
    Ceil = 13,
    LogicalNot = 14,
    /// Materialises a row-contiguous copy when the input is a strided view.
    Contiguous = 15,
    Log1p = 16,
    Sign = 17,
    Round = 18,
    StopGradient = 19,
    Reciprocal = 20,
    Erfinv = 21,
    IsNan = 22,
}

/// Element-wise binary operations (with NumPy broadcasting), selected by code in
/// [`OpsTable::binary`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Subtract = 1,
    Multiply = 2,
    Divide = 3,
    Maximum = 4,
    Minimum = 5,
    Power = 6,
    Equal = 7,
    NotEqual = 8,
    Less = 9,
    LessEqual = 10,
    Greater = 11,
    GreaterEqual = 12,
    LogicalAnd = 13,
    LogicalOr = 14,
    FloorDivide = 15,
    Remainder = 16,
}

/// Reductions over a set of axes, selected by code in [`OpsTable::reduce`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
    Min = 2,
    Mean = 3,
    Prod = 4,
    All = 5,
    Any = 6,
}

/// Which memory counter [`OpsTable::memory`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryCounter {
    Active = 0,
    Peak = 1,
    Cache = 2,
}

/// How [`OpsTable::sdpa`] masks attention scores.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskMode {
    None = 0,
    /// Lower-triangular, aligned to the end of the keys (queries are the last positions).
    Causal = 1,
    /// An explicit boolean (true = attend) or additive float mask, broadcastable to the scores.
    Array = 2,
}

/// Kind of a metadata entry in a loaded file (see [`OpsTable::bundle_meta`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKind {
    /// A string (safetensors metadata, GGUF strings).
    String = 0,
    /// A list of strings (GGUF vocabularies, merges).
    Strings = 1,
    /// An array (GGUF numbers and numeric lists).
    Array = 2,
    /// No value (an empty GGUF entry).
    Empty = 3,
}

/// Devices as codes (`0` = cpu, `1` = gpu).
pub const DEVICE_CPU: u32 = 0;
pub const DEVICE_GPU: u32 = 1;

/// Function-pointer table filled by the engine. Field order is ABI: append only.
#[repr(C)]
pub struct OpsTable {
    /// `size_of::<OpsTable>()` as compiled into the engine that filled it.
    pub size: usize,

    // --- errors and lifetime -------------------------------------------------------------
    /// Message of the last failed call on this thread (UTF-8, not NUL-terminated).
    pub last_error: unsafe extern "C" fn(msg: *mut *const c_char, len: *mut usize),
    pub array_free: unsafe extern "C" fn(a: Handle),
    /// A second handle to the same (immutable) array.
    pub array_clone: unsafe extern "C" fn(a: Handle, out: *mut Handle) -> Status,

    // --- construction and read-back -------------------------------------------------------
    /// Copies `nbytes` from `data`; `nbytes` must equal product(shape) * itemsize(dtype).
    pub array_from_data: unsafe extern "C" fn(
        data: *const c_void,
        nbytes: usize,
        shape: *const i32,
        ndim: usize,
        dtype: u32,
        out: *mut Handle,
    ) -> Status,
    pub array_full:
        unsafe extern "C" fn(shape: *const i32, ndim: usize, value: f64, dtype: u32, out: *mut Handle) -> Status,
    pub array_arange: unsafe extern "C" fn(start: f64, stop: f64, step: f64, dtype: u32, out: *mut Handle) -> Status,
    pub array_ndim: unsafe extern "C" fn(a: Handle) -> usize,
    /// Writes up to `cap` dimensions into `out` and returns the number of dimensions.
    pub array_shape: unsafe extern "C" fn(a: Handle, out: *mut i32, cap: usize) -> usize,
    pub array_dtype: unsafe extern "C" fn(a: Handle) -> u32,
    pub array_size: unsafe extern "C" fn(a: Handle) -> usize,
    /// Evaluates `a`, and copies its elements in row-major order into `out`; `nbytes` must equal
    /// size * itemsize of the array's own dtype.
    pub array_read: unsafe extern "C" fn(a: Handle, out: *mut c_void, nbytes: usize) -> Status,
    pub astype: unsafe extern "C" fn(a: Handle, dtype: u32, out: *mut Handle) -> Status,
    pub eval: unsafe extern "C" fn(arrays: *const Handle, n: usize) -> Status,
    pub async_eval: unsafe extern "C" fn(arrays: *const Handle, n: usize) -> Status,

    // --- element-wise -----------------------------------------------------------------------
    pub unary: unsafe extern "C" fn(op: u32, a: Handle, out: *mut Handle) -> Status,
    pub binary: unsafe extern "C" fn(op: u32, a: Handle, b: Handle, out: *mut Handle) -> Status,
    pub where_: unsafe extern "C" fn(cond: Handle, a: Handle, b: Handle, out: *mut Handle) -> Status,

    // --- linear algebra and quantization ----------------------------------------------------
    pub matmul: unsafe extern "C" fn(a: Handle, b: Handle, out: *mut Handle) -> Status,
    /// `beta * c + alpha * (a @ b)`.
    pub addmm: unsafe extern "C" fn(c: Handle, a: Handle, b: Handle, alpha: f32, beta: f32, out: *mut Handle) -> Status,
    /// Affine quantization of `w` along its last axis.
    pub quantize: unsafe extern "C" fn(
        w: Handle,
        group_size: i32,
        bits: i32,
        out_wq: *mut Handle,
        out_scales: *mut Handle,
        out_biases: *mut Handle,
    ) -> Status,
    pub dequantize: unsafe extern "C" fn(
        wq: Handle,
        scales: Handle,
        biases: Handle,
        group_size: i32,
        bits: i32,
        out: *mut Handle,
    ) -> Status,
    pub quantized_matmul: unsafe extern "C" fn(
        x: Handle,
        wq: Handle,
        scales: Handle,
        biases: Handle,
        transpose: bool,
        group_size: i32,
        bits: i32,
        out: *mut Handle,
    ) -> Status,

    // --- shape ------------------------------------------------------------------------------
    pub reshape: unsafe extern "C" fn(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status,
    /// `n == 0` reverses the axes.
    pub transpose: unsafe extern "C" fn(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status,
    pub swapaxes: unsafe extern "C" fn(a: Handle, axis1: i32, axis2: i32, out: *mut Handle) -> Status,
    pub expand_dims: unsafe extern "C" fn(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status,
    /// `n == 0` removes every axis of size 1.
    pub squeeze: unsafe extern "C" fn(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status,
    pub broadcast_to: unsafe extern "C" fn(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status,
    pub concatenate: unsafe extern "C" fn(arrays: *const Handle, n: usize, axis: i32, out: *mut Handle) -> Status,
    /// Splits at `indices` along `axis` into `n_indices + 1` parts written to `out[..]`;
    /// `out_cap` must be at least `n_indices + 1`.
    pub split: unsafe extern "C" fn(
        a: Handle,
        indices: *const i32,
        n_indices: usize,
        axis: i32,
        out: *mut Handle,
        out_cap: usize,
    ) -> Status,
    /// Strided slice with one `start/stop/stride` per axis (`n == ndim`).
    pub slice: unsafe extern "C" fn(
        a: Handle,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        n: usize,
        out: *mut Handle,
    ) -> Status,
    /// Copy of `src` with the strided region replaced by `update`.
    pub slice_update: unsafe extern "C" fn(
        src: Handle,
        update: Handle,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        n: usize,
        out: *mut Handle,
    ) -> Status,
    pub take: unsafe extern "C" fn(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status,
    pub take_along_axis: unsafe extern "C" fn(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status,
    pub put_along_axis:
        unsafe extern "C" fn(a: Handle, indices: Handle, values: Handle, axis: i32, out: *mut Handle) -> Status,

    // --- reductions, sorting, scans ---------------------------------------------------------
    /// `n == 0` reduces over every axis.
    pub reduce: unsafe extern "C" fn(
        op: u32,
        a: Handle,
        axes: *const i32,
        n: usize,
        keepdims: bool,
        out: *mut Handle,
    ) -> Status,
    pub softmax: unsafe extern "C" fn(a: Handle, axes: *const i32, n: usize, precise: bool, out: *mut Handle) -> Status,
    pub logsumexp:
        unsafe extern "C" fn(a: Handle, axes: *const i32, n: usize, keepdims: bool, out: *mut Handle) -> Status,
    pub argmax: unsafe extern "C" fn(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status,
    pub argmin: unsafe extern "C" fn(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status,
    pub sort: unsafe extern "C" fn(a: Handle, axis: i32, out: *mut Handle) -> Status,
    pub argsort: unsafe extern "C" fn(a: Handle, axis: i32, out: *mut Handle) -> Status,
    pub argpartition: unsafe extern "C" fn(a: Handle, kth: i32, axis: i32, out: *mut Handle) -> Status,
    /// The `k` largest values along `axis` (unordered, as MLX returns them).
    pub topk: unsafe extern "C" fn(a: Handle, k: i32, axis: i32, out: *mut Handle) -> Status,
    pub cumsum: unsafe extern "C" fn(a: Handle, axis: i32, reverse: bool, inclusive: bool, out: *mut Handle) -> Status,

    // --- fused kernels (mlx::core::fast) ----------------------------------------------------
    /// `weight` may be null (no scaling).
    pub rms_norm: unsafe extern "C" fn(x: Handle, weight: Handle, eps: f32, out: *mut Handle) -> Status,
    /// `weight` and `bias` may be null.
    pub layer_norm: unsafe extern "C" fn(x: Handle, weight: Handle, bias: Handle, eps: f32, out: *mut Handle) -> Status,
    /// Rotary embedding over the last axis' first `dims` features at absolute position
    /// `offset` + index along axis -2. With `freqs` non-null, `base` is ignored.
    pub rope: unsafe extern "C" fn(
        x: Handle,
        dims: i32,
        traditional: bool,
        base: f32,
        scale: f32,
        offset: i32,
        freqs: Handle,
        out: *mut Handle,
    ) -> Status,
    /// `q [B, Hq, Lq, D]`, `k`/`v [B, Hkv, Lk, D]` (grouped-query heads allowed).
    pub sdpa: unsafe extern "C" fn(
        q: Handle,
        k: Handle,
        v: Handle,
        scale: f32,
        mask_mode: u32,
        mask: Handle,
        out: *mut Handle,
    ) -> Status,

    // --- random -----------------------------------------------------------------------------
    pub random_seed: unsafe extern "C" fn(seed: u64) -> Status,
    pub random_key: unsafe extern "C" fn(seed: u64, out: *mut Handle) -> Status,
    /// `num` new keys as an array of shape `[num, 2]`.
    pub random_split: unsafe extern "C" fn(key: Handle, num: i32, out: *mut Handle) -> Status,
    /// Samples indices along `axis` from unnormalised log-probabilities; `key` may be null.
    pub random_categorical: unsafe extern "C" fn(logits: Handle, axis: i32, key: Handle, out: *mut Handle) -> Status,
    pub random_uniform: unsafe extern "C" fn(
        shape: *const i32,
        ndim: usize,
        low: f64,
        high: f64,
        dtype: u32,
        key: Handle,
        out: *mut Handle,
    ) -> Status,
    pub random_normal: unsafe extern "C" fn(
        shape: *const i32,
        ndim: usize,
        loc: f64,
        scale: f64,
        dtype: u32,
        key: Handle,
        out: *mut Handle,
    ) -> Status,

    // --- convolution ------------------------------------------------------------------------
    /// NHWC input, `[C_out, KH, KW, C_in / groups]` weight; `stride`, `padding`, `dilation`
    /// point at two values each.
    pub conv2d: unsafe extern "C" fn(
        x: Handle,
        w: Handle,
        stride: *const i32,
        padding: *const i32,
        dilation: *const i32,
        groups: i32,
        out: *mut Handle,
    ) -> Status,

    // --- files ------------------------------------------------------------------------------
    pub load_safetensors: unsafe extern "C" fn(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status,
    pub load_gguf: unsafe extern "C" fn(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status,
    pub bundle_free: unsafe extern "C" fn(b: BundleHandle),
    pub bundle_num_arrays: unsafe extern "C" fn(b: BundleHandle) -> usize,
    /// Entry `i`: its name (borrowed from the bundle) and a new owned handle.
    pub bundle_array: unsafe extern "C" fn(
        b: BundleHandle,
        i: usize,
        name: *mut *const c_char,
        name_len: *mut usize,
        out: *mut Handle,
    ) -> Status,
    pub bundle_num_meta: unsafe extern "C" fn(b: BundleHandle) -> usize,
    /// Metadata entry `i`: key (borrowed), [`MetaKind`], the number of strings (for `Strings`,
    /// 1 for `String`), and for `Array` a new owned handle.
    pub bundle_meta: unsafe extern "C" fn(
        b: BundleHandle,
        i: usize,
        key: *mut *const c_char,
        key_len: *mut usize,
        kind: *mut u32,
        n_strings: *mut usize,
        out: *mut Handle,
    ) -> Status,
    /// String `j` of metadata entry `i` (borrowed from the bundle).
    pub bundle_meta_string:
        unsafe extern "C" fn(b: BundleHandle, i: usize, j: usize, s: *mut *const c_char, len: *mut usize) -> Status,
    /// Writes `n` arrays and `n_meta` string metadata entries as one safetensors file.
    pub save_safetensors: unsafe extern "C" fn(
        path: *const c_char,
        path_len: usize,
        names: *const *const c_char,
        name_lens: *const usize,
        arrays: *const Handle,
        n: usize,
        meta_keys: *const *const c_char,
        meta_key_lens: *const usize,
        meta_values: *const *const c_char,
        meta_value_lens: *const usize,
        n_meta: usize,
    ) -> Status,

    // --- memory -----------------------------------------------------------------------------
    pub memory: unsafe extern "C" fn(counter: u32) -> usize,
    pub reset_peak_memory: unsafe extern "C" fn(),
    pub clear_cache: unsafe extern "C" fn(),
    /// Returns the previous limit.
    pub set_memory_limit: unsafe extern "C" fn(bytes: usize) -> usize,
    /// Returns the previous limit.
    pub set_cache_limit: unsafe extern "C" fn(bytes: usize) -> usize,

    // --- devices and streams ----------------------------------------------------------------
    pub device_available: unsafe extern "C" fn(device: u32) -> bool,
    pub set_default_device: unsafe extern "C" fn(device: u32) -> Status,
    pub default_device: unsafe extern "C" fn() -> u32,
    /// A new stream on `device`; writes its index.
    pub new_stream: unsafe extern "C" fn(device: u32, out_index: *mut i32) -> Status,
    /// Makes stream `index` (on `device`) this thread's default for its device.
    pub set_default_stream: unsafe extern "C" fn(device: u32, index: i32) -> Status,
    /// This thread's default stream index for `device`.
    pub default_stream: unsafe extern "C" fn(device: u32, out_index: *mut i32) -> Status,
    /// Waits for all work on stream `index` (`-1`: this thread's default stream) of `device`.
    pub synchronize: unsafe extern "C" fn(device: u32, index: i32) -> Status,
}
