//! The engine's side of the boundary: plugin objects seen as [`DynModel`] / [`DynVision`], and
//! the engine's [`ForwardContext`] handed to plugins. Kept next to `export` so both halves of
//! every vtable are written (and changed) together.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::*;
use crate::array::Array;
use crate::error::{Error, Result};
use crate::export::{borrow, guard, positions_to_ffi};
use crate::ops_table::{GroupHandle, Handle, Status};
use crate::traits::*;

/// A text model living in a plugin. Destroyed through the plugin's vtable on drop; the engine
/// keeps the plugin library loaded for at least as long.
pub struct ForeignModel {
    obj: ModelObject,
    layout: Vec<LayerCache>,
    plugin_minor: u32,
}

// SAFETY: plugin models are `DynModel: Send` on their side; the object is only a pointer to it.
unsafe impl Send for ForeignModel {}

impl ForeignModel {
    /// Adopts a model object returned by the `create_model` of a plugin built for ABI minor
    /// `plugin_minor`.
    ///
    /// # Safety
    /// `obj` must be a live object from a plugin whose library outlives the result.
    pub unsafe fn new(obj: ModelObject, plugin_minor: u32) -> Result<ForeignModel> {
        // SAFETY: guaranteed by the caller.
        let vt = unsafe { &*obj.vtable };
        let needed = ModelVTable::size_at_minor(plugin_minor);
        if vt.size < needed {
            let size = vt.size;
            // SAFETY: destroy is part of every vtable version.
            unsafe { (vt.destroy)(obj.this) };
            return Err(Error::Abi(format!(
                "the model vtable has {size} bytes, ABI {ABI_MAJOR}.{plugin_minor} needs at least {needed}"
            )));
        }
        let mut m = ForeignModel { obj, layout: Vec::new(), plugin_minor };
        m.layout = m.read_layout()?;
        Ok(m)
    }

    /// The cache layout, through 1.1's entries that report errors when the vtable has them.
    fn read_layout(&self) -> Result<Vec<LayerCache>> {
        let vt = self.vt();
        let this = self.obj.this;
        let with_errors = crate::has_entry!(vt.size, ModelVTable, try_layer_cache);
        let n = if with_errors {
            let mut slot = ErrorSlot::default();
            let sink = slot.sink();
            let mut n = 0usize;
            // SAFETY: live object, one out-slot, a sink for the call.
            if unsafe { (vt.try_num_layers)(this, &mut n, &sink) } != 0 {
                return Err(slot.into_error("num_layers"));
            }
            n
        } else {
            // SAFETY: live object.
            unsafe { (vt.num_layers)(this) }
        };
        let mut layout = Vec::with_capacity(n);
        for i in 0..n {
            let mut spec = CacheSpec::default();
            let mut slot = ErrorSlot::default();
            let sink = slot.sink();
            let st = if with_errors {
                // SAFETY: live object, one out-slot, a sink for the call.
                unsafe { (vt.try_layer_cache)(this, i, &mut spec, &sink) }
            } else {
                // SAFETY: live object, one out-slot.
                unsafe { (vt.layer_cache)(this, i, &mut spec) }
            };
            if st != 0 {
                let e = slot.into_error("layer_cache");
                return Err(Error::Boundary(format!("the plugin could not describe the cache of layer {i}: {e}")));
            }
            layout.push(match spec.kind {
                CACHE_FULL => LayerCache::Full,
                CACHE_SLIDING => LayerCache::SlidingWindow { window: spec.window },
                k => return Err(Error::Abi(format!("layer {i} has unknown cache kind {k}"))),
            });
        }
        Ok(layout)
    }

    fn vt(&self) -> &ModelVTable {
        // SAFETY: the vtable is static data of the (still loaded) plugin.
        unsafe { &*self.obj.vtable }
    }
}

/// A model vtable entry that splits the model over a group (`shard`, `pipeline`).
type SplitFn = unsafe extern "C" fn(this: *mut c_void, group: GroupHandle, err: *const ErrSink) -> Status;

