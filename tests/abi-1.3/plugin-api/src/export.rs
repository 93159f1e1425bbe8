//! The plugin side of the boundary: the glue behind [`export_plugin!`](crate::export_plugin).
//!
//! Every `extern "C"` function here runs its body under `catch_unwind`, so a panicking plugin
//! turns into an error for the one request, never an unwind across the boundary.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::*;
use crate::array::{install_ops, Array};
use crate::error::{Error, Result};
use crate::ops_table::{Handle, OpsTable, Status};
use crate::traits::*;

/// Runs `f`, reporting an error or a panic through `err`; returns the ABI status.
///
/// # Safety
/// `err` must be null or a valid sink for the duration of the call.
pub unsafe fn guard(err: *const ErrSink, f: impl FnOnce() -> Result<()>) -> Status {
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(payload) => Error::from_panic(payload),
    };
    if !err.is_null() {
        // SAFETY: guaranteed by the caller.
        unsafe { (*err).report(&e) };
    }
    1
}

/// `PluginDescriptor::init`: adopts the engine's ops table.
///
/// # Safety
/// `ops` must point at a table that lives as long as the plugin is loaded.
pub unsafe extern "C" fn plugin_init(ops: *const OpsTable, err: *const ErrSink) -> Status {
    // SAFETY: guaranteed by the caller.
    unsafe {
        guard(err, || {
            if ops.is_null() {
                return Err(Error::Abi("the engine passed no ops table".into()));
            }
            install_ops(&*ops)
        })
    }
}

/// # Safety
/// `weights` must point at `n` valid entries whose handles are live for the call.
unsafe fn read_weights(weights: *const WeightEntry, n: usize) -> Result<Weights> {
    let mut w = Weights::new();
    if n == 0 {
        return Ok(w);
    }
    // SAFETY: guaranteed by the caller.
    for e in unsafe { std::slice::from_raw_parts(weights, n) } {
        // SAFETY: the handle is borrowed; `clone` makes our own reference to it.
        let borrowed = std::mem::ManuallyDrop::new(unsafe { Array::from_raw(e.array)? });
        // SAFETY: the name is live for the call (copied by to_string).
        w.insert(unsafe { e.name.as_str()? }.to_string(), (*borrowed).clone());
    }
    Ok(w)
}

/// Borrows a handle as an `Array` without taking ownership.
///
/// # Safety
/// `h` must be a live handle for as long as the result is used.
pub unsafe fn borrow(h: Handle) -> Result<std::mem::ManuallyDrop<Array>> {
    // SAFETY: guaranteed by the caller; ManuallyDrop keeps us from freeing what we don't own.
    unsafe { Array::from_raw(h).map(std::mem::ManuallyDrop::new) }
}

/// The shared body of the exported `create_model` / `create_vision` functions.
///
/// # Safety
/// All pointers must be valid as documented on [`CreateFn`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn create_glue<F, O>(
    find: impl FnOnce(&str) -> Option<F>,
    build: impl FnOnce(F, &str, Weights, WeightsFormat) -> Result<O>,
    model_type: StrRef,
    config_json: StrRef,
    weights: *const WeightEntry,
    n_weights: usize,
    format: u32,
    out: *mut O,
    err: *const ErrSink,
) -> Status {
    // SAFETY: guaranteed by the caller.
    unsafe {
        guard(err, || {
            let ty = model_type.as_str()?;
            let factory = find(ty).ok_or_else(|| not_provided(ty))?;
            let w = read_weights(weights, n_weights)?;
            let obj = build(factory, config_json.as_str()?, w, WeightsFormat::from_code(format)?)?;
            out.write(obj);
            Ok(())
        })
    }
}

fn not_provided(ty: &str) -> Error {
    Error::Config(format!("this plugin does not provide model type `{ty}`"))
}

fn text_entry(entries: &[TextEntry], model_type: StrRef) -> Result<&TextEntry> {
    // SAFETY: the engine passes a string live for the call.
    let ty = unsafe { model_type.as_str()? };
    entries.iter().find(|e| e.model_type == ty).ok_or_else(|| not_provided(ty))
}

