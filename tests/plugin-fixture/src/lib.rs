//! `tiny`: a small but real decoder-only text model, used to test the plugin host end to end
//! (load, create with weights, forward through the engine's context, incremental decoding).
//!
//! Architecture: token embedding -> per layer [RMSNorm, q/k/v projections, RoPE at the
//! context's offset, attention through the engine's context, output projection, residual;
//! RMSNorm, SiLU-gated MLP, residual] -> final RMSNorm -> tied LM head.
//!
//! Weight names (`L` = layer index): `model.embed_tokens.weight`, `model.norm.weight`,
//! `model.layers.L.{input_layernorm,post_attention_layernorm}.weight`,
//! `model.layers.L.self_attn.{q,k,v,o}_proj.weight`, `model.layers.L.mlp.{gate,up,down}_proj.weight`.
//!
//! Cargo features produce the bad plugins of the loading tests (see Cargo.toml).
#![cfg_attr(feature = "no_descriptor", allow(dead_code))]

use mlx_engine_plugin_api::fast::{self, RopeFreqs};
use mlx_engine_plugin_api::nn::{Embedding, Linear, RmsNorm, Weight};
use mlx_engine_plugin_api::{
    Array, AttentionOptions, Error, ForwardContext, Input, LayerCache, ModelArch, Result, Weights,
};

/// The message of the `panic_forward` variant, matched by the tests.
pub const PANIC_MESSAGE: &str = "tiny fixture: forward panicked on purpose";

/// The token id whose presence in `forward`'s input makes the `panic_on_token` variant panic.
pub const PANIC_TOKEN: i32 = 13;

/// The message of the `panic_layout` variant.
pub const LAYOUT_PANIC_MESSAGE: &str = "tiny fixture: cache_layout panicked on purpose";

/// The plugin's name: `tiny2` under `alt_name`, which declares the same model type.
pub const PLUGIN_NAME: &str = if cfg!(feature = "alt_name") { "tiny2" } else { "tiny" };

/// The model type this plugin provides.
pub const MODEL_TYPE: &str = "tiny";

#[derive(Clone, Debug, serde::Deserialize)]
pub struct TinyConfig {
    pub vocab_size: i32,
    pub hidden_size: i32,
    pub num_heads: i32,
    pub num_layers: usize,
    pub intermediate_size: i32,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Tiny {
    cfg: TinyConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
}

impl Tiny {
    fn head_dim(&self) -> i32 {
        self.cfg.hidden_size / self.cfg.num_heads
    }

    /// `[B, L, D]` -> `[B, H, L, Dh]`.
    fn heads(&self, x: &Array, b: i32, l: i32) -> Result<Array> {
        x.reshape(&[b, l, self.cfg.num_heads, self.head_dim()])?.transpose(&[0, 2, 1, 3])
    }

    fn attention(&self, i: usize, layer: &Layer, x: &Array, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let (b, l) = (x.dim(0)?, x.dim(1)?);
        let dh = self.head_dim();
        let offset = ctx.offset(i)?;
        let rope = |a: Array| fast::rope(&a, dh, false, RopeFreqs::Base(self.cfg.rope_theta), 1.0, offset);
        let q = rope(self.heads(&layer.q.forward(x)?, b, l)?)?;
        let k = rope(self.heads(&layer.k.forward(x)?, b, l)?)?;
        let v = self.heads(&layer.v.forward(x)?, b, l)?;
        let scale = (dh as f32).powf(-0.5);
        let o = ctx.attention(i, &q, &k, &v, scale, &AttentionOptions::default())?;
        let o = o.transpose(&[0, 2, 1, 3])?.reshape(&[b, l, self.cfg.hidden_size])?;
        layer.o.forward(&o)
    }
}

impl ModelArch for Tiny {
    type Config = TinyConfig;

