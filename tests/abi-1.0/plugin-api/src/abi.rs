//! The plugin ABI: version, descriptor, and the `#[repr(C)]` vtables that carry objects across
//! the boundary. The rules (ownership, errors, versioning) are in `docs/adr/0001-plugin-abi.md`.
//!
//! Layout rules that hold for the whole of ABI major 1:
//! - The first three fields of [`PluginDescriptor`] (`size`, `abi_major`, `abi_minor`) never move,
//!   so any engine can read them from any plugin before trusting anything else.
//! - Every table ([`OpsTable`], the descriptor, every vtable) starts with its `size` and only
//!   grows at the end; a reader checks `size` before touching an entry added in a later minor.
//! - [`LAYOUT_FINGERPRINT`] hashes the offsets of the fields of ABI 1.0; both sides compute it
//!   and the engine refuses a plugin whose value differs (a field moved, inserted or removed).

use std::ffi::c_void;

use crate::error::{Error, Result};
use crate::ops_table::{Handle, OpsTable, Status};

/// Incompatible changes bump the major; the engine refuses any other major.
pub const ABI_MAJOR: u32 = 1;
/// Additions (entries appended to a table) bump the minor; a plugin built for minor `m` loads
/// into an engine of minor `>= m`.
pub const ABI_MINOR: u32 = 0;

/// The symbol every plugin exports: `extern "C" fn() -> *const PluginDescriptor`.
pub const DESCRIPTOR_SYMBOL: &str = "mlx_engine_plugin_descriptor";
pub type DescriptorFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// A borrowed UTF-8 string (not NUL-terminated).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrRef {
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: a StrRef is a read-only view; the ones stored in statics point at 'static string
// literals, and the others only live for the duration of one call.
unsafe impl Sync for StrRef {}
// SAFETY: as above.
unsafe impl Send for StrRef {}

impl StrRef {
    pub const fn from_static(s: &'static str) -> StrRef {
        StrRef { ptr: s.as_ptr(), len: s.len() }
    }

    pub fn new(s: &str) -> StrRef {
        StrRef { ptr: s.as_ptr(), len: s.len() }
    }

    /// # Safety
    /// `ptr/len` must describe live bytes for `'a`.
    pub unsafe fn as_str<'a>(&self) -> Result<&'a str> {
        if self.ptr.is_null() {
            return Ok("");
        }
        // SAFETY: guaranteed by the caller.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        std::str::from_utf8(bytes).map_err(|e| Error::Abi(format!("string is not UTF-8: {e}")))
    }
}

/// Where the callee writes an error message: it calls `set` with a string borrowed for the
/// duration of that call, and the caller copies it. So no allocation ever changes sides.
#[repr(C)]
pub struct ErrSink {
    pub ctx: *mut c_void,
    pub set: unsafe extern "C" fn(ctx: *mut c_void, msg: *const u8, len: usize),
}

impl ErrSink {
    /// Reports `e` to the caller.
    pub fn report(&self, e: &Error) {
        let msg = e.to_string();
        // SAFETY: the caller provided a valid sink for this call; `msg` lives across it.
        unsafe { (self.set)(self.ctx, msg.as_ptr(), msg.len()) }
    }
}

/// Receives an error message through an [`ErrSink`].
#[derive(Default)]
pub struct ErrorSlot(Option<String>);

unsafe extern "C" fn slot_set(ctx: *mut c_void, msg: *const u8, len: usize) {
    // SAFETY: `ctx` is the `ErrorSlot` that made the sink and outlives the call; msg/len are live.
    unsafe {
        let slot = &mut *(ctx as *mut ErrorSlot);
        let bytes = std::slice::from_raw_parts(msg, len);
        slot.0 = Some(String::from_utf8_lossy(bytes).into_owned());
    }
}

impl ErrorSlot {
    pub fn sink(&mut self) -> ErrSink {
        ErrSink { ctx: self as *mut ErrorSlot as *mut c_void, set: slot_set }
    }

    /// The error for a failed call: the message the callee reported, or a generic one.
    pub fn into_error(self, what: &str) -> Error {
        Error::Boundary(self.0.unwrap_or_else(|| format!("{what} failed without a message")))
    }
}

