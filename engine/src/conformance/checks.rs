//! The checks that need nothing but the plugin and a checkpoint.

use mlx_engine_plugin_api::{dequantize, quantize, Array, DynModel, Input, Weights, WeightsFormat};
use serde_json::{json, Value};

use super::{kit_err, Outcome, Subject};
use crate::cache::{CacheConfig, KvCache};
use crate::error::Result;
use crate::generate::prefill::LastPositionOnly;

/// f32 agreement of two ways to compute the same logits, relative to the logits' magnitude:
/// the engine's parity bound for prompt logits (engine/tests/parity.rs).
pub(crate) const REL_TOL: f32 = 2.5e-4;
/// Logits with 8-bit keys and values against dense ones, as a fraction of the dense logits'
/// range (max - min).
const KV8_SPREAD: f32 = 0.05;

/// `n` token ids spread over the vocabulary, varied by `salt`.
fn ids(n: usize, vocab: i32, salt: usize) -> Vec<i32> {
    (0..n).map(|i| ((i * 37 + salt * 101 + 11) % vocab as usize) as i32).collect()
}

fn tokens(rows: &[&[i32]]) -> Result<Array> {
    let flat: Vec<i32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Array::from_slice(&flat, &[rows.len() as i32, rows[0].len() as i32])?)
}

/// The logits of `ids` run through `cache`, as `[positions][vocab]`.
fn run(model: &dyn DynModel, cache: &mut KvCache, ids: &[i32]) -> Result<Vec<Vec<f32>>> {
    let logits = model.forward(Input::Tokens(&tokens(&[ids])?), cache)?;
    let v = logits.dim(-1)? as usize;
    let flat = logits.astype(mlx_engine_plugin_api::Dtype::F32)?.to_vec_f32()?;
    if flat.iter().any(|x| !x.is_finite()) {
        return Err(kit_err("the logits contain NaN or infinity"));
    }
    Ok(flat.chunks(v).map(<[f32]>::to_vec).collect())
}

/// One forward over `ids` with a fresh cache.
fn full(model: &dyn DynModel, ids: &[i32]) -> Result<Vec<Vec<f32>>> {
    run(model, &mut KvCache::new(model.cache_layout()), ids)
}

/// `ids` fed in pieces (a prefill, then chunks of three, then one at a time) through `cache`.
fn pieces(model: &dyn DynModel, cache: &mut KvCache, ids: &[i32]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    let mut at = 0;
    let first = ids.len().min(5);
    out.extend(run(model, cache, &ids[..first])?);
    at += first;
    while at < ids.len() {
        let step = if at < ids.len() / 2 { 3.min(ids.len() - at) } else { 1 };
        out.extend(run(model, cache, &ids[at..at + step])?);
        at += step;
    }
    Ok(out)
}

fn max_abs(rows: &[Vec<f32>]) -> f32 {
    rows.iter().flatten().fold(0f32, |m, x| m.max(x.abs()))
}

/// `max |a - b|` and the position where it is largest.
fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, usize) {
    let mut worst = (0f32, 0);
    for (p, (ra, rb)) in a.iter().zip(b).enumerate() {
        for (x, y) in ra.iter().zip(rb) {
            let d = (x - y).abs();
            if d > worst.0 {
                worst = (d, p);
            }
        }
    }
    worst
}

