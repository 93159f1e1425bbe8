//! Gemma 3 text architecture (`gemma3_text`, and the text half of `gemma3`). Follows mlx-lm's
//! `models/gemma3_text.py`: local sliding-window layers with their own RoPE base, every
//! `sliding_window_pattern`-th layer global, q/k norms, `(1 + w)` RMSNorms around attention and
//! MLP, GeGLU, embeddings scaled by `sqrt(hidden_size)` (rounded to bf16, as the reference does).

use mlx_engine_plugin_api::config_check::ConfigCheck;
use mlx_engine_plugin_api::distributed::Group;
use mlx_engine_plugin_api::gguf::{rename_llama_cpp_parts, GgufInfo};
use mlx_engine_plugin_api::nn::{
    merge_heads, output_positions, split_heads, Activation, Embedding, GatedMlp, HeadShard, Linear, PipelineStage,
    Projections, Quantization, RmsNorm, Rope, RopeScaling, ShardedToAllLinear,
};
use mlx_engine_plugin_api::serde_json::{json, Map, Value};
use mlx_engine_plugin_api::{
    export_plugin, round_to_bf16, Array, AttentionOptions, Dtype, ForwardContext, Input, LayerCache, ModelArch, Result,
    Weights, WeightsFormat,
};
use serde::Deserialize;

pub mod vision;

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i32,
    #[serde(default = "d_head_dim")]
    pub head_dim: i32,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: i32,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default = "d_local_theta")]
    pub rope_local_base_freq: f32,
    #[serde(default = "d_head_dim_f")]
    pub query_pre_attn_scalar: f32,
    #[serde(default = "d_window")]
    pub sliding_window: u32,
    #[serde(default = "d_pattern")]
    pub sliding_window_pattern: usize,
    /// Newer configs list each layer's kind instead of a pattern.
    pub layer_types: Option<Vec<String>>,
    pub rope_scaling: Option<RopeScaling>,
    pub final_logit_softcapping: Option<f32>,
    pub attn_logit_softcapping: Option<f32>,
    #[serde(alias = "quantization_config")]
    pub quantization: Option<Quantization>,
    /// Checked, not used: Gemma 3 gates its MLP with the tanh approximation of GELU.
    pub hidden_activation: Option<String>,
    pub hidden_act: Option<String>,
}

fn d_heads() -> i32 {
    4
}
fn d_head_dim() -> i32 {
    256
}
fn d_head_dim_f() -> f32 {
    256.0
}
fn d_eps() -> f32 {
    1e-6
}
fn d_kv_heads() -> i32 {
    1
}
fn d_theta() -> f32 {
    1_000_000.0
}
fn d_local_theta() -> f32 {
    10_000.0
}
fn d_window() -> u32 {
    512
}
fn d_pattern() -> usize {
    6
}

impl Config {
    fn is_sliding(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(layer).is_some_and(|k| k == "sliding_attention"),
            None => !(layer + 1).is_multiple_of(self.sliding_window_pattern.max(1)),
        }
    }
}

struct Attention {
    /// q_proj, k_proj, v_proj (joined into one matmul on the GPU).
    qkv: Projections,
    /// Sharded-to-all under tensor parallelism (sums the ranks' heads).
    o_proj: ShardedToAllLinear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    rope: Rope,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
}

impl Attention {
    fn load(w: &mut Weights, p: &str, c: &Config, sliding: bool) -> Result<Attention> {
        let q = c.quantization.as_ref();
        let lin = |w: &mut Weights, name: &str, shape| Linear::load(w, &format!("{p}.{name}"), shape, false, q);
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let norm = |w: &mut Weights, name: &str| RmsNorm::load_one_plus(w, &format!("{p}.{name}"), hd, c.rms_norm_eps);
        let rope = if sliding {
            Rope::new(c.head_dim, false, c.rope_local_base_freq, None)?
        } else {
            Rope::new(c.head_dim, false, c.rope_theta, c.rope_scaling.as_ref())?
        };
        Ok(Attention {
            qkv: Projections::new(vec![
                lin(w, "q_proj", (d, q_out))?,
                lin(w, "k_proj", (d, kv_out))?,
                lin(w, "v_proj", (d, kv_out))?,
            ])?,
            o_proj: lin(w, "o_proj", (q_out, d))?.into(),
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            rope,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: hd,
            scale: c.query_pre_attn_scalar.powf(-0.5),
        })
    }

    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let [q, k, v] = self.qkv.forward(x)?;
        let q = self.q_norm.forward(&split_heads(&q, self.n_heads)?)?;
        let k = self.k_norm.forward(&split_heads(&k, self.n_kv_heads)?)?;
        let v = split_heads(&v, self.n_kv_heads)?;
        let positions = ctx.positions(layer)?;
        let (q, k) = self.rope.apply_pair(&q, &k, &positions)?;
        let out = ctx.attention(layer, &q, &k, &v, self.scale, &AttentionOptions::default())?;
        self.o_proj.forward(&merge_heads(&out)?)
    }

    /// Keeps this rank's heads of q/k/v and the matching columns of o (q/k norms act per head
    /// and stay whole).
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
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

