//! Qwen3 mixture-of-experts (`qwen3_moe`), following mlx-lm's `models/qwen3_moe.py`: qwen3
//! attention (per-head q/k RMSNorm), and on sparse layers a softmax router choosing
//! `num_experts_per_tok` of `num_experts` SwiGLU experts, run by `nn::SwitchGlu` (gather_mm /
//! gather_qmm, no loop over experts).

use mlx_engine_plugin_api::config_check::ConfigCheck;
use mlx_engine_plugin_api::nn::{
    merge_heads, split_heads, Activation, Embedding, GatedMlp, Linear, output_positions, Quantization, RmsNorm, Rope,
    RopeScaling, SwitchGlu,
};
use mlx_engine_plugin_api::serde::Deserialize;
use mlx_engine_plugin_api::{
    concatenate, export_plugin, Array, AttentionOptions, ForwardContext, Input, LayerCache, ModelArch, Result, Weights,
    WeightsFormat,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(crate = "mlx_engine_plugin_api::serde")]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: i32,
    pub head_dim: i32,
    pub num_experts: i32,
    pub num_experts_per_tok: i32,
    pub decoder_sparse_step: usize,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    pub moe_intermediate_size: i32,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub norm_topk_prob: bool,
    #[serde(alias = "quantization_config")]
    pub quantization: Option<Quantization>,
}

