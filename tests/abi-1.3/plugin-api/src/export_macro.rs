//! The macros a plugin exports itself with. Their glue lives in [`export`](crate::export).

/// Exports a plugin: its name, version, and which types build which text architectures
/// ([`ModelArch`](crate::ModelArch)) and vision add-ons ([`VisionAddOn`](crate::VisionAddOn)).
///
/// ```ignore
/// mlx_engine_plugin_api::export_plugin! {
///     name: "llama",
///     version: env!("CARGO_PKG_VERSION"),
///     text: { "llama" => Llama, "mistral" => Llama },
///     vision: {},
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($($args:tt)*) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn mlx_engine_plugin_descriptor() -> *const $crate::abi::PluginDescriptor {
            $crate::plugin_descriptor!($($args)*)
        }
    };
}

/// The `&'static PluginDescriptor` of a plugin (what [`export_plugin!`] exports); takes the same
/// arguments. Useful on its own to wrap or inspect a descriptor (the tests' bad plugins do).
#[macro_export]
macro_rules! plugin_descriptor {
    (
        name: $name:expr,
        version: $version:expr,
        text: { $($tt:literal => $tty:ty),* $(,)? },
        vision: { $($vt:literal => $vty:ty),* $(,)? } $(,)?
    ) => {
        {
            use $crate::abi::{StrRef, ModelObject, VisionObject, WeightEntry, ErrSink, PluginDescriptor};
            static TEXT: &[StrRef] = &[$(StrRef::from_static($tt)),*];
            static VISION: &[StrRef] = &[$(StrRef::from_static($vt)),*];
            static TEXT_ENTRIES: &[$crate::TextEntry] = &[$($crate::TextEntry::of::<$tty>($tt)),*];
            static VISION_FACTORIES: &[(&str, $crate::VisionFactory)] =
                &[$(($vt, $crate::vision_factory::<$vty> as $crate::VisionFactory)),*];

            unsafe extern "C" fn create_model(
                ty: StrRef, cfg: StrRef, w: *const WeightEntry, n: usize, fmt: u32,
                out: *mut ModelObject, err: *const ErrSink,
            ) -> $crate::ops_table::Status {
                // SAFETY: the engine upholds the CreateFn contract.
                unsafe {
                    let find = |t: &str| TEXT_ENTRIES.iter().find(|e| e.model_type == t).map(|e| e.factory);
                    $crate::export::create_glue(find, |f: $crate::ModelFactory, c, w, fmt| {
                        f(c, w, fmt).map($crate::export::model_object)
                    }, ty, cfg, w, n, fmt, out, err)
                }
            }

            unsafe extern "C" fn create_vision(
                ty: StrRef, cfg: StrRef, w: *const WeightEntry, n: usize, fmt: u32,
                out: *mut VisionObject, err: *const ErrSink,
            ) -> $crate::ops_table::Status {
                // SAFETY: the engine upholds the CreateFn contract.
                unsafe {
                    let find = |t: &str| VISION_FACTORIES.iter().find(|(vt, _)| *vt == t).map(|(_, f)| *f);
                    $crate::export::create_glue(find, |f: $crate::VisionFactory, c, w, fmt| {
                        f(c, w, fmt).map($crate::export::vision_object)
                    }, ty, cfg, w, n, fmt, out, err)
                }
            }

            unsafe extern "C" fn gguf_config(
                ty: StrRef, gguf: StrRef, out: *const ErrSink, err: *const ErrSink,
            ) -> $crate::ops_table::Status {
                // SAFETY: the engine upholds the GgufConfigFn contract.
                unsafe { $crate::export::gguf_config_glue(TEXT_ENTRIES, ty, gguf, out, err) }
            }

            unsafe extern "C" fn dtype_policy(
                ty: StrRef, names: *const StrRef, n: usize, out: *mut u32, err: *const ErrSink,
            ) -> $crate::ops_table::Status {
                // SAFETY: the engine upholds the DtypePolicyFn contract.
                unsafe { $crate::export::dtype_policy_glue(TEXT_ENTRIES, ty, names, n, out, err) }
            }

            // `cfg!(panic)` is evaluated here, in the plugin's crate: a plugin built with
            // `panic = "abort"` cannot contain its panics, and the engine refuses it.
            static DESCRIPTOR: PluginDescriptor =
                PluginDescriptor::new(
                    $name, $version, TEXT, VISION, create_model, create_vision, gguf_config, dtype_policy,
                )
                    .with_panic_strategy(if cfg!(panic = "unwind") {
                        $crate::abi::PANIC_UNWIND
                    } else {
                        $crate::abi::PANIC_ABORT
                    });
            &DESCRIPTOR
        }
    };
}
