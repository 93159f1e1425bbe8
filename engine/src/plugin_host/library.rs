//! Loading one plugin file: open it, check its descriptor before trusting it, hand it the ops
//! table, and build model objects that keep the library loaded.
//!
//! The checks run in the order in which each becomes safe to make: only the first three fields
//! of the descriptor (`size`, `abi_major`, `abi_minor`) are fixed for every ABI version, so they
//! are read alone first; the rest is only read once the major, the minor, the size (at least
//! the layout of the minor the plugin declares) and that minor's layout fingerprint check out,
//! and an entry a later minor added only when the plugin's `size` covers it. Every failure is an
//! [`Error::Plugin`] naming the file, so a folder of plugins can be scanned and each bad file
//! reported without stopping the process.

use std::fmt;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;
use mlx_engine_plugin_api::abi::{
    layout_fingerprint, CreateFn, DescriptorFn, DtypePolicyFn, ErrorSlot, GgufConfigFn, ModelObject, PluginDescriptor,
    StrRef, VisionObject, WeightEntry, ABI_MAJOR, ABI_MINOR, DESCRIPTOR_SYMBOL, PANIC_ABORT, PANIC_UNWIND,
};
use mlx_engine_plugin_api::has_entry;
use mlx_engine_plugin_api::host::{ForeignModel, ForeignVision};
use mlx_engine_plugin_api::{
    Array, DtypePolicy, DynModel, DynVision, ForwardContext, ImagePrompt, Input, LayerCache, Weights, WeightsFormat,
};

use crate::error::{Error, Result};

/// The fields every descriptor of every ABI version starts with.
#[repr(C)]
struct DescriptorHead {
    size: usize,
    abi_major: u32,
    abi_minor: u32,
}

/// A loaded, checked and initialised plugin.
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    /// The ABI version the plugin was built for.
    pub abi: (u32, u32),
    pub text_types: Vec<String>,
    pub vision_types: Vec<String>,
    create_model: CreateFn<ModelObject>,
    create_vision: CreateFn<VisionObject>,
    /// 1.1's hooks (absent in 1.0 plugins).
    gguf_config: Option<GgufConfigFn>,
    dtype_policy: Option<DtypePolicyFn>,
    /// Shared with every object created from this plugin: the code behind their vtables must
    /// stay mapped for as long as any of them lives.
    lib: Arc<Library>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("abi", &self.abi)
            .field("text_types", &self.text_types)
            .field("vision_types", &self.vision_types)
            .finish_non_exhaustive()
    }
}

fn plugin_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Plugin { path: path.to_path_buf(), reason: reason.into() }
}

/// Whether the file starts like an executable object of some platform, to tell "this is not a
/// library at all" from "this library cannot be loaded here" (missing dependency, wrong arch).
fn looks_like_object_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut magic).is_err() {
        return false;
    }
    let elf = magic == *b"\x7fELF";
    let macho = matches!(u32::from_le_bytes(magic), 0xfeed_face | 0xfeed_facf | 0xcafe_babe | 0xbeba_feca);
    let pe = magic[..2] == *b"MZ";
    elf || macho || pe
}

/// Reads the library's symbol table without loading it: opening a library runs its
/// constructors, so a file in a plugin folder that is not a plugin must be turned away before
/// that; and a descriptor exported as data rather than code would crash when called.
fn check_exports(path: &Path) -> std::result::Result<(), String> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    // SAFETY: a read-only map of a file we only read, dropped before the library is opened.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot read: {e}"))?;
    let obj = match object::File::parse(&*map) {
        Ok(o) => o,
        // Formats the reader does not know are left to the dynamic loader's own message.
        Err(_) if looks_like_object_file(path) => return Ok(()),
        Err(e) => return Err(format!("not a shared library: {e}")),
    };
    // Mach-O prefixes C symbol names with an underscore.
    let wanted = |name: &str| name == DESCRIPTOR_SYMBOL || name.strip_prefix('_') == Some(DESCRIPTOR_SYMBOL);
    let found = obj.dynamic_symbols().chain(obj.symbols()).find(|s| s.name().is_ok_and(wanted) && !s.is_undefined());
    match found {
        None => Err(format!(
            "no descriptor symbol `{DESCRIPTOR_SYMBOL}`: not an mlx-engine plugin (plugins export it with export_plugin!); \
             not loaded"
        )),
        Some(sym) if sym.kind() != SymbolKind::Text && sym.kind() != SymbolKind::Unknown => Err(format!(
            "`{DESCRIPTOR_SYMBOL}` is exported as {:?}, not as a function: not an mlx-engine plugin; not loaded",
            sym.kind()
        )),
        Some(_) => Ok(()),
    }
}

