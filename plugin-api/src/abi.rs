//! The plugin ABI: version, descriptor, and the `#[repr(C)]` vtables that carry objects across
//! the boundary. The rules (ownership, errors, versioning) are in `docs/adr/0001-plugin-abi.md`.
//!
//! Layout rules that hold for the whole of ABI major 1:
//! - The first three fields of [`PluginDescriptor`] (`size`, `abi_major`, `abi_minor`) never move,
//!   so any engine can read them from any plugin before trusting anything else.
//! - Every table ([`OpsTable`], the descriptor, every vtable, [`AttentionOptionsFfi`]) starts
//!   with its `size` and only grows at the end. A reader refuses a table smaller than the layout
//!   of the minor its writer declares, and uses an entry added in a later minor only when the
//!   `size` covers it ([`has_entry!`](crate::has_entry)).
//! - [`layout_fingerprint`]`(m)` hashes the offsets of the fields of minors `<= m`; a plugin
//!   records the fingerprint of its own minor, and the engine compares it with its own value
//!   for that minor (a field moved, inserted or removed without a major bump).
//! - Growth rules and what 1.1 added: `docs/adr/0003-abi-1-1.md`.

use std::ffi::c_void;

use crate::error::{Error, Result};
use crate::ops_table::{GroupHandle, Handle, OpsTable, Status};