    fn new(cfg: TinyConfig, mut w: Weights) -> Result<Tiny> {
        if cfg.num_heads <= 0 || cfg.hidden_size % cfg.num_heads != 0 {
            return Err(Error::Config(format!(
                "hidden_size {} is not a multiple of num_heads {}",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        // Struct literals rather than the `nn` loaders: this source also builds against the frozen
        // 1.0 API (tests/abi-1.0), whose loaders take other arguments.
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.rms_norm_eps;
        let dense = |w: &mut Weights, name: String, shape: [i32; 2]| -> Result<Linear> {
            Ok(Linear { weight: Weight::Dense(w.take_shaped(&format!("{name}.weight"), &shape)?.into()), bias: None })
        };
        let norm = |w: &mut Weights, name: String| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: w.take_shaped(&format!("{name}.weight"), &[d])?, eps })
        };
        let embed = Embedding { weight: dense(&mut w, "model.embed_tokens".into(), [cfg.vocab_size, d])?.weight };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let lin = |w: &mut Weights, name: &str, shape| dense(w, format!("{p}.{name}"), shape);
            layers.push(Layer {
                input_norm: norm(&mut w, format!("{p}.input_layernorm"))?,
                q: lin(&mut w, "self_attn.q_proj", [d, d])?,
                k: lin(&mut w, "self_attn.k_proj", [d, d])?,
                v: lin(&mut w, "self_attn.v_proj", [d, d])?,
                o: lin(&mut w, "self_attn.o_proj", [d, d])?,
                post_norm: norm(&mut w, format!("{p}.post_attention_layernorm"))?,
                gate: lin(&mut w, "mlp.gate_proj", [f, d])?,
                up: lin(&mut w, "mlp.up_proj", [f, d])?,
                down: lin(&mut w, "mlp.down_proj", [d, f])?,
            });
        }
        let norm = norm(&mut w, "model.norm".into())?;
        if !w.is_empty() {
            let extra: Vec<&str> = w.names().collect();
            return Err(Error::Weights(format!("unexpected tensors: {}", extra.join(", "))));
        }
        Ok(Tiny { cfg, embed, layers, norm })
    }

    /// Keeps the final norm in f32 whatever the compute dtype (1.1's dtype policy).
    #[cfg(not(feature = "abi_1_0"))]
    fn dtype_policy(name: &str) -> mlx_engine_plugin_api::DtypePolicy {
        if name == "model.norm.weight" {
            mlx_engine_plugin_api::DtypePolicy::F32
        } else {
            mlx_engine_plugin_api::DtypePolicy::Compute
        }
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        if cfg!(feature = "panic_layout") {
            panic!("{LAYOUT_PANIC_MESSAGE}");
        }
        vec![LayerCache::Full; self.layers.len()]
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        if cfg!(feature = "panic_forward") {
            panic!("{PANIC_MESSAGE}");
        }
        if cfg!(feature = "panic_on_token") {
            if let Input::Tokens(ids) = input {
                if ids.astype(mlx_engine_plugin_api::Dtype::I32)?.to_vec::<i32>()?.contains(&PANIC_TOKEN) {
                    panic!("{PANIC_MESSAGE} (token {PANIC_TOKEN})");
                }
            }
        }
        let mut h = match input {
            Input::Tokens(ids) => self.embed.forward(ids)?,
            Input::Embeddings(e) => e.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let a = self.attention(i, layer, &layer.input_norm.forward(&h)?, ctx)?;
            h = h.add(&a)?;
            let x = layer.post_norm.forward(&h)?;
            let m = layer.down.forward(&layer.gate.forward(&x)?.silu()?.multiply(&layer.up.forward(&x)?)?)?;
            h = h.add(&m)?;
        }
        // ABI 1.4: only the last position when the engine reads only that.
        #[cfg(not(feature = "before_1_4"))]
        let h = mlx_engine_plugin_api::nn::output_positions(&h, ctx)?;
        let logits = self.embed.as_linear(&self.norm.forward(&h)?)?;
        if cfg!(feature = "bad_logits_shape") {
            // One position too few: the engine must notice, not the sampler.
            let l = logits.dim(1)?;
            return logits.slice_axis(1, 0, l - 1);
        }
        Ok(logits)
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        self.embed.forward(ids)
    }
}

#[cfg(not(any(feature = "tampered", feature = "no_descriptor")))]
mlx_engine_plugin_api::export_plugin! {
    name: PLUGIN_NAME,
    version: env!("CARGO_PKG_VERSION"),
    text: { "tiny" => Tiny },
    vision: {},
}

/// The real descriptor with one thing broken, as a plugin built against a different or buggy
/// plugin-api would have it: each `tampered_*` feature breaks one thing (see Cargo.toml).
#[cfg(all(feature = "tampered", not(feature = "no_descriptor")))]
mod tampered {
    use std::sync::OnceLock;

