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
#![cfg_attr(any(feature = "abi_major_2", feature = "no_descriptor"), allow(dead_code))]

use mlx_engine_plugin_api::fast::{self, RopeFreqs};
use mlx_engine_plugin_api::nn::{Embedding, Linear, RmsNorm};
use mlx_engine_plugin_api::{
    Array, AttentionOptions, Error, ForwardContext, Input, LayerCache, ModelArch, Result, Weights,
};

/// The message of the `panic_forward` variant, matched by the tests.
pub const PANIC_MESSAGE: &str = "tiny fixture: forward panicked on purpose";

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
        let embed = Embedding::load(&mut w, "model.embed_tokens", None)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let lin = |w: &mut Weights, name: &str| Linear::load(w, &format!("{p}.{name}"), false, None);
            layers.push(Layer {
                input_norm: RmsNorm::load(&mut w, &format!("{p}.input_layernorm"), cfg.rms_norm_eps)?,
                q: lin(&mut w, "self_attn.q_proj")?,
                k: lin(&mut w, "self_attn.k_proj")?,
                v: lin(&mut w, "self_attn.v_proj")?,
                o: lin(&mut w, "self_attn.o_proj")?,
                post_norm: RmsNorm::load(&mut w, &format!("{p}.post_attention_layernorm"), cfg.rms_norm_eps)?,
                gate: lin(&mut w, "mlp.gate_proj")?,
                up: lin(&mut w, "mlp.up_proj")?,
                down: lin(&mut w, "mlp.down_proj")?,
            });
        }
        let norm = RmsNorm::load(&mut w, "model.norm", cfg.rms_norm_eps)?;
        if !w.is_empty() {
            let extra: Vec<&str> = w.names().collect();
            return Err(Error::Weights(format!("unexpected tensors: {}", extra.join(", "))));
        }
        Ok(Tiny { cfg, embed, layers, norm })
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        vec![LayerCache::Full; self.layers.len()]
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        if cfg!(feature = "panic_forward") {
            panic!("{PANIC_MESSAGE}");
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
        self.embed.as_linear(&self.norm.forward(&h)?)
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        self.embed.forward(ids)
    }
}

#[cfg(not(any(feature = "abi_major_2", feature = "no_descriptor")))]
mlx_engine_plugin_api::export_plugin! {
    name: PLUGIN_NAME,
    version: env!("CARGO_PKG_VERSION"),
    text: { "tiny" => Tiny },
    vision: {},
}

/// A descriptor identical to a real one except that it claims ABI major 2, as a plugin built
/// against a future, incompatible plugin-api would.
#[cfg(all(feature = "abi_major_2", not(feature = "no_descriptor")))]
mod abi2 {
    use mlx_engine_plugin_api::abi::{ErrSink, ModelObject, PluginDescriptor, StrRef, VisionObject, WeightEntry};
    use mlx_engine_plugin_api::ops_table::Status;

    unsafe extern "C" fn refuse<O>(
        _: StrRef,
        _: StrRef,
        _: *const WeightEntry,
        _: usize,
        _: u32,
        _: *mut O,
        _: *const ErrSink,
    ) -> Status {
        1
    }

    static TEXT: [StrRef; 1] = [StrRef::from_static(super::MODEL_TYPE)];

    static DESCRIPTOR: PluginDescriptor = {
        let mut d = PluginDescriptor::new(
            super::PLUGIN_NAME,
            env!("CARGO_PKG_VERSION"),
            &TEXT,
            &[],
            refuse::<ModelObject>,
            refuse::<VisionObject>,
        );
        d.abi_major = 2;
        d
    };

    #[unsafe(no_mangle)]
    pub extern "C" fn mlx_engine_plugin_descriptor() -> *const PluginDescriptor {
        &DESCRIPTOR
    }
}