/// Incompatible changes bump the major; the engine refuses any other major.
pub const ABI_MAJOR: u32 = 1;
/// Additions (entries appended to a table) bump the minor; a plugin built for minor `m` loads
/// into an engine of minor `>= m`.
pub const ABI_MINOR: u32 = 4;

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
        self.send(&e.to_string());
    }

    /// Hands `text` to the caller (the same mechanism carries results such as a GGUF config).
    pub fn send(&self, text: &str) {
        // SAFETY: the caller provided a valid sink for this call; `text` lives across it.
        unsafe { (self.set)(self.ctx, text.as_ptr(), text.len()) }
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

    /// The text the callee sent, if any (for sinks that carry results).
    pub fn into_text(self) -> Option<String> {
        self.0
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

/// Kind codes of [`PositionsFfi`] (the variants of [`Positions`](crate::Positions)).
pub const POSITIONS_OFFSET: u32 = 0;
pub const POSITIONS_PER_ROW: u32 = 1;
pub const POSITIONS_EXPLICIT: u32 = 2;

/// [`ForwardCtxVTable::positions`]' answer: `offset` for [`POSITIONS_OFFSET`], else `array`
/// (an owned handle the receiver frees).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PositionsFfi {
    pub kind: u32,
    pub offset: i32,
    pub array: Handle,
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
    // --- 1.1 ---
    /// Where the pass's tokens sit ([`Positions`](crate::Positions)), for batches whose rows
    /// start at different positions and for explicit positions.
    pub positions:
        unsafe extern "C" fn(this: *mut c_void, layer: usize, out: *mut PositionsFfi, err: *const ErrSink) -> Status,
    // --- 1.4 ---
    /// Whether the caller reads only the pass's last position
    /// ([`ForwardContext::last_position_only`](crate::ForwardContext::last_position_only)):
    /// writes 1 or 0.
    pub last_position_only: unsafe extern "C" fn(this: *mut c_void, out: *mut u32, err: *const ErrSink) -> Status,
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
    // --- 1.1: the layout queries again, with an error channel (1.0's `num_layers` cannot fail
    // and `layer_cache` drops its message) ---
    pub try_num_layers: unsafe extern "C" fn(this: *mut c_void, out: *mut usize, err: *const ErrSink) -> Status,
    pub try_layer_cache:
        unsafe extern "C" fn(this: *mut c_void, layer: usize, out: *mut CacheSpec, err: *const ErrSink) -> Status,
    /// [`ModelArch::embeddings_scale`](crate::ModelArch::embeddings_scale). A 1.0 plugin has
    /// no entry and declares no scale (1).
    pub embeddings_scale: unsafe extern "C" fn(this: *mut c_void, out: *mut f32, err: *const ErrSink) -> Status,
    // --- 1.2 ---
    /// [`ModelArch::shard`](crate::ModelArch::shard): splits the model's weights for tensor
    /// parallelism over `group` (borrowed for the call; the plugin clones what it keeps). Called
    /// at most once, after creation and before any other call but the layout queries, which
    /// the engine repeats after it. A 1.0/1.1 plugin has no entry and cannot be sharded.
    pub shard: unsafe extern "C" fn(this: *mut c_void, group: GroupHandle, err: *const ErrSink) -> Status,
    // --- 1.3 ---
    /// [`ModelArch::pipeline`](crate::ModelArch::pipeline): keeps this rank's contiguous slice
    /// of the layers of a pipeline split over `group` (borrowed for the call). Called at most
    /// once, instead of `shard`, under the same rules; the layout queries then describe the
    /// rank's layers only. A 1.0-1.2 plugin has no entry and cannot be split so.
    pub pipeline: unsafe extern "C" fn(this: *mut c_void, group: GroupHandle, err: *const ErrSink) -> Status,
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
    // --- 1.1: the engine runs the pipeline (decoding, preprocessing, prompt expansion, a
    // feature memo); 1.0's `merge` of raw images is answered with an error by 1.1 plugins ---
    /// [`VisionAddOn::image_prompt`](crate::VisionAddOn::image_prompt): writes the placeholder
    /// and the expansion through the two text sinks.
    pub image_prompt: unsafe extern "C" fn(
        this: *mut c_void,
        height: i32,
        width: i32,
        placeholder: *const ErrSink,
        expansion: *const ErrSink,
        err: *const ErrSink,
    ) -> Status,
    /// [`VisionAddOn::encode`](crate::VisionAddOn::encode).
    pub encode:
        unsafe extern "C" fn(this: *mut c_void, pixels: Handle, out: *mut Handle, err: *const ErrSink) -> Status,
    /// [`VisionAddOn::merge`](crate::VisionAddOn::merge).
    pub merge_features: unsafe extern "C" fn(
        this: *mut c_void,
        input_ids: Handle,
        text_embeddings: Handle,
        features: *const Handle,
        n_features: usize,
        embeddings_scale: f32,
        out: *mut Handle,
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

/// [`PluginDescriptor::gguf_config`].
pub type GgufConfigFn =
    unsafe extern "C" fn(model_type: StrRef, gguf_json: StrRef, out: *const ErrSink, err: *const ErrSink) -> Status;
/// [`PluginDescriptor::dtype_policy`].
pub type DtypePolicyFn = unsafe extern "C" fn(
    model_type: StrRef,
    names: *const StrRef,
    n: usize,
    out: *mut u32,
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
    // --- 1.1 ---
    /// How the plugin was built to handle panics ([`PANIC_UNWIND`] or [`PANIC_ABORT`]),
    /// recorded by [`export_plugin!`](crate::export_plugin) from the plugin's own build.
    pub panic_strategy: u32,
    /// The `config.json` of a GGUF file for text model type `model_type` (the file's
    /// `general.architecture`): `gguf_json` is a [`GgufInfo`](crate::gguf::GgufInfo) as JSON;
    /// the plugin writes the config JSON through `out` (borrowed for the call), or nothing when
    /// the architecture does not load GGUF.
    pub gguf_config: GgufConfigFn,
    /// Writes one [`DtypePolicy`](crate::DtypePolicy) code to `out[i]` for each tensor name.
    pub dtype_policy: DtypePolicyFn,
}

/// [`PluginDescriptor::panic_strategy`]: panics unwind, so `catch_unwind` contains them.
pub const PANIC_UNWIND: u32 = 1;
/// [`PluginDescriptor::panic_strategy`]: built with `panic = "abort"`, so any panic would end the
/// engine's process; the engine refuses such plugins.
pub const PANIC_ABORT: u32 = 2;

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

crate::abi_layout!(PluginDescriptor {
    0 => [
        size, abi_major, abi_minor, layout_fingerprint, name, version, text_types, n_text_types, vision_types,
        n_vision_types, init, create_model, create_vision,
    ],
    1 => [panic_strategy, gguf_config, dtype_policy],
});
crate::abi_layout!(ModelVTable {
    0 => [size, destroy, num_layers, layer_cache, forward, embed_tokens],
    1 => [try_num_layers, try_layer_cache, embeddings_scale],
    2 => [shard],
    3 => [pipeline],
});
crate::abi_layout!(VisionVTable { 0 => [size, destroy, merge], 1 => [image_prompt, encode, merge_features] });
crate::abi_layout!(ForwardCtxVTable { 0 => [size, offset, attention], 1 => [positions], 4 => [last_position_only] });
crate::abi_layout!(AttentionOptionsFfi { 0 => [size, logit_softcap] });
crate::abi_layout!(ErrSink { 0 => [ctx, set] });
crate::abi_layout!(WeightEntry { 0 => [name, array] });
crate::abi_layout!(CacheSpec { 0 => [kind, window] });
crate::abi_layout!(StrRef { 0 => [ptr, len] });
crate::abi_layout!(PositionsFfi { 1 => [kind, offset, array] });

/// The layout fingerprint of ABI minor `minor` (of this major): pointer width, then every
/// boundary struct's alignment and the offsets of its fields of minors `<= minor`. The order
/// of the structs is fixed; a struct added in a later minor is appended to the end of the chain.
pub const fn layout_fingerprint(minor: u32) -> u64 {
    let h = crate::layout::fnv(0xcbf29ce484222325, std::mem::size_of::<usize>() as u64);
    let h = PluginDescriptor::layout_hash(h, minor);
    let h = ModelVTable::layout_hash(h, minor);
    let h = VisionVTable::layout_hash(h, minor);
    let h = ForwardCtxVTable::layout_hash(h, minor);
    let h = AttentionOptionsFfi::layout_hash(h, minor);
    let h = ErrSink::layout_hash(h, minor);
    let h = WeightEntry::layout_hash(h, minor);
    let h = CacheSpec::layout_hash(h, minor);
    let h = StrRef::layout_hash(h, minor);
    let h = OpsTable::layout_hash(h, minor);
    PositionsFfi::layout_hash(h, minor)
}

/// `layout_fingerprint(0)` on 64-bit targets: the value the released 1.0 crate computed and its
/// plugins record (checked against it by a test, and by loading a real 1.0 plugin).
pub const ABI_1_0_FINGERPRINT_64: u64 = 0x6bc6_f62a_0ca2_cf79;

/// `layout_fingerprint(1)` on 64-bit targets: what ABI 1.1 plugins record.
pub const ABI_1_1_FINGERPRINT_64: u64 = 0xe706_242e_0dce_d26f;

/// `layout_fingerprint(2)` on 64-bit targets: what ABI 1.2 plugins record.
pub const ABI_1_2_FINGERPRINT_64: u64 = 0x1a43_a5a7_7e6b_e454;

/// `layout_fingerprint(3)` on 64-bit targets: what ABI 1.3 plugins record.
pub const ABI_1_3_FINGERPRINT_64: u64 = 0x98fb_77e6_2cac_5744;

/// The fingerprint of this crate's own minor, which its plugins record in their descriptor.
pub const LAYOUT_FINGERPRINT: u64 = layout_fingerprint(ABI_MINOR);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_of_minor_0_is_the_one_abi_1_0_shipped() {
        // The value `LAYOUT_FINGERPRINT` had in the released 1.0 crate (tests/abi-1.0/plugin-api)
        // on 64-bit targets: 1.0 plugins record it, so it must never change.
        if std::mem::size_of::<usize>() == 8 {
            assert_eq!(layout_fingerprint(0), ABI_1_0_FINGERPRINT_64);
        }
        assert_ne!(layout_fingerprint(0), layout_fingerprint(1));
        // 1.1 plugins record this one: 1.2 only appended, so it must not move either.
        if std::mem::size_of::<usize>() == 8 {
            assert_eq!(layout_fingerprint(1), ABI_1_1_FINGERPRINT_64);
            // And 1.2 plugins this one (1.3 appended `pipeline`), 1.3 plugins the next (1.4
            // appended `last_position_only`).
            assert_eq!(layout_fingerprint(2), ABI_1_2_FINGERPRINT_64);
            assert_eq!(layout_fingerprint(3), ABI_1_3_FINGERPRINT_64);
        }
    }

    #[test]
    fn sizes_per_minor_grow_only_where_entries_were_added() {
        assert!(PluginDescriptor::size_at_minor(0) < PluginDescriptor::size_at_minor(1));
        assert!(ModelVTable::size_at_minor(0) < ModelVTable::size_at_minor(1));
        assert!(VisionVTable::size_at_minor(0) < VisionVTable::size_at_minor(1));
        assert_eq!(ModelVTable::size_at_minor(ABI_MINOR), std::mem::size_of::<ModelVTable>());
        assert_eq!(ModelVTable::size_at_minor(0), std::mem::offset_of!(ModelVTable, try_num_layers));
        assert!(!crate::has_entry!(ModelVTable::size_at_minor(0), ModelVTable, try_num_layers));
        assert!(crate::has_entry!(ModelVTable::size_at_minor(1), ModelVTable, try_layer_cache));
        assert!(ModelVTable::size_at_minor(1) < ModelVTable::size_at_minor(2));
        assert!(!crate::has_entry!(ModelVTable::size_at_minor(1), ModelVTable, shard));
        assert_ne!(layout_fingerprint(1), layout_fingerprint(2));
        assert!(ModelVTable::size_at_minor(2) < ModelVTable::size_at_minor(3));
        assert!(!crate::has_entry!(ModelVTable::size_at_minor(2), ModelVTable, pipeline));
        assert_ne!(layout_fingerprint(2), layout_fingerprint(3));
    }
}