impl LoadedPlugin {
    /// Opens `path`, checks its descriptor and initialises it with the engine's ops table.
    pub fn load(path: &Path) -> Result<LoadedPlugin> {
        check_exports(path).map_err(|reason| plugin_err(path, reason))?;
        // SAFETY: opening a library runs its initialisers. Loading a plugin means trusting its
        // code (the documented limit of in-process plugins); nothing else of ours runs meanwhile.
        let lib = unsafe { Library::new(path) }.map_err(|e| {
            if looks_like_object_file(path) {
                plugin_err(path, format!("cannot be loaded as a shared library: {e}"))
            } else {
                plugin_err(path, format!("not a shared library: {e}"))
            }
        })?;
        // SAFETY: the symbol's type is fixed by the ABI (`DescriptorFn`); a library exporting
        // the name with another type breaks the ABI contract we document.
        let get = unsafe { lib.get::<DescriptorFn>(DESCRIPTOR_SYMBOL.as_bytes()) };
        let describe = *get.map_err(|_| {
            plugin_err(
                path,
                format!("no descriptor symbol `{DESCRIPTOR_SYMBOL}`: not an mlx-engine plugin (plugins export it with export_plugin!)"),
            )
        })?;
        // SAFETY: calling the descriptor function has no preconditions; it returns a pointer to
        // static data of the library, which `lib` keeps mapped.
        let ptr = unsafe { describe() };
        if ptr.is_null() {
            return Err(plugin_err(path, "the descriptor function returned null"));
        }
        if !ptr.is_aligned() {
            return Err(plugin_err(path, "the descriptor is misaligned"));
        }
        // SAFETY: every descriptor of every ABI version starts with these three fields, and the
        // pointer is non-null and aligned.
        let head = unsafe { std::ptr::read(ptr.cast::<DescriptorHead>()) };
        check_version(path, &head)?;
        // SAFETY: the version and size checks passed: the plugin's descriptor has at least the
        // fields of the minor it declares, so the fingerprint (a 1.0 field) can be read.
        let fingerprint = unsafe { std::ptr::addr_of!((*ptr).layout_fingerprint).read() };
        let expected = layout_fingerprint(head.abi_minor);
        if fingerprint != expected {
            return Err(plugin_err(
                path,
                format!(
                    "layout check failed: fingerprint {fingerprint:#018x}, ABI {}.{} has {expected:#018x} \
                     (the plugin's ABI structs are laid out differently: rebuild it against a released mlx-engine-plugin-api)",
                    head.abi_major, head.abi_minor
                ),
            ));
        }
        // SAFETY: as above; 1.1's entry is read only when the plugin's size covers it.
        let panic_strategy = has_entry!(head.size, PluginDescriptor, panic_strategy)
            .then(|| unsafe { std::ptr::addr_of!((*ptr).panic_strategy).read() });
        check_panic_strategy(path, panic_strategy)?;
        // SAFETY: read only when the plugin's size covers them (1.1 entries).
        let gguf_config = has_entry!(head.size, PluginDescriptor, gguf_config)
            .then(|| unsafe { std::ptr::addr_of!((*ptr).gguf_config).read() });
        // SAFETY: as above.
        let dtype_policy = has_entry!(head.size, PluginDescriptor, dtype_policy)
            .then(|| unsafe { std::ptr::addr_of!((*ptr).dtype_policy).read() });
        // SAFETY: every field of minor 0 is present (size check), and nothing below reads a
        // field of a later minor through this reference.
        let d: &PluginDescriptor = unsafe { &*ptr };
        let read = |s: &StrRef, what: &str| {
            // SAFETY: the descriptor's strings are static data of the loaded library; we copy them.
            unsafe { s.as_str() }.map(str::to_string).map_err(|e| plugin_err(path, format!("{what}: {e}")))
        };
        let name = read(&d.name, "plugin name")?;
        let version = read(&d.version, "plugin version")?;
        // SAFETY: as above; `types` copies nothing, so the strings are copied right after.
        let (text, vision) = unsafe { d.types() }.map_err(|e| plugin_err(path, format!("model types: {e}")))?;
        if name.is_empty() {
            return Err(plugin_err(path, "the descriptor has an empty plugin name"));
        }
        if let Some(bad) = text.iter().chain(vision.iter()).find(|t| t.is_empty()) {
            return Err(plugin_err(path, format!("the descriptor declares an empty model type {bad:?}")));
        }
        let text_types = text.iter().map(|s| s.to_string()).collect();
        let vision_types = vision.iter().map(|s| s.to_string()).collect();

        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        // SAFETY: `init` is called once per load, before anything else of the plugin; the table
        // is static in the engine and outlives the plugin.
        let status = unsafe { (d.init)(crate::mlx::ffi::ops_table(), &sink) };
        if status != 0 {
            return Err(plugin_err(path, format!("init failed: {}", slot.into_error("init"))));
        }
        Ok(LoadedPlugin {
            path: path.to_path_buf(),
            name,
            version,
            abi: (head.abi_major, head.abi_minor),
            text_types,
            vision_types,
            create_model: d.create_model,
            create_vision: d.create_vision,
            gguf_config,
            dtype_policy,
            lib: Arc::new(lib),
        })
    }

