//! The engine's side of the boundary: plugin objects seen as [`DynModel`] / [`DynVision`], and
//! the engine's [`ForwardContext`] handed to plugins. Kept next to `export` so both halves of
//! every vtable are written (and changed) together.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::*;
use crate::array::Array;
use crate::error::{Error, Result};
use crate::export::{borrow, guard};
use crate::ops_table::{Handle, Status};
use crate::traits::*;

/// A text model living in a plugin. Destroyed through the plugin's vtable on drop; the engine
/// keeps the plugin library loaded for at least as long.
pub struct ForeignModel {
    obj: ModelObject,
    layout: Vec<LayerCache>,
}

// SAFETY: plugin models are `DynModel: Send` on their side; the object is only a pointer to it.
unsafe impl Send for ForeignModel {}

impl ForeignModel {
    /// Adopts a model object returned by a plugin's `create_model`.
    ///
    /// # Safety
    /// `obj` must be a live object from a plugin whose library outlives the result.
    pub unsafe fn new(obj: ModelObject) -> Result<ForeignModel> {
        // SAFETY: guaranteed by the caller.
        let vt = unsafe { &*obj.vtable };
        if vt.size < std::mem::size_of::<ModelVTable>() {
            let size = vt.size;
            // SAFETY: destroy is part of every vtable version.
            unsafe { (vt.destroy)(obj.this) };
            return Err(Error::Abi(format!(
                "model vtable has {size} bytes, expected at least {}",
                std::mem::size_of::<ModelVTable>()
            )));
        }
        let mut m = ForeignModel { obj, layout: Vec::new() };
        // SAFETY: live object.
        let n = unsafe { (vt.num_layers)(m.obj.this) };
        for i in 0..n {
            let mut spec = CacheSpec::default();
            // SAFETY: live object, one out-slot.
            if unsafe { (vt.layer_cache)(m.obj.this, i, &mut spec) } != 0 {
                return Err(Error::Abi(format!("the plugin could not describe the cache of layer {i}")));
            }
            m.layout.push(match spec.kind {
                CACHE_FULL => LayerCache::Full,
                CACHE_SLIDING => LayerCache::SlidingWindow { window: spec.window },
                k => return Err(Error::Abi(format!("layer {i} has unknown cache kind {k}"))),
            });
        }
        Ok(m)
    }

    fn vt(&self) -> &ModelVTable {
        // SAFETY: the vtable is static data of the (still loaded) plugin.
        unsafe { &*self.obj.vtable }
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
        let mut fat: &mut dyn ForwardContext = ctx;
        let ctx_obj =
            ForwardCtxObject { this: &mut fat as *mut &mut dyn ForwardContext as *mut c_void, vtable: &CTX_VTABLE };
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
    /// `obj` must be a live object from a plugin whose library outlives the result.
    pub unsafe fn new(obj: VisionObject) -> Result<ForeignVision> {
        // SAFETY: guaranteed by the caller.
        let vt = unsafe { &*obj.vtable };
        if vt.size < std::mem::size_of::<VisionVTable>() {
            // SAFETY: destroy is part of every vtable version.
            unsafe { (vt.destroy)(obj.this) };
            return Err(Error::Abi("vision vtable is smaller than ABI 1.0's".into()));
        }
        Ok(ForeignVision { obj })
    }
}

impl Drop for ForeignVision {
    fn drop(&mut self) {
        // SAFETY: destroyed exactly once, while the plugin is loaded.
        unsafe { ((*self.obj.vtable).destroy)(self.obj.this) }
    }
}

impl DynVision for ForeignVision {
    fn merge(&self, input_ids: &Array, text_embeddings: &Array, images: &[Array]) -> Result<(Array, Array)> {
        let handles: Vec<Handle> = images.iter().map(Array::as_raw).collect();
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let (mut ids, mut emb): (Handle, Handle) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: live object, borrowed handles, two out-slots.
        let st = unsafe {
            ((*self.obj.vtable).merge)(
                self.obj.this,
                input_ids.as_raw(),
                text_embeddings.as_raw(),
                handles.as_ptr(),
                handles.len(),
                &mut ids,
                &mut emb,
                &sink,
            )
        };
        if st != 0 {
            return Err(slot.into_error("vision merge"));
        }
        // SAFETY: on success the plugin wrote two owned handles.
        unsafe { Ok((Array::from_raw(ids)?, Array::from_raw(emb)?)) }
    }
}

/// # Safety
/// `this` must be the `&mut &mut dyn ForwardContext` made in `ForeignModel::forward`.
unsafe fn ctx<'a>(this: *mut c_void) -> &'a mut dyn ForwardContext {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut **(this as *mut &mut dyn ForwardContext) }
}

unsafe extern "C" fn ctx_offset(this: *mut c_void, layer: usize, out: *mut i32, err: *const ErrSink) -> Status {
    // SAFETY: the plugin calls back during `forward`, while the context is live.
    unsafe {
        guard(err, || {
            out.write(ctx(this).offset(layer)?);
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
            let opts = if options.is_null() {
                AttentionOptions::default()
            } else {
                let o = &*options;
                AttentionOptions { logit_softcap: (o.logit_softcap != 0.0).then_some(o.logit_softcap) }
            };
            let (q, k, v) = (borrow(q)?, borrow(k)?, borrow(v)?);
            out.write(ctx(this).attention(layer, &q, &k, &v, scale, &opts)?.into_raw());
            Ok(())
        })
    }
}

static CTX_VTABLE: ForwardCtxVTable =
    ForwardCtxVTable { size: std::mem::size_of::<ForwardCtxVTable>(), offset: ctx_offset, attention: ctx_attention };

/// Calls `f` and turns a panic into an error (for engine code running a built-in model).
pub fn catch_panics<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(Error::from_panic(p)))
}