/// The body of the exported `gguf_config`: the architecture's [`ModelArch::config_from_gguf`].
///
/// # Safety
/// The pointers must be valid as documented on [`PluginDescriptor::gguf_config`].
pub unsafe fn gguf_config_glue(
    entries: &[TextEntry],
    model_type: StrRef,
    gguf_json: StrRef,
    out: *const ErrSink,
    err: *const ErrSink,
) -> Status {
    // SAFETY: guaranteed by the caller.
    unsafe {
        guard(err, || {
            let entry = text_entry(entries, model_type)?;
            let info = crate::gguf::GgufInfo::from_json(gguf_json.as_str()?)?;
            if let Some(config) = (entry.gguf_config)(&info)? {
                if out.is_null() {
                    return Err(Error::Abi("gguf_config: the engine passed no output sink".into()));
                }
                (*out).send(&config.to_string());
            }
            Ok(())
        })
    }
}

/// The body of the exported `dtype_policy`: the architecture's [`ModelArch::dtype_policy`] for
/// each name.
///
/// # Safety
/// The pointers must be valid as documented on [`PluginDescriptor::dtype_policy`].
pub unsafe fn dtype_policy_glue(
    entries: &[TextEntry],
    model_type: StrRef,
    names: *const StrRef,
    n: usize,
    out: *mut u32,
    err: *const ErrSink,
) -> Status {
    // SAFETY: guaranteed by the caller.
    unsafe {
        guard(err, || {
            let entry = text_entry(entries, model_type)?;
            if n == 0 {
                return Ok(());
            }
            for (i, name) in std::slice::from_raw_parts(names, n).iter().enumerate() {
                out.add(i).write((entry.dtype_policy)(name.as_str()?) as u32);
            }
            Ok(())
        })
    }
}

/// Wraps a model into the object handed to the engine.
pub fn model_object(model: Box<dyn DynModel>) -> ModelObject {
    ModelObject { this: Box::into_raw(Box::new(model)) as *mut c_void, vtable: &MODEL_VTABLE }
}

/// Wraps a vision add-on into the object handed to the engine.
pub fn vision_object(v: Box<dyn DynVision>) -> VisionObject {
    VisionObject { this: Box::into_raw(Box::new(v)) as *mut c_void, vtable: &VISION_VTABLE }
}

/// # Safety
/// `this` must come from [`model_object`] and not be destroyed.
unsafe fn model<'a>(this: *mut c_void) -> &'a dyn DynModel {
    // SAFETY: guaranteed by the caller.
    unsafe { &**(this as *mut Box<dyn DynModel>) }
}

unsafe extern "C" fn model_destroy(this: *mut c_void) {
    // SAFETY: `this` came from `model_object`; the engine destroys it once. A panicking Drop is
    // contained.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(this as *mut Box<dyn DynModel>) })));
}

/// ABI 1.0's entry: it has no error channel, so a failure reads as "no layers". 1.1 engines
/// call [`model_try_num_layers`] instead; this stays for the layout.
unsafe extern "C" fn model_num_layers(this: *mut c_void) -> usize {
    // SAFETY: live model object.
    catch_unwind(AssertUnwindSafe(|| unsafe { model(this) }.cache_layout().len())).unwrap_or(0)
}

fn cache_spec(model: &dyn DynModel, layer: usize) -> Result<CacheSpec> {
    let layout = model.cache_layout();
    match layout.get(layer) {
        Some(LayerCache::Full) => Ok(CacheSpec { kind: CACHE_FULL, window: 0 }),
        Some(LayerCache::SlidingWindow { window }) => Ok(CacheSpec { kind: CACHE_SLIDING, window: *window }),
        None => Err(Error::Abi(format!("layer {layer} is out of range (the model has {} layers)", layout.len()))),
    }
}

unsafe extern "C" fn model_layer_cache(this: *mut c_void, layer: usize, out: *mut CacheSpec) -> Status {
    // SAFETY: live model object and out-slot.
    unsafe { model_try_layer_cache(this, layer, out, std::ptr::null()) }
}