/// `x + y`, computed in f32 and clipped to the f16 range when running in f16 (where Gemma's
/// residual stream overflows), as the reference does.
fn residual(x: &Array, y: &Array) -> Result<Array> {
    if x.dtype() != Dtype::F16 {
        return x.add(y);
    }
    let s = x.astype(Dtype::F32)?.add(&y.astype(Dtype::F32)?)?;
    let bound = Array::scalar(65504.0, Dtype::F32)?;
    s.minimum(&bound)?.maximum(&bound.neg()?)?.astype(Dtype::F16)
}

impl Block {
    fn forward(&self, x: &Array, layer: usize, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let r = self.attn.forward(&self.input_layernorm.forward(x)?, layer, ctx)?;
        let h = residual(x, &self.post_attention_layernorm.forward(&r)?)?;
        let r = self.mlp.forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
        residual(&h, &self.post_feedforward_layernorm.forward(&r)?)
    }
}

pub struct Gemma3 {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    layout: Vec<LayerCache>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    embed_scale: f32,
    softcap: Option<f32>,
    /// Under a pipeline split: this rank's part (`layers` and `layout` are then its slice).
    stage: Option<PipelineStage>,
}

/// Gemma 3's own meanings of llama.cpp's per-layer norm names.
fn gguf_part(part: &str) -> Option<&'static str> {
    Some(match part {
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" => "pre_feedforward_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    })
}

/// Gemma 3 27B (62 layers) scales queries by `hidden_size / num_heads` instead of `head_dim`,
/// as its config.json and llama.cpp's loader do; GGUF metadata does not say.
const GEMMA3_27B_LAYERS: f64 = 62.0;

impl ModelArch for Gemma3 {
    type Config = Config;