    /// Builds the text architecture `model_type` from the plugin.
    pub fn create_model(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynModel>> {
        let obj = self.call_create(self.create_model, "text model", model_type, config_json, weights, format)?;
        // SAFETY: `obj` was just returned by the plugin's create_model; `_lib` below keeps the
        // library loaded for as long as the model lives.
        let model = unsafe { ForeignModel::new(obj, self.abi.1) }.map_err(|e| plugin_err(&self.path, e.to_string()))?;
        Ok(Box::new(PluginModel { model, label: self.label(), _lib: Arc::clone(&self.lib) }))
    }

    /// The plugin's `config.json` for a GGUF file of text type `model_type` (`gguf_json`: a
    /// `GgufInfo` as JSON), or `None` when its architecture does not map GGUF (always, for 1.0
    /// plugins, which have no such hook).
    pub fn gguf_config(&self, model_type: &str, gguf_json: &str) -> Result<Option<String>> {
        let Some(hook) = self.gguf_config else { return Ok(None) };
        let mut out = ErrorSlot::default();
        let out_sink = out.sink();
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        // SAFETY: strings borrowed from live locals, two sinks for the call; the function is
        // from a descriptor of a library `self.lib` keeps loaded.
        let st = unsafe { hook(StrRef::new(model_type), StrRef::new(gguf_json), &out_sink, &sink) };
        if st != 0 {
            return Err(plugin_err(
                &self.path,
                format!("mapping GGUF metadata for `{model_type}` failed: {}", slot.into_error("gguf_config")),
            ));
        }
        Ok(out.into_text())
    }

    /// The plugin's dtype policy for each tensor name of a `model_type` checkpoint (every
    /// tensor takes the compute dtype for 1.0 plugins).
    pub fn dtype_policy(&self, model_type: &str, names: &[&str]) -> Result<Vec<DtypePolicy>> {
        let Some(hook) = self.dtype_policy else { return Ok(vec![DtypePolicy::Compute; names.len()]) };
        let refs: Vec<StrRef> = names.iter().map(|n| StrRef::new(n)).collect();
        let mut codes = vec![0u32; names.len()];
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        // SAFETY: `refs` and `codes` have one element per name; strings borrowed from `names`.
        let st = unsafe { hook(StrRef::new(model_type), refs.as_ptr(), refs.len(), codes.as_mut_ptr(), &sink) };
        if st != 0 {
            return Err(plugin_err(
                &self.path,
                format!("dtype policy for `{model_type}` failed: {}", slot.into_error("dtype_policy")),
            ));
        }
        codes
            .into_iter()
            .map(|c| DtypePolicy::from_code(c).map_err(|e| plugin_err(&self.path, e.to_string())))
            .collect()
    }

    /// How errors of this plugin's objects name it.
    fn label(&self) -> String {
        format!("plugin `{}` ({})", self.name, self.path.display())
    }

    /// Builds the vision add-on `model_type` from the plugin.
    pub fn create_vision(
        &self,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<Box<dyn DynVision>> {
        let obj = self.call_create(self.create_vision, "vision add-on", model_type, config_json, weights, format)?;
        // SAFETY: as in `create_model`.
        let vision =
            unsafe { ForeignVision::new(obj, self.abi.1) }.map_err(|e| plugin_err(&self.path, e.to_string()))?;
        Ok(Box::new(PluginVision { vision, label: self.label(), _lib: Arc::clone(&self.lib) }))
    }

    /// Calls one of the descriptor's constructors with borrowed weights.
    fn call_create<O>(
        &self,
        create: CreateFn<O>,
        what: &str,
        model_type: &str,
        config_json: &str,
        weights: Weights,
        format: WeightsFormat,
    ) -> Result<O> {
        // The entries borrow names and handles from `weights`, which lives until the end of
        // this function; the plugin takes its own references during the call.
        let entries: Vec<WeightEntry> =
            weights.iter().map(|(name, a)| WeightEntry { name: StrRef::new(name), array: a.as_raw() }).collect();
        let mut slot = ErrorSlot::default();
        let sink = slot.sink();
        let mut out = MaybeUninit::<O>::uninit();
        // SAFETY: every pointer is valid for the call (strings and entries borrowed from live
        // locals, one out-slot, one error sink); the function pointer comes from a descriptor of
        // a library `self.lib` keeps loaded.
        let status = unsafe {
            create(
                StrRef::new(model_type),
                StrRef::new(config_json),
                entries.as_ptr(),
                entries.len(),
                format as u32,
                out.as_mut_ptr(),
                &sink,
            )
        };
        drop(entries);
        drop(weights);
        if status != 0 {
            return Err(plugin_err(
                &self.path,
                format!("building {what} `{model_type}` failed: {}", slot.into_error("create")),
            ));
        }
        // SAFETY: on success the plugin wrote the object into the out-slot.
        Ok(unsafe { out.assume_init() })
    }
}

/// Refuses other ABI majors, newer minors and descriptors smaller than their minor's layout.
fn check_version(path: &Path, head: &DescriptorHead) -> Result<()> {
    let (major, minor) = (head.abi_major, head.abi_minor);
    if major != ABI_MAJOR {
        return Err(plugin_err(
            path,
            format!(
                "built for plugin ABI {major}.{minor}, this engine supports ABI {ABI_MAJOR}.x: \
                 rebuild the plugin against mlx-engine-plugin-api with ABI {ABI_MAJOR}.x"
            ),
        ));
    }
    if minor > ABI_MINOR {
        return Err(plugin_err(
            path,
            format!("built for plugin ABI {major}.{minor}, this engine provides ABI {ABI_MAJOR}.{ABI_MINOR}: upgrade the engine"),
        ));
    }
    let needed = PluginDescriptor::size_at_minor(minor);
    if head.size < needed {
        return Err(plugin_err(
            path,
            format!("the descriptor has {} bytes, ABI {major}.{minor} needs at least {needed}", head.size),
        ));
    }
    Ok(())
}

/// Refuses a plugin built with `panic = "abort"`: `catch_unwind` cannot contain its panics, so
/// one would end the engine's process instead of failing a request. 1.0 plugins do not say
/// (`None`); they are accepted, as 1.0 promised.
fn check_panic_strategy(path: &Path, strategy: Option<u32>) -> Result<()> {
    match strategy {
        None | Some(PANIC_UNWIND) => Ok(()),
        Some(PANIC_ABORT) => Err(plugin_err(
            path,
            "built with panic = \"abort\": a panic in it would end the engine's process instead of failing \
             one request; rebuild it with panic = \"unwind\" (remove `panic = \"abort\"` from the [profile.*] \
             sections of its Cargo.toml, and -C panic=abort from RUSTFLAGS)",
        )),
        Some(code) => Err(plugin_err(path, format!("the descriptor has an unknown panic strategy code {code}"))),
    }
}

/// A plugin's text model plus the library its code lives in. Fields drop in order: the model
/// (through the plugin's `destroy`) before the last reference to the library.
pub struct PluginModel {
    model: ForeignModel,
    label: String,
    _lib: Arc<Library>,
}

impl PluginModel {
    fn blame(&self, call: &str, e: impl fmt::Display) -> mlx_engine_plugin_api::Error {
        mlx_engine_plugin_api::Error::Boundary(format!("{}: {call}: {e}", self.label))
    }
}

impl DynModel for PluginModel {
    fn cache_layout(&self) -> Vec<LayerCache> {
        self.model.cache_layout()
    }

    /// The plugin's logits, checked to be `[B, L, vocab]` for an input of `B` rows of `L`
    /// positions (or `[B, 1, vocab]` when the context reads the last position only), so a
    /// plugin bug fails this request here, with the plugin's name, rather than somewhere in the
    /// sampler.
    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> mlx_engine_plugin_api::Result<Array> {
        let x = match input {
            Input::Tokens(a) | Input::Embeddings(a) => a,
        };
        let rows = x.shape().into_iter().take(2).collect::<Vec<_>>();
        let last_only = ctx.last_position_only();
        let logits = self.model.forward(input, ctx).map_err(|e| self.blame("forward", e))?;
        let shape = logits.shape();
        let fits = shape.len() == 3
            && shape[0] == rows[0]
            && (shape[1] == rows[1] || (last_only && shape[1] == 1 && rows[1] > 0));
        if !fits {
            let want = format!("[{}, vocab]", rows.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
            let or_last =
                if last_only { format!(" (or [{}, 1, vocab], the last position)", rows[0]) } else { String::new() };
            return Err(self.blame("forward", format!("returned logits of shape {shape:?}, expected {want}{or_last}")));
        }
        Ok(logits)
    }

    fn honours_last_position_only(&self) -> bool {
        self.model.honours_last_position_only()
    }

    fn embed_tokens(&self, ids: &Array) -> mlx_engine_plugin_api::Result<Array> {
        self.model.embed_tokens(ids).map_err(|e| self.blame("embed_tokens", e))
    }

    fn embeddings_scale(&self) -> mlx_engine_plugin_api::Result<f32> {
        self.model.embeddings_scale().map_err(|e| self.blame("embeddings_scale", e))
    }

    fn shard(&mut self, group: &mlx_engine_plugin_api::distributed::Group) -> mlx_engine_plugin_api::Result<()> {
        let r = self.model.shard(group);
        r.map_err(|e| self.blame("shard", e))
    }

    fn pipeline(&mut self, group: &mlx_engine_plugin_api::distributed::Group) -> mlx_engine_plugin_api::Result<()> {
        let r = self.model.pipeline(group);
        r.map_err(|e| self.blame("pipeline", e))
    }
}

/// A plugin's vision add-on plus its library (same drop order as [`PluginModel`]).
pub struct PluginVision {
    vision: ForeignVision,
    label: String,
    _lib: Arc<Library>,
}

impl PluginVision {
    fn blame(&self, call: &str, e: impl fmt::Display) -> mlx_engine_plugin_api::Error {
        mlx_engine_plugin_api::Error::Boundary(format!("{}: {call}: {e}", self.label))
    }
}

impl DynVision for PluginVision {
    fn image_prompt(&self, height: i32, width: i32) -> mlx_engine_plugin_api::Result<ImagePrompt> {
        self.vision.image_prompt(height, width).map_err(|e| self.blame("image_prompt", e))
    }

    fn encode(&self, pixels: &Array) -> mlx_engine_plugin_api::Result<Array> {
        self.vision.encode(pixels).map_err(|e| self.blame("encode", e))
    }

    fn merge(
        &self,
        input_ids: &Array,
        text_embeddings: &Array,
        features: &[Array],
        embeddings_scale: f32,
    ) -> mlx_engine_plugin_api::Result<Array> {
        self.vision.merge(input_ids, text_embeddings, features, embeddings_scale).map_err(|e| self.blame("merge", e))
    }
}