impl Config {
    fn is_sparse(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    rope: Rope,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
}

impl Attention {
    fn load(w: &mut Weights, p: &str, c: &Config) -> Result<Attention> {
        let q = c.quantization.as_ref();
        let (d, hd) = (c.hidden_size, c.head_dim);
        let lin = |w: &mut Weights, name: &str, shape| Linear::load(w, &format!("{p}.{name}"), shape, false, q);
        let norm = |w: &mut Weights, name: &str| RmsNorm::load(w, &format!("{p}.{name}"), hd, c.rms_norm_eps);
        Ok(Attention {
            q_proj: lin(w, "q_proj", (d, c.num_attention_heads * hd))?,
            k_proj: lin(w, "k_proj", (d, c.num_key_value_heads * hd))?,
            v_proj: lin(w, "v_proj", (d, c.num_key_value_heads * hd))?,
            o_proj: lin(w, "o_proj", (c.num_attention_heads * hd, d))?,
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            rope: Rope::new(hd, false, c.rope_theta, c.rope_scaling.as_ref())?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            scale: (hd as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let q = self.q_norm.forward(&split_heads(&self.q_proj.forward(x)?, self.n_heads)?)?;
        let k = self.k_norm.forward(&split_heads(&self.k_proj.forward(x)?, self.n_kv_heads)?)?;
        let v = split_heads(&self.v_proj.forward(x)?, self.n_kv_heads)?;
        let positions = ctx.positions(layer)?;
        let (q, k) = self.rope.apply_pair(&q, &k, &positions)?;
        let out = ctx.attention(layer, &q, &k, &v, self.scale, &AttentionOptions::default())?;
        self.o_proj.forward(&merge_heads(&out)?)
    }
}

/// The router and the experts of one sparse layer.
struct SparseMoe {
    gate: Linear,
    switch_mlp: SwitchGlu,
    experts: i32,
    top_k: i32,
    norm_topk_prob: bool,
}

impl SparseMoe {
    fn forward(&self, x: &Array) -> Result<Array> {
        let gates = self.gate.forward(x)?.softmax(&[-1], true)?;
        let (e, k) = (self.experts, self.top_k);
        let inds = gates.argpartition(e - k, -1)?.slice_axis(-1, e - k, e)?;
        let mut scores = gates.take_along_axis(&inds, -1)?;
        if self.norm_topk_prob {
            scores = scores.divide(&scores.sum(&[-1], true)?)?;
        }
        let y = self.switch_mlp.forward(x, &inds)?;
        y.multiply(&scores.expand_dims(&[-1])?)?.sum(&[-2], false)?.astype(y.dtype())
    }
}

enum Mlp {
    Dense(GatedMlp),
    Sparse(SparseMoe),
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Block {
    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let h = x.add(&self.attn.forward(&self.input_layernorm.forward(x)?, layer, ctx)?)?;
        let r = self.post_attention_layernorm.forward(&h)?;
        h.add(&match &self.mlp {
            Mlp::Dense(m) => m.forward(&r)?,
            Mlp::Sparse(m) => m.forward(&r)?,
        })
    }
}

pub struct Qwen3Moe {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl ModelArch for Qwen3Moe {
    type Config = Config;

    fn validate(c: &Config) -> Result<()> {
        let mut check = ConfigCheck::new();
        check
            .decoder_sizes(
                c.hidden_size,
                c.num_hidden_layers,
                c.intermediate_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size,
            )
            .positive("head_dim", c.head_dim)
            .even("head_dim", c.head_dim as i64)
            .positive("decoder_sparse_step", c.decoder_sparse_step as f64)
            .positive("num_experts_per_tok", c.num_experts_per_tok)
            .ensure(
                c.num_experts_per_tok <= c.num_experts,
                "num_experts_per_tok",
                format!("must be at most num_experts ({}), got {}", c.num_experts, c.num_experts_per_tok),
            )
            .positive("rms_norm_eps", c.rms_norm_eps)
            .positive("rope_theta", c.rope_theta);
        check.finish()
    }

    /// Hugging Face checkpoints keep one tensor per expert; stack them as mlx-lm does.
    fn sanitize(c: &Config, mut w: Weights, _format: WeightsFormat) -> Result<Weights> {
        if c.tie_word_embeddings {
            w.remove("lm_head.weight");
        }
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}.mlp");
            if !w.contains(&format!("{p}.experts.0.up_proj.weight")) {
                continue;
            }
            for n in ["up_proj", "down_proj", "gate_proj"] {
                let experts = (0..c.num_experts)
                    .map(|e| w.take(&format!("{p}.experts.{e}.{n}.weight"))?.expand_dims(&[0]))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Array> = experts.iter().collect();
                w.insert(format!("{p}.switch_mlp.{n}.weight"), concatenate(&refs, 0)?);
            }
        }
        Ok(w)
    }

    fn new(c: Config, mut w: Weights) -> Result<Qwen3Moe> {
        let q = c.quantization.as_ref();
        let d = c.hidden_size;
        let embed_tokens = Embedding::load(&mut w, "model.embed_tokens", (c.vocab_size, d), q)?;
        let norm = |w: &mut Weights, prefix: String| RmsNorm::load(w, &prefix, d, c.rms_norm_eps);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let mlp = if c.is_sparse(i) {
                    Mlp::Sparse(SparseMoe {
                        gate: Linear::load(&mut w, &format!("{p}.mlp.gate"), (d, c.num_experts), false, q)?,
                        switch_mlp: SwitchGlu::load(
                            &mut w,
                            &format!("{p}.mlp.switch_mlp"),
                            c.num_experts,
                            (d, c.moe_intermediate_size),
                            Activation::Silu,
                            q,
                        )?,
                        experts: c.num_experts,
                        top_k: c.num_experts_per_tok,
                        norm_topk_prob: c.norm_topk_prob,
                    })
                } else {
                    let mlp = format!("{p}.mlp");
                    Mlp::Dense(GatedMlp::load(&mut w, &mlp, (d, c.intermediate_size), false, Activation::Silu, q)?)
                };
                Ok(Block {
                    attn: Attention::load(&mut w, &format!("{p}.self_attn"), &c)?,
                    mlp,
                    input_layernorm: norm(&mut w, format!("{p}.input_layernorm"))?,
                    post_attention_layernorm: norm(&mut w, format!("{p}.post_attention_layernorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = norm(&mut w, "model.norm".into())?;
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(Linear::load(&mut w, "lm_head", (d, c.vocab_size), false, q)?),
        };
        w.expect_consumed()?;
        Ok(Qwen3Moe { embed_tokens, layers, norm, lm_head })
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        vec![LayerCache::Full; self.layers.len()]
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let mut h = match input {
            Input::Tokens(ids) => self.embed_tokens.forward(ids)?,
            Input::Embeddings(e) => e.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, i, ctx)?;
        }
        let h = self.norm.forward(&output_positions(&h, ctx)?)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed_tokens.as_linear(&h),
        }
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        self.embed_tokens.forward(ids)
    }
}

export_plugin! {
    name: "qwen3_moe",
    version: env!("CARGO_PKG_VERSION"),
    text: { "qwen3_moe" => Qwen3Moe },
    vision: {},
}