unsafe extern "C" fn model_try_num_layers(this: *mut c_void, out: *mut usize, err: *const ErrSink) -> Status {
    // SAFETY: live model object, one out-slot, the caller's sink.
    unsafe {
        guard(err, || {
            out.write(model(this).cache_layout().len());
            Ok(())
        })
    }
}

unsafe extern "C" fn model_try_layer_cache(
    this: *mut c_void,
    layer: usize,
    out: *mut CacheSpec,
    err: *const ErrSink,
) -> Status {
    // SAFETY: live model object, one out-slot, the caller's sink (or null).
    unsafe {
        guard(err, || {
            out.write(cache_spec(model(this), layer)?);
            Ok(())
        })
    }
}

/// The engine's context behind the plugin's `dyn ForwardContext`.
struct CtxProxy(*const ForwardCtxObject);

impl ForwardContext for CtxProxy {
    fn offset(&self, layer: usize) -> Result<i32> {
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut off = 0;
        // SAFETY: the engine's context object is live for the whole forward call.
        let st = unsafe { ((*(*self.0).vtable).offset)((*self.0).this, layer, &mut off, &sink) };
        if st == 0 {
            Ok(off)
        } else {
            Err(slot.into_error("offset"))
        }
    }

    fn positions(&self, layer: usize) -> Result<Positions> {
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut p = PositionsFfi { kind: POSITIONS_OFFSET, offset: 0, array: std::ptr::null_mut() };
        // SAFETY: the engine's context object is live for the whole forward call, and its
        // vtable has this entry (checked in `model_forward`).
        let st = unsafe { ((*(*self.0).vtable).positions)((*self.0).this, layer, &mut p, &sink) };
        if st != 0 {
            return Err(slot.into_error("positions"));
        }
        // SAFETY: on success the engine wrote an owned handle for the array kinds.
        unsafe { positions_from_ffi(p) }
    }

    fn attention(
        &mut self,
        layer: usize,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        options: &AttentionOptions,
    ) -> Result<Array> {
        let opts = AttentionOptionsFfi {
            size: AttentionOptionsFfi::size_at_minor(ABI_MINOR),
            logit_softcap: options.logit_softcap.unwrap_or(0.0),
        };
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out: Handle = std::ptr::null_mut();
        // SAFETY: the context object is live for the forward call; the handles are borrowed.
        let st = unsafe {
            ((*(*self.0).vtable).attention)(
                (*self.0).this,
                layer,
                q.as_raw(),
                k.as_raw(),
                v.as_raw(),
                scale,
                &opts,
                &mut out,
                &sink,
            )
        };
        if st != 0 {
            return Err(slot.into_error("attention"));
        }
        // SAFETY: on success the engine wrote an owned handle.
        unsafe { Array::from_raw(out) }
    }
}

/// Adopts what a `positions` entry wrote.
///
/// # Safety
/// For the array kinds, `p.array` must be an owned handle (or null).
pub(crate) unsafe fn positions_from_ffi(p: PositionsFfi) -> Result<Positions> {
    // SAFETY: guaranteed by the caller.
    let array = || unsafe { Array::from_raw(p.array) };
    match p.kind {
        POSITIONS_OFFSET => Ok(Positions::Offset(p.offset)),
        POSITIONS_PER_ROW => Ok(Positions::PerRow(array()?)),
        POSITIONS_EXPLICIT => Ok(Positions::Explicit(array()?)),
        k => {
            if !p.array.is_null() {
                drop(array());
            }
            Err(Error::Abi(format!("unknown positions kind {k}")))
        }
    }
}

/// What a `positions` entry writes for `p`.
pub(crate) fn positions_to_ffi(p: Positions) -> PositionsFfi {
    match p {
        Positions::Offset(offset) => PositionsFfi { kind: POSITIONS_OFFSET, offset, array: std::ptr::null_mut() },
        Positions::PerRow(a) => PositionsFfi { kind: POSITIONS_PER_ROW, offset: 0, array: a.into_raw() },
        Positions::Explicit(a) => PositionsFfi { kind: POSITIONS_EXPLICIT, offset: 0, array: a.into_raw() },
    }
}

