//! Llama-family text architectures: llama, mistral, qwen2 (q/k/v bias), qwen3 (q/k norms).
//! Follows mlx-lm's `models/llama.py` (and `qwen2.py` / `qwen3.py` for their differences).

use mlx_engine_plugin_api::config_check::ConfigCheck;
use mlx_engine_plugin_api::distributed::Group;
use mlx_engine_plugin_api::gguf::{rename_llama_cpp_parts, unpermute_qk_rows, GgufInfo};
use mlx_engine_plugin_api::nn::{
    exactly, merge_heads, output_positions, split_heads, Activation, Embedding, GatedMlp, HeadShard, Linear,
    PipelineStage, Projections, Quantization, RmsNorm, Rope, RopeScaling, ShardedToAllLinear,
};
use mlx_engine_plugin_api::serde_json::{json, Map, Value};
use mlx_engine_plugin_api::{
    export_plugin, Array, AttentionOptions, Error, ForwardContext, Input, LayerCache, ModelArch, Result, Weights,
    WeightsFormat,
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: Option<i32>,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    pub rope_scaling: Option<RopeScaling>,
    /// Bias on q/k/v/o (llama's `attention_bias`); qwen2 always has q/k/v bias.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(alias = "quantization_config")]
    pub quantization: Option<Quantization>,
    /// Checked, not used: these models all gate their MLP with SiLU.
    pub hidden_act: Option<String>,
}

fn default_theta() -> f32 {
    10000.0
}
fn yes() -> bool {
    true
}

impl Config {
    fn kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    fn head_dim(&self) -> i32 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }
}

struct Attention {
    /// q_proj, k_proj, v_proj (joined into one matmul on the GPU).
    qkv: Projections,
    /// Sharded-to-all under tensor parallelism (sums the ranks' heads).
    o_proj: ShardedToAllLinear,
    /// qwen3 normalises each head's queries and keys before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    rope: Rope,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
}

impl Attention {
    fn load(w: &mut Weights, p: &str, c: &Config, rope_factors: Option<&Array>) -> Result<Attention> {
        let q = c.quantization.as_ref();
        let lin = |w: &mut Weights, name: &str, shape, bias| Linear::load(w, &format!("{p}.{name}"), shape, bias, q);
        let qkv_bias = c.qkv_bias();
        let qk_norm = c.model_type == "qwen3";
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let norm = |w: &mut Weights, name: &str| RmsNorm::load(w, &format!("{p}.{name}"), hd, c.rms_norm_eps);
        Ok(Attention {
            qkv: Projections::new(vec![
                lin(w, "q_proj", (d, q_out), qkv_bias)?,
                lin(w, "k_proj", (d, kv_out), qkv_bias)?,
                lin(w, "v_proj", (d, kv_out), qkv_bias)?,
            ])?,
            o_proj: lin(w, "o_proj", (q_out, d), c.attention_bias)?.into(),
            q_norm: if qk_norm { Some(norm(w, "q_norm")?) } else { None },
            k_norm: if qk_norm { Some(norm(w, "k_norm")?) } else { None },
            rope: {
                let rope = Rope::new(c.head_dim(), c.rope_traditional, c.rope_theta, c.rope_scaling.as_ref())?;
                match rope_factors {
                    Some(f) => rope.with_freq_factors(f)?,
                    None => rope,
                }
            },
            n_heads: c.num_attention_heads,
            n_kv_heads: c.kv_heads(),
            head_dim: hd,
            scale: (c.head_dim() as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let positions = ctx.positions(layer)?;
        let (h, kv) = (self.n_heads, self.n_kv_heads);
        // Queries and keys as heads of one tensor take one RoPE call instead of two (one
        // kernel fewer per layer on the GPU); qwen3's per-head norms differ, so not there.
        let joined = if self.q_norm.is_none() { self.qkv.forward_joined(x)? } else { None };
        let (q, k, v) = match joined {
            Some(qkv) => {
                let [qk, v] = exactly(split_heads(&qkv, h + 2 * kv)?.split_at(&[h + kv], 1)?)?;
                let [q, k] = exactly(self.rope.apply_at(&qk, &positions)?.split_at(&[h], 1)?)?;
                (q, k, v)
            }
            None => {
                let [q, k, v] = self.qkv.forward(x)?;
                let (mut q, mut k, v) = (split_heads(&q, h)?, split_heads(&k, kv)?, split_heads(&v, kv)?);
                if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
                    q = qn.forward(&q)?;
                    k = kn.forward(&k)?;
                }
                let (q, k) = self.rope.apply_pair(&q, &k, &positions)?;
                (q, k, v)
            }
        };
        let out = ctx.attention(layer, &q, &k, &v, self.scale, &AttentionOptions::default())?;
        self.o_proj.forward(&merge_heads(&out)?)
    }

    /// Keeps this rank's heads (whole KV groups) of q/k/v and the matching columns of o.
    fn shard(&mut self, group: &Group, prefix: &str) -> Result<()> {
        let s = HeadShard::new(group, self.n_heads, self.n_kv_heads, self.head_dim)?;
        s.apply_joined(group, &mut self.qkv, &mut self.o_proj, prefix)?;
        self.n_heads = s.n_heads;
        self.n_kv_heads = s.n_kv_heads;
        Ok(())
    }
}

struct Block {
    attn: Attention,
    mlp: GatedMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Block {
    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let h = x.add(&self.attn.forward(&self.input_layernorm.forward(x)?, layer, ctx)?)?;
        h.add(&self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?)
    }
}

pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    /// Under a pipeline split: this rank's part (`layers` are then its slice only).
    stage: Option<PipelineStage>,
}

/// llama.cpp's name of the per-pair rope frequency factors (Llama 3.1+ GGUFs).
const ROPE_FREQS: &str = "rope_freqs.weight";

impl ModelArch for Llama {
    type Config = Config;