impl ForeignModel {
    /// Calls a split entry (`None` when the plugin's minor predates it: refused naming the
    /// minor it needs), then reads the cache layout again.
    fn split(
        &mut self,
        group: &crate::distributed::Group,
        entry: Option<SplitFn>,
        (what, minor, method): (&str, u32, &str),
    ) -> Result<()> {
        let Some(entry) = entry else {
            return Err(Error::Boundary(format!(
                "the plugin was built for ABI {ABI_MAJOR}.{}, {what} needs ABI {ABI_MAJOR}.{minor} (rebuild it \
                 against a newer plugin-api and implement ModelArch::{method})",
                self.plugin_minor
            )));
        };
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        // SAFETY: live object, a group borrowed for the call, a sink.
        if unsafe { entry(self.obj.this, group.as_raw(), &sink) } != 0 {
            return Err(slot.into_error(method));
        }
        self.layout = self.read_layout()?;
        Ok(())
    }
}

impl Drop for ForeignModel {
    fn drop(&mut self) {
        // SAFETY: destroyed exactly once, while the plugin is loaded.
        unsafe { (self.vt().destroy)(self.obj.this) }
    }
}

impl DynModel for ForeignModel {
    fn cache_layout(&self) -> Vec<LayerCache> {
        self.layout.clone()
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let (kind, h) = match input {
            Input::Tokens(a) => (INPUT_TOKENS, a.as_raw()),
            Input::Embeddings(a) => (INPUT_EMBEDDINGS, a.as_raw()),
        };
        let mut this = CtxThis { ctx, plugin_minor: self.plugin_minor };
        let ctx_obj = ForwardCtxObject { this: &mut this as *mut CtxThis<'_> as *mut c_void, vtable: &CTX_VTABLE };
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out: Handle = std::ptr::null_mut();
        // SAFETY: live object, borrowed input, a context that outlives the call, one out-slot.
        let st = unsafe { (self.vt().forward)(self.obj.this, kind, h, &ctx_obj, &mut out, &sink) };
        if st != 0 {
            return Err(slot.into_error("forward"));
        }
        // SAFETY: on success the plugin wrote an owned handle.
        unsafe { Array::from_raw(out) }
    }

    /// Plugins of ABI 1.4 and later are asked, and count as honouring it (the contract of
    /// `ModelArch::forward`); earlier ones never see the question.
    fn honours_last_position_only(&self) -> bool {
        self.plugin_minor >= 4
    }

    fn embeddings_scale(&self) -> Result<f32> {
        let vt = self.vt();
        if !crate::has_entry!(vt.size, ModelVTable, embeddings_scale) {
            return Ok(1.0);
        }
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut scale = 1.0f32;
        // SAFETY: live object, one out-slot, a sink for the call.
        if unsafe { (vt.embeddings_scale)(self.obj.this, &mut scale, &sink) } != 0 {
            return Err(slot.into_error("embeddings_scale"));
        }
        if !scale.is_finite() || scale == 0.0 {
            return Err(Error::Boundary(format!("the model declared an embeddings scale of {scale}")));
        }
        Ok(scale)
    }

    /// Shards through the 1.2 entry, then reads the cache layout again (a sharded model keeps
    /// its layers, but the plugin is its authority).
    fn shard(&mut self, group: &crate::distributed::Group) -> Result<()> {
        let vt = self.vt();
        // Lazily: an entry the plugin's table does not cover must not be read.
        let entry = crate::has_entry!(vt.size, ModelVTable, shard).then(|| vt.shard);
        self.split(group, entry, ("tensor parallelism", 2, "shard"))
    }

    /// Splits the layers through the 1.3 entry; the cache layout is then the rank's layers'.
    fn pipeline(&mut self, group: &crate::distributed::Group) -> Result<()> {
        let vt = self.vt();
        let entry = crate::has_entry!(vt.size, ModelVTable, pipeline).then(|| vt.pipeline);
        self.split(group, entry, ("pipeline parallelism", 3, "pipeline"))
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out: Handle = std::ptr::null_mut();
        // SAFETY: live object, borrowed input, one out-slot.
        let st = unsafe { (self.vt().embed_tokens)(self.obj.this, ids.as_raw(), &mut out, &sink) };
        if st != 0 {
            return Err(slot.into_error("embed_tokens"));
        }
        // SAFETY: on success the plugin wrote an owned handle.
        unsafe { Array::from_raw(out) }
    }
}

/// A vision add-on living in a plugin.
pub struct ForeignVision {
    obj: VisionObject,
}

// SAFETY: as for ForeignModel.
unsafe impl Send for ForeignVision {}

impl ForeignVision {
    /// # Safety
    /// `obj` must be a live object from a plugin (built for ABI minor `plugin_minor`) whose
    /// library outlives the result.
    pub unsafe fn new(obj: VisionObject, plugin_minor: u32) -> Result<ForeignVision> {
        // SAFETY: guaranteed by the caller.
        let vt = unsafe { &*obj.vtable };
        let needed = VisionVTable::size_at_minor(plugin_minor);
        let refusal = if vt.size < needed {
            Some(format!(
                "the vision vtable has {} bytes, ABI {ABI_MAJOR}.{plugin_minor} needs at least {needed}",
                vt.size
            ))
        } else if !crate::has_entry!(vt.size, VisionVTable, merge_features) {
            // 1.0's contract (raw images in, the add-on's own preprocessing and expansion) does
            // not fit the engine's pipeline; text models of 1.0 plugins keep working.
            Some(format!(
                "vision add-ons of ABI {ABI_MAJOR}.0 are not supported; rebuild the plugin against plugin-api \
                 {ABI_MAJOR}.{ABI_MINOR} (image_prompt, encode, merge)"
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            // SAFETY: destroy is part of every vtable version.
            unsafe { (vt.destroy)(obj.this) };
            return Err(Error::Abi(reason));
        }
        Ok(ForeignVision { obj })
    }

    fn vt(&self) -> &VisionVTable {
        // SAFETY: the vtable is static data of the (still loaded) plugin.
        unsafe { &*self.obj.vtable }
    }
}

impl Drop for ForeignVision {
    fn drop(&mut self) {
        // SAFETY: destroyed exactly once, while the plugin is loaded.
        unsafe { (self.vt().destroy)(self.obj.this) }
    }
}

impl DynVision for ForeignVision {
    fn image_prompt(&self, height: i32, width: i32) -> Result<ImagePrompt> {
        let (mut slot, mut p, mut e) = (ErrorSlot::default(), ErrorSlot::default(), ErrorSlot::default());
        let (sink, ps, es) = (slot.sink(), p.sink(), e.sink());
        // SAFETY: live object and three sinks for the call.
        if unsafe { (self.vt().image_prompt)(self.obj.this, height, width, &ps, &es, &sink) } != 0 {
            return Err(slot.into_error("vision image_prompt"));
        }
        let (placeholder, expansion) = (p.into_text().unwrap_or_default(), e.into_text().unwrap_or_default());
        if placeholder.is_empty() {
            return Err(Error::Boundary("the vision add-on declared an empty image placeholder".into()));
        }
        Ok(ImagePrompt { placeholder, expansion })
    }

    fn encode(&self, pixels: &Array) -> Result<Array> {
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out: Handle = std::ptr::null_mut();
        // SAFETY: live object, a borrowed handle, one out-slot.
        if unsafe { (self.vt().encode)(self.obj.this, pixels.as_raw(), &mut out, &sink) } != 0 {
            return Err(slot.into_error("vision encode"));
        }
        // SAFETY: on success the plugin wrote an owned handle.
        unsafe { Array::from_raw(out) }
    }

    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> Result<Array> {
        let handles: Vec<Handle> = features.iter().map(Array::as_raw).collect();
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out: Handle = std::ptr::null_mut();
        // SAFETY: live object, borrowed handles, one out-slot.
        let st = unsafe {
            (self.vt().merge_features)(
                self.obj.this,
                input_ids.as_raw(),
                text_embeddings.as_raw(),
                handles.as_ptr(),
                handles.len(),
                embeddings_scale,
                &mut out,
                &sink,
            )
        };
        if st != 0 {
            return Err(slot.into_error("vision merge"));
        }
        // SAFETY: on success the plugin wrote an owned handle.
        unsafe { Array::from_raw(out) }
    }
}

/// What the context object's `this` points at during a plugin's forward: the engine's context
/// and the minor of the plugin calling back (to check the sizes of what it passes).
struct CtxThis<'a> {
    ctx: &'a mut dyn ForwardContext,
    plugin_minor: u32,
}

/// # Safety
/// `this` must be the `CtxThis` made in `ForeignModel::forward`, still live.
unsafe fn ctx<'a>(this: *mut c_void) -> &'a mut CtxThis<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *(this as *mut CtxThis<'a>) }
}

unsafe extern "C" fn ctx_offset(this: *mut c_void, layer: usize, out: *mut i32, err: *const ErrSink) -> Status {
    // SAFETY: the plugin calls back during `forward`, while the context is live.
    unsafe {
        guard(err, || {
            out.write(ctx(this).ctx.offset(layer)?);
            Ok(())
        })
    }
}

unsafe extern "C" fn ctx_positions(
    this: *mut c_void,
    layer: usize,
    out: *mut PositionsFfi,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the plugin calls back during `forward`, while the context is live.
    unsafe {
        guard(err, || {
            out.write(positions_to_ffi(ctx(this).ctx.positions(layer)?));
            Ok(())
        })
    }
}

unsafe extern "C" fn ctx_last_position_only(this: *mut c_void, out: *mut u32, err: *const ErrSink) -> Status {
    // SAFETY: the plugin calls back during `forward`, while the context is live.
    unsafe {
        guard(err, || {
            out.write(u32::from(ctx(this).ctx.last_position_only()));
            Ok(())
        })
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn ctx_attention(
    this: *mut c_void,
    layer: usize,
    q: Handle,
    k: Handle,
    v: Handle,
    scale: f32,
    options: *const AttentionOptionsFfi,
    out: *mut Handle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the plugin calls back during `forward` with borrowed handles and an out-slot.
    unsafe {
        guard(err, || {
            let this = ctx(this);
            let opts = read_options(options, this.plugin_minor)?;
            let (q, k, v) = (borrow(q)?, borrow(k)?, borrow(v)?);
            out.write(this.ctx.attention(layer, &q, &k, &v, scale, &opts)?.into_raw());
            Ok(())
        })
    }
}

/// Reads a plugin's attention options, refusing a struct smaller than its minor's layout.
///
/// # Safety
/// `options` must be null or point at options of at least the `size` they declare.
unsafe fn read_options(options: *const AttentionOptionsFfi, plugin_minor: u32) -> Result<AttentionOptions> {
    if options.is_null() {
        return Ok(AttentionOptions::default());
    }
    // SAFETY: guaranteed by the caller; `size` is the first field of every version.
    let size = unsafe { std::ptr::addr_of!((*options).size).read() };
    let needed = AttentionOptionsFfi::size_at_minor(plugin_minor);
    if size < needed {
        return Err(Error::Abi(format!(
            "attention options have {size} bytes, ABI {ABI_MAJOR}.{plugin_minor} needs at least {needed}"
        )));
    }
    // SAFETY: the size covers every field of minor 0.
    let cap = unsafe { std::ptr::addr_of!((*options).logit_softcap).read() };
    Ok(AttentionOptions { logit_softcap: (cap != 0.0).then_some(cap) })
}

static CTX_VTABLE: ForwardCtxVTable = ForwardCtxVTable {
    size: std::mem::size_of::<ForwardCtxVTable>(),
    offset: ctx_offset,
    attention: ctx_attention,
    positions: ctx_positions,
    last_position_only: ctx_last_position_only,
};

/// Calls `f` and turns a panic into an error (for engine code running a built-in model).
pub fn catch_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(Error::from_panic(p)))
}