/// Cache kind codes of [`CacheSpec`].
pub const CACHE_FULL: u32 = 0;
pub const CACHE_SLIDING: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheSpec {
    pub kind: u32,
    pub window: u32,
}

/// Input kind codes of [`ModelVTable::forward`].
pub const INPUT_TOKENS: u32 = 0;
pub const INPUT_EMBEDDINGS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptionsFfi {
    pub size: usize,
    /// 0 = no softcapping.
    pub logit_softcap: f32,
}

/// One named weight, borrowed for the duration of a constructor call.
#[repr(C)]
pub struct WeightEntry {
    pub name: StrRef,
    pub array: Handle,
}

/// The engine's forward context as seen by a plugin.
#[repr(C)]
pub struct ForwardCtxObject {
    pub this: *mut c_void,
    pub vtable: *const ForwardCtxVTable,
}

#[repr(C)]
pub struct ForwardCtxVTable {
    pub size: usize,
    pub offset: unsafe extern "C" fn(this: *mut c_void, layer: usize, out: *mut i32, err: *const ErrSink) -> Status,
    pub attention: unsafe extern "C" fn(
        this: *mut c_void,
        layer: usize,
        q: Handle,
        k: Handle,
        v: Handle,
        scale: f32,
        options: *const AttentionOptionsFfi,
        out: *mut Handle,
        err: *const ErrSink,
    ) -> Status,
}

/// A plugin's text model as seen by the engine. The engine calls `destroy` exactly once.
#[repr(C)]
pub struct ModelObject {
    pub this: *mut c_void,
    pub vtable: *const ModelVTable,
}

#[repr(C)]
pub struct ModelVTable {
    pub size: usize,
    pub destroy: unsafe extern "C" fn(this: *mut c_void),
    pub num_layers: unsafe extern "C" fn(this: *mut c_void) -> usize,
    pub layer_cache: unsafe extern "C" fn(this: *mut c_void, layer: usize, out: *mut CacheSpec) -> Status,
    pub forward: unsafe extern "C" fn(
        this: *mut c_void,
        input_kind: u32,
        input: Handle,
        ctx: *const ForwardCtxObject,
        out: *mut Handle,
        err: *const ErrSink,
    ) -> Status,
    pub embed_tokens:
        unsafe extern "C" fn(this: *mut c_void, ids: Handle, out: *mut Handle, err: *const ErrSink) -> Status,
}

/// A plugin's vision add-on as seen by the engine. The engine calls `destroy` exactly once.
#[repr(C)]
pub struct VisionObject {
    pub this: *mut c_void,
    pub vtable: *const VisionVTable,
}

#[repr(C)]
pub struct VisionVTable {
    pub size: usize,
    pub destroy: unsafe extern "C" fn(this: *mut c_void),
    pub merge: unsafe extern "C" fn(
        this: *mut c_void,
        input_ids: Handle,
        text_embeddings: Handle,
        images: *const Handle,
        n_images: usize,
        out_ids: *mut Handle,
        out_embeddings: *mut Handle,
        err: *const ErrSink,
    ) -> Status,
}

pub type CreateFn<O> = unsafe extern "C" fn(
    model_type: StrRef,
    config_json: StrRef,
    weights: *const WeightEntry,
    n_weights: usize,
    format: u32,
    out: *mut O,
    err: *const ErrSink,
) -> Status;

/// What a plugin exports. Lives in the plugin's static data for as long as it is loaded.
#[repr(C)]
pub struct PluginDescriptor {
    pub size: usize,
    pub abi_major: u32,
    pub abi_minor: u32,
    pub layout_fingerprint: u64,
    pub name: StrRef,
    pub version: StrRef,
    pub text_types: *const StrRef,
    pub n_text_types: usize,
    pub vision_types: *const StrRef,
    pub n_vision_types: usize,
    /// Hands the engine's ops table to the plugin; called once, before anything else.
    pub init: unsafe extern "C" fn(ops: *const OpsTable, err: *const ErrSink) -> Status,
    pub create_model: CreateFn<ModelObject>,
    pub create_vision: CreateFn<VisionObject>,
}