    fn config_from_gguf(g: &GgufInfo) -> Result<Option<Value>> {
        if g.architecture()? != "gemma3" {
            return Ok(None);
        }
        let key = |k: &str| format!("gemma3.{k}");
        let heads = g.need(&key("attention.head_count"))?;
        let hidden = g.need(&key("embedding_length"))?;
        let layers = g.need(&key("block_count"))?;
        let head_dim = g.number(&key("attention.key_length")).unwrap_or(hidden / heads);
        let mut c = Map::new();
        c.insert("model_type".into(), json!("gemma3_text"));
        c.insert("hidden_size".into(), json!(hidden as i64));
        c.insert("num_hidden_layers".into(), json!(layers as i64));
        c.insert("intermediate_size".into(), json!(g.need(&key("feed_forward_length"))? as i64));
        c.insert("num_attention_heads".into(), json!(heads as i64));
        let kv = g.number(&key("attention.head_count_kv")).unwrap_or(heads);
        c.insert("num_key_value_heads".into(), json!(kv as i64));
        c.insert("head_dim".into(), json!(head_dim as i64));
        let eps = g.number(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        c.insert("rms_norm_eps".into(), json!(eps));
        c.insert("vocab_size".into(), json!(g.vocab_size("gemma3")? as i64));
        if let Some(v) = g.number(&key("context_length")) {
            c.insert("max_position_embeddings".into(), json!(v as i64));
        }
        if let Some(v) = g.number(&key("rope.freq_base")) {
            c.insert("rope_theta".into(), json!(v));
        }
        if let Some(v) = g.number(&key("attention.sliding_window")) {
            c.insert("sliding_window".into(), json!(v as i64));
        }
        // Not in the metadata: the values every Gemma 3 size uses (its config.json defaults).
        c.insert("rope_local_base_freq".into(), json!(10000.0));
        c.insert("sliding_window_pattern".into(), json!(6));
        let scalar = if layers == GEMMA3_27B_LAYERS { hidden / heads } else { head_dim };
        c.insert("query_pre_attn_scalar".into(), json!(scalar));
        // 4B-27B scale the global layers' positions linearly (factor 8).
        if let Some(kind) = g.string(&key("rope.scaling.type")) {
            let factor = g.need(&key("rope.scaling.factor"))?;
            c.insert("rope_scaling".into(), json!({"rope_type": kind, "factor": factor}));
        }
        Ok(Some(Value::Object(c)))
    }

    fn validate(c: &Config) -> Result<()> {
        let gelu = ["gelu_pytorch_tanh", "gelu_tanh", "gelu_approx"];
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
            .positive("rms_norm_eps", c.rms_norm_eps)
            .positive("rope_theta", c.rope_theta)
            .positive("rope_local_base_freq", c.rope_local_base_freq)
            .positive("query_pre_attn_scalar", c.query_pre_attn_scalar)
            .positive("sliding_window", c.sliding_window)
            .positive("sliding_window_pattern", c.sliding_window_pattern as f64)
            .positive_if_set("final_logit_softcapping", c.final_logit_softcapping)
            .positive_if_set("attn_logit_softcapping", c.attn_logit_softcapping)
            .one_of("hidden_activation", c.hidden_activation.as_deref(), &gelu)
            .one_of("hidden_act", c.hidden_act.as_deref(), &gelu);
        if let Some(types) = &c.layer_types {
            check.ensure(
                types.len() == c.num_hidden_layers,
                "layer_types",
                format!("lists {} layers, but `num_hidden_layers` is {}", types.len(), c.num_hidden_layers),
            );
            if let Some((i, t)) =
                types.iter().enumerate().find(|(_, t)| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
            {
                check.ensure(
                    false,
                    &format!("layer_types[{i}]"),
                    format!("is `{t}`; expected `full_attention` or `sliding_attention`"),
                );
            }
        }
        check.finish()
    }

    fn sanitize(_c: &Config, mut w: Weights, format: WeightsFormat) -> Result<Weights> {
        if format == WeightsFormat::Gguf {
            w = rename_llama_cpp_parts(w, gguf_part)?;
        }
        // A multimodal checkpoint arrives with its text part only (the engine partitions it).
        if format == WeightsFormat::Gguf {
            // GGUF stores Gemma's norm weights as 1 + w.
            let norms: Vec<String> = w.names().filter(|n| n.ends_with("norm.weight")).map(str::to_string).collect();
            for n in norms {
                let a = w.take(&n)?;
                w.insert(n, a.subtract(&a.scalar_like(1.0)?)?);
            }
        }
        Ok(w)
    }

    fn new(c: Config, mut w: Weights) -> Result<Gemma3> {
        let q = c.quantization.as_ref();
        let eps = c.rms_norm_eps;
        let d = c.hidden_size;
        let embed_tokens = Embedding::load(&mut w, "model.embed_tokens", (c.vocab_size, d), q)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        let mut layout = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let sliding = c.is_sliding(i);
            let norm = |w: &mut Weights, name: &str| RmsNorm::load_one_plus(w, &format!("{p}.{name}"), d, eps);
            layers.push(Block {
                attn: Attention::load(&mut w, &format!("{p}.self_attn"), &c, sliding)?,
                mlp: GatedMlp::load(
                    &mut w,
                    &format!("{p}.mlp"),
                    (d, c.intermediate_size),
                    false,
                    Activation::GeluApprox,
                    q,
                )?,
                input_layernorm: norm(&mut w, "input_layernorm")?,
                post_attention_layernorm: norm(&mut w, "post_attention_layernorm")?,
                pre_feedforward_layernorm: norm(&mut w, "pre_feedforward_layernorm")?,
                post_feedforward_layernorm: norm(&mut w, "post_feedforward_layernorm")?,
            });
            layout.push(if sliding {
                LayerCache::SlidingWindow { window: c.sliding_window }
            } else {
                LayerCache::Full
            });
        }
        let norm = RmsNorm::load_one_plus(&mut w, "model.norm", d, eps)?;
        let lm_head = if w.contains("lm_head.weight") {
            Some(Linear::load(&mut w, "lm_head", (d, c.vocab_size), false, q)?)
        } else {
            None
        };
        w.expect_consumed()?;
        Ok(Gemma3 {
            embed_tokens,
            layers,
            layout,
            norm,
            lm_head,
            // The reference rounds the scale to bf16 before casting it to the activation dtype.
            embed_scale: round_to_bf16((c.hidden_size as f32).sqrt()),
            softcap: c.final_logit_softcapping,
            stage: None,
        })
    }

    fn cache_layout(&self) -> Vec<LayerCache> {
        self.layout.clone()
    }

    fn forward(&self, input: Input<'_>, ctx: &mut dyn ForwardContext) -> Result<Array> {
        let h = match input {
            Input::Tokens(ids) => self.embed_tokens.forward(ids)?,
            Input::Embeddings(e) => e.clone(),
        };
        let h = h.multiply(&h.scalar_like(self.embeddings_scale() as f64)?)?;
        // The context numbers the layers this rank holds from 0, so its cache has those only.
        let h = PipelineStage::run_in(self.stage.as_ref(), h, |mut h| {
            for (i, layer) in self.layers.iter().enumerate() {
                h = layer.forward(&h, i, ctx)?;
            }
            Ok(h)
        })?;
        let h = self.norm.forward(&output_positions(&h, ctx)?)?;
        let out = match &self.lm_head {
            Some(head) => head.forward(&h)?,
            None => self.embed_tokens.as_linear(&h)?,
        };
        match self.softcap {
            Some(cap) => out.divide(&out.scalar_like(cap as f64)?)?.tanh()?.multiply(&out.scalar_like(cap as f64)?),
            None => Ok(out),
        }
    }

    fn embed_tokens(&self, ids: &Array) -> Result<Array> {
        self.embed_tokens.forward(ids)
    }

    fn embeddings_scale(&self) -> f32 {
        self.embed_scale
    }

    /// As mlx-lm's llama `shard`: per block, attention heads and MLP features split over the
    /// ranks; embedding, norms and head stay whole.
    fn shard(&mut self, group: &Group) -> Result<()> {
        for (i, block) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            block.attn.shard(group, &format!("{p}.self_attn"))?;
            block.mlp.shard(group, &format!("{p}.mlp"))?;
        }
        Ok(())
    }

