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
/// Opaque compiled function ([`OpsTable::compile`]), released with `compiled_free`.
pub type CompiledHandle = *mut c_void;
/// Opaque distributed group ([`OpsTable::dist_init`], ABI 1.2), released with `dist_group_free`.
pub type GroupHandle = *mut c_void;

/// A plugin-side function that MLX traces for [`OpsTable::compile`] (ABI 1.1).
///
/// Called with the `payload` given to `compile`, `n_inputs` borrowed handles and room for
/// `n_outputs` handles, which it fills with owned handles. It may be called from any thread that
/// calls the compiled function, and must not unwind. On failure it returns non-zero, copies up to
/// `msg_cap` bytes of its message (UTF-8) into `msg` and writes their number to `msg_len`; the
/// shim then frees whatever outputs were written and fails the call with that message.
pub type CompileFn = unsafe extern "C" fn(
    payload: *mut c_void,
    inputs: *const Handle,
    n_inputs: usize,
    outputs: *mut Handle,
    n_outputs: usize,
    msg: *mut c_char,
    msg_cap: usize,
    msg_len: *mut usize,
) -> Status;
/// Releases a [`CompileFn`]'s payload; must not unwind.
pub type FreePayloadFn = unsafe extern "C" fn(payload: *mut c_void);

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

/// How [`OpsTable::pad`] fills the new elements (ABI 1.1).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// The given value.
    Constant = 0,
    /// The nearest edge element.
    Edge = 1,
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

/// Writes the [`OpsTable`] struct from the list in [`ops_list`](crate::ops_list).
macro_rules! define_ops_table {
    ($($minor:literal => { $($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)* })+) => {
        /// Function-pointer table filled by the engine. Field order is ABI: append only (the
        /// entries and their docs are listed in `ops_list.rs`).
        #[repr(C)]
        pub struct OpsTable {
            /// The size of the table as compiled into the engine that filled it.
            pub size: usize,
            $($( $(#[$doc])* pub $name: unsafe extern "C" fn($($arg: $ty),*) $(-> $ret)?, )*)+
        }

        crate::abi_layout!(OpsTable { 0 => [size], $($minor => [$($name),*]),+ });
    };
}

crate::for_each_op!(define_ops_table);