    /// The `<arch>.*` keys llama.cpp writes for llama, mistral, qwen2 and qwen3.
    fn config_from_gguf(g: &GgufInfo) -> Result<Option<Value>> {
        let arch = g.architecture()?.to_string();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2" | "qwen3") {
            return Ok(None);
        }
        let key = |k: &str| format!("{arch}.{k}");
        let heads = g.need(&key("attention.head_count"))?;
        let mut c = Map::new();
        c.insert("model_type".into(), json!(arch));
        c.insert("hidden_size".into(), json!(g.need(&key("embedding_length"))? as i64));
        c.insert("num_hidden_layers".into(), json!(g.need(&key("block_count"))? as i64));
        c.insert("intermediate_size".into(), json!(g.need(&key("feed_forward_length"))? as i64));
        c.insert("num_attention_heads".into(), json!(heads as i64));
        let kv = g.number(&key("attention.head_count_kv")).unwrap_or(heads);
        c.insert("num_key_value_heads".into(), json!(kv as i64));
        // `sanitize` un-permutes Q/K rows per head: name the GGUF key, not the mapped field.
        for (k, v) in [("attention.head_count", heads), ("attention.head_count_kv", kv)] {
            if v.is_nan() || v < 1.0 {
                return Err(Error::Config(format!("GGUF key `{}` must be at least 1, got {v}", key(k))));
            }
        }
        let eps = g.number(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        c.insert("rms_norm_eps".into(), json!(eps));
        c.insert("vocab_size".into(), json!(g.vocab_size(&arch)? as i64));
        c.insert("tie_word_embeddings".into(), json!(!g.has_tensor("lm_head.weight")));
        if let Some(v) = g.number(&key("context_length")) {
            c.insert("max_position_embeddings".into(), json!(v as i64));
        }
        if let Some(v) = g.number(&key("rope.freq_base")) {
            c.insert("rope_theta".into(), json!(v));
        }
        if let Some(v) = g.number(&key("attention.key_length")) {
            c.insert("head_dim".into(), json!(v as i64));
        }
        // Llama 3.1+ carry their scaling as `rope_freqs.weight` (used in `new`), not metadata.
        if g.string(&key("rope.scaling.type")) == Some("linear") {
            let factor = g.need(&key("rope.scaling.factor"))?;
            c.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
        }
        Ok(Some(Value::Object(c)))
    }

    fn validate(c: &Config) -> Result<()> {
        let heads = c.num_attention_heads as i64;
        let mut check = ConfigCheck::new();
        check
            .decoder_sizes(
                c.hidden_size,
                c.num_hidden_layers,
                c.intermediate_size,
                c.num_attention_heads,
                c.kv_heads(),
                c.vocab_size,
            )
            .positive("rms_norm_eps", c.rms_norm_eps)
            .positive("rope_theta", c.rope_theta)
            .one_of("hidden_act", c.hidden_act.as_deref(), &["silu", "swish"]);
        match c.head_dim {
            Some(hd) => check.positive("head_dim", hd).even("head_dim", hd as i64),
            None => check
                .multiple_of("hidden_size", c.hidden_size as i64, "num_attention_heads", heads)
                .even("hidden_size / num_attention_heads", if heads > 0 { c.hidden_size as i64 / heads } else { 0 }),
        };
        check.finish()
    }

    fn sanitize(c: &Config, mut w: Weights, format: WeightsFormat) -> Result<Weights> {
        if format == WeightsFormat::Gguf {
            w = rename_llama_cpp_parts(w, |_| None)?;
        }
        w.retain(|k| !k.contains("self_attn.rotary_emb.inv_freq"));
        if c.tie_word_embeddings {
            w.remove("lm_head.weight");
            w.remove("lm_head.scales");
            w.remove("lm_head.biases");
        }
        if format == WeightsFormat::Gguf && matches!(c.model_type.as_str(), "llama" | "mistral") {
            let names: Vec<String> = w
                .names()
                .filter(|n| n.contains("self_attn.q_proj.") || n.contains("self_attn.k_proj."))
                .map(str::to_string)
                .collect();
            for n in names {
                let heads = if n.contains("q_proj") { c.num_attention_heads } else { c.kv_heads() };
                let a = w.take(&n)?;
                w.insert(n, unpermute_qk_rows(&a, heads)?);
            }
        }
        Ok(w)
    }