    /// As llama's: this rank keeps its contiguous slice of the blocks and of their cache
    /// layout (sliding or global, by their index in the whole model).
    fn pipeline(&mut self, group: &Group) -> Result<()> {
        let stage = PipelineStage::new(group, self.layers.len())?;
        stage.keep(&mut self.layers);
        stage.keep(&mut self.layout);
        self.stage = Some(stage);
        Ok(())
    }
}

export_plugin! {
    name: "gemma3",
    version: env!("CARGO_PKG_VERSION"),
    text: { "gemma3_text" => Gemma3, "gemma3" => Gemma3 },
    vision: { "gemma3" => vision::Gemma3Vision },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(layers: u32, hidden: u32, heads: u32, key_length: u32, scaling: bool) -> GgufInfo {
        let mut meta = json!({
            "general.architecture": "gemma3",
            "gemma3.block_count": layers,
            "gemma3.embedding_length": hidden,
            "gemma3.feed_forward_length": hidden * 4,
            "gemma3.attention.head_count": heads,
            "gemma3.attention.head_count_kv": heads / 2,
            "gemma3.attention.key_length": key_length,
            "gemma3.rope.freq_base": 1000000.0,
            "tokenizer.ggml.tokens": {"strings": 262144},
        });
        if scaling {
            meta["gemma3.rope.scaling.type"] = json!("linear");
            meta["gemma3.rope.scaling.factor"] = json!(8.0);
        }
        GgufInfo::from_json(&json!({"metadata": meta, "tensors": {}}).to_string()).unwrap()
    }

    fn config(g: &GgufInfo) -> Value {
        Gemma3::config_from_gguf(g).unwrap().unwrap()
    }

    #[test]
    fn gguf_27b_scales_queries_by_hidden_over_heads_and_keeps_rope_scaling() {
        // Gemma 3 27B: 62 layers, hidden 5376, 32 heads of 128 -> query_pre_attn_scalar 168.
        let c = config(&gguf(62, 5376, 32, 128, true));
        assert_eq!(c["query_pre_attn_scalar"], json!(168.0));
        assert_eq!(c["rope_scaling"], json!({"rope_type": "linear", "factor": 8.0}));
        assert_eq!(c["model_type"], json!("gemma3_text"));
        assert_eq!(c["vocab_size"], json!(262144));
        // The config it builds is one the architecture accepts.
        let parsed: Config = serde::Deserialize::deserialize(c).unwrap();
        assert_eq!(parsed.rope_scaling.and_then(|s| s.factor), Some(8.0));
    }

    #[test]
    fn gguf_4b_and_1b_scale_queries_by_head_dim() {
        let c = config(&gguf(34, 2560, 8, 256, true));
        assert_eq!(c["query_pre_attn_scalar"], json!(256.0));
        assert_eq!(c["rope_scaling"]["factor"], json!(8.0));
        let c = config(&gguf(26, 1152, 4, 256, false));
        assert_eq!(c["query_pre_attn_scalar"], json!(256.0));
        assert!(c.get("rope_scaling").is_none());
    }

    #[test]
    fn other_architectures_and_missing_keys() {
        let other = GgufInfo::from_json(r#"{"metadata": {"general.architecture": "llama"}, "tensors": {}}"#).unwrap();
        assert!(Gemma3::config_from_gguf(&other).unwrap().is_none());
        let mut g = gguf(26, 1152, 4, 256, false);
        g.metadata.remove("gemma3.block_count");
        let err = Gemma3::config_from_gguf(&g).unwrap_err().to_string();
        assert_eq!(err, "config: GGUF metadata `gemma3.block_count` is missing");
    }

    #[test]
    fn gguf_norm_names_take_gemmas_meanings() {
        assert_eq!(gguf_part("ffn_norm"), Some("pre_feedforward_layernorm"));
        assert_eq!(gguf_part("post_attention_norm"), Some("post_attention_layernorm"));
        assert_eq!(gguf_part("attn_q"), None);
    }
}