unsafe extern "C" fn model_forward(
    this: *mut c_void,
    input_kind: u32,
    input: Handle,
    ctx: *const ForwardCtxObject,
    out: *mut Handle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the engine passes a live model, input handle, context and out-slot.
    unsafe {
        guard(err, || {
            let x = borrow(input)?;
            let input = match input_kind {
                INPUT_TOKENS => Input::Tokens(&x),
                INPUT_EMBEDDINGS => Input::Embeddings(&x),
                k => return Err(Error::Abi(format!("unknown input kind {k}"))),
            };
            let engine_size = (*(*ctx).vtable).size;
            if engine_size < ForwardCtxVTable::size_at_minor(ABI_MINOR) {
                return Err(Error::Abi(format!(
                    "the engine's forward context vtable has {engine_size} bytes, ABI {ABI_MAJOR}.{ABI_MINOR} needs {}",
                    ForwardCtxVTable::size_at_minor(ABI_MINOR)
                )));
            }
            let mut proxy = CtxProxy(ctx);
            let logits = model(this).forward(input, &mut proxy)?;
            out.write(logits.into_raw());
            Ok(())
        })
    }
}

unsafe extern "C" fn model_embed(this: *mut c_void, ids: Handle, out: *mut Handle, err: *const ErrSink) -> Status {
    // SAFETY: live model, input handle and out-slot.
    unsafe {
        guard(err, || {
            let ids = borrow(ids)?;
            out.write(model(this).embed_tokens(&ids)?.into_raw());
            Ok(())
        })
    }
}

unsafe extern "C" fn model_embeddings_scale(this: *mut c_void, out: *mut f32, err: *const ErrSink) -> Status {
    // SAFETY: live model and out-slot.
    unsafe {
        guard(err, || {
            out.write(model(this).embeddings_scale()?);
            Ok(())
        })
    }
}

/// `shard` and `pipeline`: `split` of the model over a group borrowed for the call.
///
/// # Safety
/// `this` must be a live model not in use by any other call (the engine splits before
/// anything else) and `group` a live group handle.
unsafe fn model_split(
    this: *mut c_void,
    group: crate::ops_table::GroupHandle,
    err: *const ErrSink,
    split: fn(&mut dyn DynModel, &crate::distributed::Group) -> Result<()>,
) -> Status {
    // SAFETY: guaranteed by the caller.
    unsafe {
        guard(err, || {
            let group = crate::distributed::Group::clone_raw(group)?;
            split(&mut **(this as *mut Box<dyn DynModel>), &group)
        })
    }
}

unsafe extern "C" fn model_shard(
    this: *mut c_void,
    group: crate::ops_table::GroupHandle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the engine's arguments, as `model_split` requires.
    unsafe { model_split(this, group, err, |m, g| m.shard(g)) }
}

unsafe extern "C" fn model_pipeline(
    this: *mut c_void,
    group: crate::ops_table::GroupHandle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the engine's arguments, as `model_split` requires.
    unsafe { model_split(this, group, err, |m, g| m.pipeline(g)) }
}

static MODEL_VTABLE: ModelVTable = ModelVTable {
    size: std::mem::size_of::<ModelVTable>(),
    destroy: model_destroy,
    num_layers: model_num_layers,
    layer_cache: model_layer_cache,
    forward: model_forward,
    embed_tokens: model_embed,
    try_num_layers: model_try_num_layers,
    try_layer_cache: model_try_layer_cache,
    embeddings_scale: model_embeddings_scale,
    shard: model_shard,
    pipeline: model_pipeline,
};

unsafe extern "C" fn vision_destroy(this: *mut c_void) {
    // SAFETY: `this` came from `vision_object`; the engine destroys it once.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(this as *mut Box<dyn DynVision>) })));
}

/// # Safety
/// `this` must come from [`vision_object`] and not be destroyed.
unsafe fn vision<'a>(this: *mut c_void) -> &'a dyn DynVision {
    // SAFETY: guaranteed by the caller.
    unsafe { &**(this as *mut Box<dyn DynVision>) }
}