    use mlx_engine_plugin_api::abi::{
        CreateFn, ErrSink, ModelObject, ModelVTable, PluginDescriptor, StrRef, WeightEntry, ABI_MINOR,
    };
    use mlx_engine_plugin_api::ops_table::Status;

    /// Static data that only holds pointers into this library's own statics.
    struct Shared<T>(T);
    // SAFETY: the wrapped descriptor / vtable is immutable after initialisation and points only
    // at 'static data and functions of this library.
    unsafe impl<T> Sync for Shared<T> {}
    // SAFETY: as above.
    unsafe impl<T> Send for Shared<T> {}

    static REAL_CREATE: OnceLock<CreateFn<ModelObject>> = OnceLock::new();
    static SMALL_VTABLE: OnceLock<Shared<ModelVTable>> = OnceLock::new();

    /// The real `create_model`, with the object's vtable replaced by a copy whose `size` lacks
    /// the last entry of ABI 1.1.
    unsafe extern "C" fn create_with_small_vtable(
        ty: StrRef,
        cfg: StrRef,
        w: *const WeightEntry,
        n: usize,
        fmt: u32,
        out: *mut ModelObject,
        err: *const ErrSink,
    ) -> Status {
        let Some(real) = REAL_CREATE.get() else { return 1 };
        // SAFETY: the engine's arguments are passed through unchanged.
        let st = unsafe { real(ty, cfg, w, n, fmt, out, err) };
        if st == 0 {
            // SAFETY: on success `out` holds an object whose vtable is static data.
            unsafe {
                let small = SMALL_VTABLE.get_or_init(|| {
                    let mut vt = std::ptr::read((*out).vtable);
                    vt.size = std::mem::offset_of!(ModelVTable, try_layer_cache);
                    Shared(vt)
                });
                (*out).vtable = &small.0;
            }
        }
        st
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn mlx_engine_plugin_descriptor() -> *const PluginDescriptor {
        static TAMPERED: OnceLock<Shared<PluginDescriptor>> = OnceLock::new();
        let real: &'static PluginDescriptor = mlx_engine_plugin_api::plugin_descriptor! {
            name: super::PLUGIN_NAME,
            version: env!("CARGO_PKG_VERSION"),
            text: { "tiny" => super::Tiny },
            vision: {},
        };
        let d = TAMPERED.get_or_init(|| {
            // SAFETY: a bitwise copy of static, pointer-only data.
            let mut d = unsafe { std::ptr::read(real) };
            if cfg!(feature = "abi_major_2") {
                d.abi_major = 2;
                d.abi_minor = 0;
            }
            if cfg!(feature = "abi_minor_2") {
                d.abi_minor = ABI_MINOR + 1;
            }
            if cfg!(feature = "small_descriptor") {
                d.size = PluginDescriptor::size_at_minor(0);
            }
            if cfg!(feature = "bad_fingerprint") {
                d.layout_fingerprint ^= 1;
            }
            if cfg!(feature = "small_vtable") {
                let _ = REAL_CREATE.set(d.create_model);
                d.create_model = create_with_small_vtable;
            }
            Shared(d)
        });
        &d.0
    }
}