    fn new(c: Config, mut w: Weights) -> Result<Llama> {
        let q = c.quantization.as_ref();
        let d = c.hidden_size;
        let rope_factors = w.remove(ROPE_FREQS);
        let embed_tokens = Embedding::load(&mut w, "model.embed_tokens", (c.vocab_size, d), q)?;
        let norm = |w: &mut Weights, prefix: String| RmsNorm::load(w, &prefix, d, c.rms_norm_eps);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Block {
                    attn: Attention::load(&mut w, &format!("{p}.self_attn"), &c, rope_factors.as_ref())?,
                    mlp: GatedMlp::load(
                        &mut w,
                        &format!("{p}.mlp"),
                        (d, c.intermediate_size),
                        c.mlp_bias,
                        Activation::Silu,
                        q,
                    )?,
                    input_layernorm: norm(&mut w, format!("{p}.input_layernorm"))?,
                    post_attention_layernorm: norm(&mut w, format!("{p}.post_attention_layernorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = norm(&mut w, "model.norm".into())?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::load(&mut w, "lm_head", (d, c.vocab_size), false, q)?)
        };
        w.expect_consumed()?;
        Ok(Llama { embed_tokens, layers, norm, lm_head, stage: None })
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        vec![LayerCache::Full; self.layers.len()]
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let h = match input {
            Input::Tokens(ids) => self.embed_tokens.forward(ids)?,
            Input::Embeddings(e) => e.clone(),
        };
        // The context numbers the layers this rank holds from 0, so its cache has those only.
        let h = PipelineStage::run_in(self.stage.as_ref(), h, |mut h| {
            for (i, layer) in self.layers.iter().enumerate() {
                h = layer.forward(&h, i, ctx)?;
            }
            Ok(h)
        })?;
        let h = self.norm.forward(&output_positions(&h, ctx)?)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed_tokens.as_linear(&h),
        }
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        self.embed_tokens.forward(ids)
    }

    /// mlx-lm's `Model.shard`: per block, attention heads and MLP features split over the
    /// ranks; embedding, norms and head stay whole.
    fn shard(&mut self, group: &Group) -> Result<()> {
        for (i, block) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            block.attn.shard(group, &format!("{p}.self_attn"))?;
            block.mlp.shard(group, &format!("{p}.mlp"))?;
        }
        Ok(())
    }

    /// mlx-lm's `pipeline`: this rank keeps its contiguous slice of the blocks; embedding,
    /// final norm and head stay on every rank.
    fn pipeline(&mut self, group: &Group) -> Result<()> {
        let stage = PipelineStage::new(group, self.layers.len())?;
        stage.keep(&mut self.layers);
        self.stage = Some(stage);
        Ok(())
    }
}

export_plugin! {
    name: "llama",
    version: env!("CARGO_PKG_VERSION"),
    text: { "llama" => Llama, "mistral" => Llama, "qwen2" => Llama, "qwen3" => Llama },
    vision: {},
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(meta: Value, tensors: Value) -> GgufInfo {
        GgufInfo::from_json(&json!({"metadata": meta, "tensors": tensors}).to_string()).unwrap()
    }

    #[test]
    fn gguf_metadata_maps_to_the_llama_config() {
        let g = gguf(
            json!({
                "general.architecture": "qwen2",
                "qwen2.block_count": 2, "qwen2.embedding_length": 64, "qwen2.feed_forward_length": 128,
                "qwen2.attention.head_count": 4, "qwen2.attention.head_count_kv": 2,
                "qwen2.rope.freq_base": 1000000.0, "qwen2.context_length": 32768,
                "qwen2.rope.scaling.type": "linear", "qwen2.rope.scaling.factor": 4.0,
                "tokenizer.ggml.tokens": {"strings": 100},
            }),
            json!({"lm_head.weight": [100, 64]}),
        );
        let c = Llama::config_from_gguf(&g).unwrap().unwrap();
        assert_eq!(c["model_type"], json!("qwen2"));
        assert_eq!(c["num_key_value_heads"], json!(2));
        assert_eq!(c["vocab_size"], json!(100));
        assert_eq!(c["tie_word_embeddings"], json!(false));
        assert_eq!(c["rope_scaling"], json!({"rope_type": "linear", "factor": 4.0}));
        let parsed: Config = serde::Deserialize::deserialize(c).unwrap();
        assert_eq!((parsed.kv_heads(), parsed.head_dim()), (2, 16));
    }

    #[test]
    fn gguf_of_another_architecture_is_not_ours() {
        let g = gguf(json!({"general.architecture": "gemma3"}), json!({}));
        assert!(Llama::config_from_gguf(&g).unwrap().is_none());
    }
}