// SAFETY: a descriptor is immutable static data (string literals and function pointers).
unsafe impl Sync for PluginDescriptor {}

impl PluginDescriptor {
    /// The model types this plugin declares (text architectures, vision add-ons).
    ///
    /// # Safety
    /// The descriptor must come from a loaded plugin (its pointers valid for `'a`).
    pub unsafe fn types<'a>(&self) -> Result<(Vec<&'a str>, Vec<&'a str>)> {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let read = |p: *const StrRef, n: usize| -> Result<Vec<&'a str>> {
                if n == 0 {
                    return Ok(Vec::new());
                }
                std::slice::from_raw_parts(p, n).iter().map(|s| s.as_str()).collect()
            };
            Ok((read(self.text_types, self.n_text_types)?, read(self.vision_types, self.n_vision_types)?))
        }
    }
}

const fn fnv(mut h: u64, v: u64) -> u64 {
    let mut i = 0;
    while i < 8 {
        h ^= (v >> (i * 8)) & 0xff;
        h = h.wrapping_mul(0x100000001b3);
        i += 1;
    }
    h
}

macro_rules! hash_offsets {
    ($h:expr, $t:ty, $($f:ident),*) => {{
        let mut h = fnv($h, std::mem::align_of::<$t>() as u64);
        $( h = fnv(h, std::mem::offset_of!($t, $f) as u64); )*
        h
    }};
}

/// Hash of the offsets of every ABI 1.0 field (plus pointer width). Fields appended in later
/// minors are deliberately not part of it: they are guarded by the tables' `size`.
pub const LAYOUT_FINGERPRINT: u64 = {
    let h = fnv(0xcbf29ce484222325, std::mem::size_of::<usize>() as u64);
    let h = hash_offsets!(
        h,
        PluginDescriptor,
        size,
        abi_major,
        abi_minor,
        layout_fingerprint,
        name,
        version,
        text_types,
        n_text_types,
        vision_types,
        n_vision_types,
        init,
        create_model,
        create_vision
    );
    let h = hash_offsets!(h, ModelVTable, size, destroy, num_layers, layer_cache, forward, embed_tokens);
    let h = hash_offsets!(h, VisionVTable, size, destroy, merge);
    let h = hash_offsets!(h, ForwardCtxVTable, size, offset, attention);
    let h = hash_offsets!(h, AttentionOptionsFfi, size, logit_softcap);
    let h = hash_offsets!(h, ErrSink, ctx, set);
    let h = hash_offsets!(h, WeightEntry, name, array);
    let h = hash_offsets!(h, CacheSpec, kind, window);
    let h = hash_offsets!(h, StrRef, ptr, len);
    hash_offsets!(
        h,
        OpsTable,
        size,
        last_error,
        array_free,
        array_clone,
        array_from_data,
        array_full,
        array_arange,
        array_ndim,
        array_shape,
        array_dtype,
        array_size,
        array_read,
        astype,
        eval,
        async_eval,
        unary,
        binary,
        where_,
        matmul,
        addmm,
        quantize,
        dequantize,
        quantized_matmul,
        reshape,
        transpose,
        swapaxes,
        expand_dims,
        squeeze,
        broadcast_to,
        concatenate,
        split,
        slice,
        slice_update,
        take,
        take_along_axis,
        put_along_axis,
        reduce,
        softmax,
        logsumexp,
        argmax,
        argmin,
        sort,
        argsort,
        argpartition,
        topk,
        cumsum,
        rms_norm,
        layer_norm,
        rope,
        sdpa,
        random_seed,
        random_key,
        random_split,
        random_categorical,
        random_uniform,
        random_normal,
        conv2d,
        load_safetensors,
        load_gguf,
        bundle_free,
        bundle_num_arrays,
        bundle_array,
        bundle_num_meta,
        bundle_meta,
        bundle_meta_string,
        save_safetensors,
        memory,
        reset_peak_memory,
        clear_cache,
        set_memory_limit,
        set_cache_limit,
        device_available,
        set_default_device,
        default_device,
        new_stream,
        set_default_stream,
        default_stream,
        synchronize
    )
};