/// Fails when `got` and `want` differ by more than [`REL_TOL`] of the logits' magnitude.
fn agree(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> Result<String> {
    if got.len() != want.len() {
        return Err(kit_err(format!("{what}: {} positions, expected {}", got.len(), want.len())));
    }
    let bound = REL_TOL * max_abs(want).max(1.0);
    let (d, at) = max_diff(got, want);
    if d > bound {
        return Err(kit_err(format!("{what}: logits differ by {d:.3e} at position {at} (bound {bound:.3e})")));
    }
    Ok(format!("max |diff| {d:.2e} over {} positions (bound {bound:.2e})", got.len()))
}

/// A length past every sliding window the model declares (so windows are exercised), capped.
fn test_len(model: &dyn DynModel) -> usize {
    let window = model
        .cache_layout()
        .iter()
        .filter_map(|l| match l {
            mlx_engine_plugin_api::LayerCache::SlidingWindow { window } => Some(*window as usize),
            mlx_engine_plugin_api::LayerCache::Full => None,
        })
        .max()
        .unwrap_or(0);
    (window + 8).clamp(24, 160)
}

pub(crate) fn forward_shapes(s: &Subject, model: &dyn DynModel) -> Result<String> {
    let vocab = s.vocab()?;
    let x = tokens(&[&ids(7, vocab, 0)])?;
    let logits = model.forward(Input::Tokens(&x), &mut KvCache::new(model.cache_layout()))?;
    if logits.shape() != [1, 7, vocab] {
        return Err(kit_err(format!("tokens [1, 7] gave logits {:?}, expected [1, 7, {vocab}]", logits.shape())));
    }
    let emb = model.embed_tokens(&x)?;
    let e = emb.shape();
    if e.len() != 3 || e[..2] != [1, 7] {
        return Err(kit_err(format!("embed_tokens of [1, 7] gave {e:?}, expected [1, 7, hidden]")));
    }
    // `Embeddings(embed_tokens(ids))` must equal `Tokens(ids)`: what vision add-ons rely on.
    let from_emb = model.forward(Input::Embeddings(&emb), &mut KvCache::new(model.cache_layout()))?;
    let to_rows = |a: &Array| -> Result<Vec<Vec<f32>>> {
        Ok(a.to_vec_f32()?.chunks(vocab as usize).map(<[f32]>::to_vec).collect())
    };
    let d = agree("input embeddings vs token ids", &to_rows(&from_emb)?, &to_rows(&logits)?)?;
    Ok(format!("[1, 7] -> [1, 7, {vocab}]; embeddings [1, 7, {}] give the same logits ({d})", e[2]))
}

/// ABI 1.4's `last_position_only` (a prefill's final chunk): `[1, 1, vocab]`, the last row
/// of a full forward, with every position cached.
pub(crate) fn last_position(s: &Subject, model: &dyn DynModel) -> Result<Outcome> {
    if !model.honours_last_position_only() {
        let (major, minor) = s.plugin.abi;
        return Ok(Outcome::NotApplicable(format!("built for ABI {major}.{minor}; the question came in 1.4")));
    }
    let vocab = s.vocab()?;
    let ids = ids(9, vocab, 2);
    let want = full(model, &ids)?;
    let mut cache = KvCache::new(model.cache_layout());
    let logits = model.forward(Input::Tokens(&tokens(&[&ids])?), &mut LastPositionOnly(&mut cache))?;
    if logits.shape() != [1, 1, vocab] {
        return Err(kit_err(format!(
            "asked for the last position only, forward gave logits {:?}, expected [1, 1, {vocab}] (run the final \
             norm and output head over `nn::output_positions(&h, ctx)`)",
            logits.shape()
        )));
    }
    if cache.len() != ids.len() {
        return Err(kit_err(format!(
            "the cache holds {} positions after the pass, expected {}",
            cache.len(),
            ids.len()
        )));
    }
    let got = logits.astype(mlx_engine_plugin_api::Dtype::F32)?.to_vec_f32()?;
    agree("last position", &[got], &want[ids.len() - 1..]).map(Outcome::Measured)
}

pub(crate) fn batched_rows(s: &Subject, model: &dyn DynModel) -> Result<String> {
    let vocab = s.vocab()?;
    let (a, b) = (ids(9, vocab, 1), ids(9, vocab, 2));
    let logits = model.forward(Input::Tokens(&tokens(&[&a, &b])?), &mut KvCache::new(model.cache_layout()))?;
    if logits.shape() != [2, 9, vocab] {
        return Err(kit_err(format!("tokens [2, 9] gave logits {:?}, expected [2, 9, {vocab}]", logits.shape())));
    }
    let flat = logits.to_vec_f32()?;
    let rows: Vec<Vec<f32>> = flat.chunks(vocab as usize).map(<[f32]>::to_vec).collect();
    let ra = agree("batch row 0 vs alone", &rows[..9], &full(model, &a)?)?;
    agree("batch row 1 vs alone", &rows[9..], &full(model, &b)?)?;
    Ok(format!("a batch of 2 rows gives each row's logits alone ({ra})"))
}

pub(crate) fn cached_decode(s: &Subject, model: &dyn DynModel) -> Result<String> {
    let x = ids(test_len(model), s.vocab()?, 3);
    let want = full(model, &x)?;
    let got = pieces(model, &mut KvCache::new(model.cache_layout()), &x)?;
    agree("prefill + chunks + single steps vs one forward", &got, &want)
}

pub(crate) fn rotating_cache(s: &Subject, model: &dyn DynModel) -> Result<String> {
    let x = ids(test_len(model), s.vocab()?, 4);
    let want = full(model, &x)?;
    // A bound the sequence never reaches must change nothing.
    let roomy = CacheConfig { max_kv_size: Some(x.len() + 8), ..CacheConfig::default() };
    let got = pieces(model, &mut KvCache::with_config(model.cache_layout(), &roomy)?, &x)?;
    let d = agree("bounded cache that never fills vs one forward", &got, &want)?;
    // One that rotates many times must keep giving finite logits (checked in `run`).
    let tight = CacheConfig { max_kv_size: Some(8), ..CacheConfig::default() };
    let rotated = pieces(model, &mut KvCache::with_config(model.cache_layout(), &tight)?, &x)?;
    Ok(format!("{d}; max_kv_size 8 over {} tokens: {} finite rows", x.len(), rotated.len()))
}

pub(crate) fn quantized_kv(s: &Subject, model: &dyn DynModel) -> Result<Outcome> {
    let x = ids(test_len(model), s.vocab()?, 5);
    let want = full(model, &x)?;
    // 8-bit keys and values move logits by a fraction of their spread; a plugin that bypasses
    // the engine's cache (or mixes positions up) moves them by about all of it.
    let (lo, hi) = want.iter().flatten().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let bound = KV8_SPREAD * (hi - lo);
    let mut errors = Vec::new();
    for group in [64, 32] {
        let config = CacheConfig { kv_bits: Some(8), kv_group_size: group, ..CacheConfig::default() };
        let got = match pieces(model, &mut KvCache::with_config(model.cache_layout(), &config)?, &x) {
            Ok(g) => g,
            // The engine refuses groups that do not divide the head size; anything else is the
            // plugin's failure.
            Err(e) if e.to_string().contains("does not divide the model's head dimension") => {
                errors.push(format!("group {group}: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let (d, at) = max_diff(&got, &want);
        if d > bound {
            return Err(kit_err(format!(
                "8-bit KV (group {group}): logits differ by {d:.3} at position {at} (bound {bound:.3}, {KV8_SPREAD} of \
                 their spread)"
            )));
        }
        return Ok(format!("8-bit keys/values, group {group}: max |logit diff| {d:.3} (bound {bound:.3})").into());
    }
    Ok(Outcome::NotApplicable(format!("no KV group size (64, 32) divides the head size: {}", errors.join("; "))))
}

/// Tensors an 8-bit affine quantization applies to, as mlx-lm quantizes Linear, Embedding and
/// expert layers: floating-point `*.weight` matrices (or stacks) whose rows split into groups.
fn quantizable(name: &str, a: &Array) -> Option<i32> {
    let s = a.shape();
    let eligible = name.ends_with(".weight") && !name.contains("norm") && s.len() >= 2 && a.dtype().is_float();
    let last = *s.last()?;
    match () {
        _ if !eligible => None,
        _ if last % 64 == 0 => Some(64),
        _ if last % 32 == 0 => Some(32),
        _ => None,
    }
}

pub(crate) fn quantized_weights(s: &Subject) -> Result<String> {
    let (mut quant, mut twin) = (Weights::new(), Weights::new());
    let mut overrides = serde_json::Map::new();
    let mut count = 0;
    for (name, a) in s.weights.iter() {
        let Some(group) = quantizable(name, a) else {
            quant.insert(name, a.clone());
            twin.insert(name, a.clone());
            continue;
        };
        let prefix = &name[..name.len() - ".weight".len()];
        let (wq, scales, biases) = quantize(a, group, 8)?;
        twin.insert(name, dequantize(&wq, &scales, Some(&biases), group, 8)?);
        quant.insert(name, wq);
        quant.insert(format!("{prefix}.scales"), scales);
        quant.insert(format!("{prefix}.biases"), biases);
        if group != 64 {
            overrides.insert(prefix.to_string(), json!({"group_size": group, "bits": 8}));
        }
        count += 1;
    }
    if count == 0 {
        return Err(kit_err("no weight matrix has rows in groups of 32 or 64: nothing to quantize"));
    }
    let mut config = s.config.clone();
    let mut q = serde_json::Map::from_iter([("group_size".into(), json!(64)), ("bits".into(), json!(8))]);
    q.extend(overrides);
    if let Value::Object(c) = &mut config {
        c.insert("quantization".into(), Value::Object(q));
    }
    let qmodel = s.build(&config, quant)?;
    let dense = s.build(&s.config, twin)?;
    let x = ids(12, s.vocab()?, 6);
    let d = agree("8-bit weights vs their dequantized twin", &full(qmodel.as_ref(), &x)?, &full(dense.as_ref(), &x)?)?;
    Ok(format!("{count} tensors at 8 bits: {d}"))
}

/// Safetensors checkpoints say whether they are MLX conversions only through metadata that
/// converters other than mlx-lm may leave out, so the same tensors can reach `sanitize` under
/// either format. Sanitizing must then leave names it already produced alone: the model built
/// with the other safetensors format gives the same logits.
pub(crate) fn sanitize_round_trip(s: &Subject, model: &dyn DynModel) -> Result<Outcome> {
    let other = match s.format {
        WeightsFormat::Mlx => WeightsFormat::HuggingFace,
        WeightsFormat::HuggingFace => WeightsFormat::Mlx,
        WeightsFormat::Gguf => return Ok(Outcome::NotApplicable("a GGUF checkpoint has one naming".into())),
    };
    let again = s
        .build_as(&s.config, s.weights(), other)
        .map_err(|e| kit_err(format!("the same tensors declared as {other:?} do not load: {e}")))?;
    let x = ids(12, s.vocab()?, 7);
    let d = agree(&format!("{:?} vs {other:?}", s.format), &full(again.as_ref(), &x)?, &full(model, &x)?)?;
    Ok(format!("the {:?} tensors declared as {other:?} give the same model ({d})", s.format).into())
}

/// The name a load error must mention, and whether it does.
fn names(e: &crate::Error, what: &str) -> Result<String> {
    let msg = e.to_string();
    if msg.contains(what) {
        Ok(msg)
    } else {
        Err(kit_err(format!("the error does not name `{what}`: {msg}")))
    }
}

pub(crate) fn missing_tensor(s: &Subject) -> Result<String> {
    // A layer tensor: the model certainly needs it (a top-level one might be optional, e.g. a
    // tied head).
    let victim = s
        .weights
        .names()
        .find(|n| n.contains("layers.0.") && n.ends_with(".weight"))
        .or_else(|| s.weights.names().next())
        .ok_or_else(|| kit_err("the checkpoint has no tensors"))?
        .to_string();
    let mut w = s.weights();
    w.remove(&victim);
    match s.build(&s.config, w) {
        Ok(_) => Err(kit_err(format!("the model loaded without `{victim}`"))),
        Err(e) => names(&e, &victim).map(|m| format!("refused: {m}")),
    }
}

pub(crate) fn wrong_shape(s: &Subject) -> Result<String> {
    let (victim, shape) = s
        .weights
        .iter()
        .find(|(n, a)| n.contains("layers.0.") && a.ndim() == 2)
        .map(|(n, a)| (n.to_string(), a.shape()))
        .ok_or_else(|| kit_err("no 2-D layer tensor to reshape"))?;
    let mut w = s.weights();
    let bad = vec![shape[0] + 1, shape[1]];
    w.insert(victim.clone(), Array::zeros(&bad, mlx_engine_plugin_api::Dtype::F32)?);
    match s.build(&s.config, w) {
        Ok(_) => Err(kit_err(format!("the model loaded `{victim}` with shape {bad:?} instead of {shape:?}"))),
        Err(e) => names(&e, &victim).map(|m| format!("refused: {m}")),
    }
}

pub(crate) fn bad_config(s: &Subject) -> Result<String> {
    let field = ["hidden_size", "vocab_size", "num_hidden_layers"]
        .into_iter()
        .find(|f| s.config.get(*f).is_some())
        .ok_or_else(|| kit_err("the config has none of hidden_size, vocab_size, num_hidden_layers"))?;
    let mut config = s.config.clone();
    config[field] = json!("not a number");
    match s.build(&config, s.weights()) {
        Ok(_) => Err(kit_err(format!("the model loaded with `{field}` = \"not a number\""))),
        Err(e) => names(&e, field).map(|m| format!("refused: {m}")),
    }
}