/// 1.0's entry (raw images in, ids and embeddings out); 1.1 engines call the three below.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn vision_merge_1_0(
    _this: *mut c_void,
    _input_ids: Handle,
    _text_embeddings: Handle,
    _images: *const Handle,
    _n_images: usize,
    _out_ids: *mut Handle,
    _out_embeddings: *mut Handle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the caller's sink.
    unsafe {
        guard(err, || {
            Err(Error::Abi(
                "this vision add-on implements ABI 1.1's image_prompt/encode/merge_features, not 1.0's merge".into(),
            ))
        })
    }
}

unsafe extern "C" fn vision_image_prompt(
    this: *mut c_void,
    height: i32,
    width: i32,
    placeholder: *const ErrSink,
    expansion: *const ErrSink,
    err: *const ErrSink,
) -> Status {
    // SAFETY: the engine passes a live add-on and three sinks for the call.
    unsafe {
        guard(err, || {
            let p = vision(this).image_prompt(height, width)?;
            (*placeholder).send(&p.placeholder);
            (*expansion).send(&p.expansion);
            Ok(())
        })
    }
}

unsafe extern "C" fn vision_encode(this: *mut c_void, pixels: Handle, out: *mut Handle, err: *const ErrSink) -> Status {
    // SAFETY: live add-on, a borrowed handle and an out-slot.
    unsafe {
        guard(err, || {
            let pixels = borrow(pixels)?;
            out.write(vision(this).encode(&pixels)?.into_raw());
            Ok(())
        })
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn vision_merge_features(
    this: *mut c_void,
    input_ids: Handle,
    text_embeddings: Handle,
    features: *const Handle,
    n_features: usize,
    embeddings_scale: f32,
    out: *mut Handle,
    err: *const ErrSink,
) -> Status {
    // SAFETY: live add-on, borrowed handles (`n_features` of them at `features`), an out-slot.
    unsafe {
        guard(err, || {
            let ids = borrow(input_ids)?;
            let emb = borrow(text_embeddings)?;
            let feats: Vec<Array> = if n_features == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(features, n_features)
                    .iter()
                    .map(|&h| borrow(h).map(|a| (*a).clone()))
                    .collect::<Result<_>>()?
            };
            out.write(vision(this).merge(&ids, &emb, &feats, embeddings_scale)?.into_raw());
            Ok(())
        })
    }
}

static VISION_VTABLE: VisionVTable = VisionVTable {
    size: std::mem::size_of::<VisionVTable>(),
    destroy: vision_destroy,
    merge: vision_merge_1_0,
    image_prompt: vision_image_prompt,
    encode: vision_encode,
    merge_features: vision_merge_features,
};

impl PluginDescriptor {
    /// The descriptor of a plugin built against this crate (used by [`export_plugin!`](crate::export_plugin),
    /// which also records the plugin crate's own panic strategy).
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        name: &'static str,
        version: &'static str,
        text_types: &'static [StrRef],
        vision_types: &'static [StrRef],
        create_model: CreateFn<ModelObject>,
        create_vision: CreateFn<VisionObject>,
        gguf_config: GgufConfigFn,
        dtype_policy: DtypePolicyFn,
    ) -> PluginDescriptor {
        PluginDescriptor {
            size: PluginDescriptor::size_at_minor(ABI_MINOR),
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            layout_fingerprint: LAYOUT_FINGERPRINT,
            name: StrRef::from_static(name),
            version: StrRef::from_static(version),
            text_types: text_types.as_ptr(),
            n_text_types: text_types.len(),
            vision_types: vision_types.as_ptr(),
            n_vision_types: vision_types.len(),
            init: plugin_init,
            create_model,
            create_vision,
            panic_strategy: if cfg!(panic = "unwind") { PANIC_UNWIND } else { PANIC_ABORT },
            gguf_config,
            dtype_policy,
        }
    }

    /// Sets the recorded panic strategy (`export_plugin!` passes the plugin crate's `cfg(panic)`).
    pub const fn with_panic_strategy(mut self, strategy: u32) -> PluginDescriptor {
        self.panic_strategy = strategy;
        self
    }
}
