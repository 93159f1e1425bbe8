//! The comparison with a golden recorded by mlx-lm (`scripts/plugin-kit/record_golden.py`, in
//! the format of `scripts/goldens/record.py`), under the text parity rules of
//! engine/tests/parity.rs: prompt logits within a relative bound; greedy tokens identical step
//! for step, logprobs within the f32 bound, and a divergence allowed only where mlx-lm's top two
//! candidates were a near-tie (and only after `min_steps` agreed steps).

use std::path::Path;

use mlx_engine_plugin_api::{Array, DynModel, Input};
use serde_json::Value;

use super::checks::REL_TOL;
use super::{kit_err, Subject};
use crate::cache::KvCache;
use crate::error::{Error, Result};

/// f32 logprob bound and near-tie margin of the text parity tests.
const LOGPROB: f32 = 1.5e-4;
const TIE_MARGIN: f32 = 1e-3;

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| kit_err(format!("golden: {what} has no `{key}`")))
}

fn numbers(v: &Value, what: &str) -> Result<Vec<f64>> {
    v.as_array()
        .ok_or_else(|| kit_err(format!("golden: `{what}` is not a list")))?
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| kit_err(format!("golden: `{what}` holds a non-number"))))
        .collect()
}

/// Log-softmax of the last position of `logits` (`[1, L, V]`).
fn last_logprobs(logits: &Array) -> Result<Vec<f32>> {
    let l = logits.dim(1)?;
    let v = logits.slice_axis(1, l - 1, l)?.reshape(&[-1])?;
    Ok(v.log_softmax(-1)?.to_vec_f32()?)
}

fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
}

fn forward(model: &dyn DynModel, cache: &mut KvCache, ids: &[i32]) -> Result<Array> {
    Ok(model.forward(Input::Tokens(&Array::from_slice(ids, &[1, ids.len() as i32])?), cache)?)
}

/// mlx-lm's `generate_step` semantics: `prompt[:-1]` in one chunk, the last prompt token as its
/// own step, then one token per step; each step's argmax and its logprob.
fn greedy(model: &dyn DynModel, prompt: &[i32], steps: usize) -> Result<Vec<(u32, f32)>> {
    let mut cache = KvCache::new(model.cache_layout());
    if prompt.len() > 1 {
        forward(model, &mut cache, &prompt[..prompt.len() - 1])?;
    }
    let mut lp = last_logprobs(&forward(model, &mut cache, &prompt[prompt.len() - 1..])?)?;
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (t, p) = argmax(&lp);
        out.push((t as u32, p));
        lp = last_logprobs(&forward(model, &mut cache, &[t as i32])?)?;
    }
    Ok(out)
}

/// Checks one prompt; returns the number of agreed steps and the largest logprob difference.
fn prompt(model: &dyn DynModel, p: &Value, fixed: &[usize], min_steps: usize) -> Result<(usize, f32, f32)> {
    let name = p.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
    let what = format!("prompt `{name}`");
    let ids: Vec<i32> = numbers(field(p, "prompt_ids", &what)?, "prompt_ids")?.iter().map(|&x| x as i32).collect();
    if ids.is_empty() {
        return Err(kit_err(format!("golden: {what} has no prompt ids")));
    }
    // Prompt logits: one forward over the whole prompt.
    let logits = forward(model, &mut KvCache::new(model.cache_layout()), &ids)?;
    let v = logits.dim(-1)? as usize;
    let rows: Vec<Vec<f32>> = logits.to_vec_f32()?.chunks(v).map(<[f32]>::to_vec).collect();
    let per = field(field(p, "prompt_logits", &what)?, "per_position", &what)?;
    let want_max = numbers(field(per, "max", &what)?, "per_position.max")?;
    let want_fixed: Vec<Vec<f64>> = field(per, "fixed_ids_logits", &what)?
        .as_array()
        .ok_or_else(|| kit_err("golden: `fixed_ids_logits` is not a list"))?
        .iter()
        .map(|r| numbers(r, "fixed_ids_logits"))
        .collect::<Result<_>>()?;
    if want_max.len() != rows.len() || want_fixed.len() != rows.len() {
        return Err(kit_err(format!(
            "golden: {what}: {} positions recorded, the model gave {}",
            want_max.len(),
            rows.len()
        )));
    }
    let scale = want_max.iter().fold(1f64, |m, x| m.max(x.abs())) as f32;
    let mut worst = 0f32;
    for (pos, row) in rows.iter().enumerate() {
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        worst = worst.max((mx - want_max[pos] as f32).abs());
        for (&id, &w) in fixed.iter().zip(&want_fixed[pos]) {
            let got = *row.get(id).ok_or_else(|| kit_err(format!("golden: fixed id {id} is past the vocabulary")))?;
            worst = worst.max((got - w as f32).abs());
        }
    }
    if worst > REL_TOL * scale {
        return Err(kit_err(format!(
            "{what}: prompt logits differ from mlx-lm's by {worst:.3e} (bound {:.3e})",
            REL_TOL * scale
        )));
    }
    // Greedy decoding.
    let tokens: Vec<u32> =
        numbers(field(p, "generated_ids", &what)?, "generated_ids")?.iter().map(|&x| x as u32).collect();
    let logprobs = numbers(field(p, "logprobs", &what)?, "logprobs")?;
    let gaps = numbers(field(p, "top2_gap", &what)?, "top2_gap")?;
    if tokens.len() < min_steps {
        return Err(kit_err(format!("golden: {what} has {} steps, fewer than the {min_steps} required", tokens.len())));
    }
    let ours = greedy(model, &ids, tokens.len())?;
    let mut lp_worst = 0f32;
    for (i, &(t, lp)) in ours.iter().enumerate() {
        if t != tokens[i] {
            let tie = (gaps[i].abs() as f32) < TIE_MARGIN;
            if tie && i >= min_steps {
                return Ok((i, lp_worst, worst));
            }
            return Err(kit_err(format!(
                "{what}: step {i} gave token {t}, mlx-lm gave {} (its top-2 gap {:.2e}{})",
                tokens[i],
                gaps[i],
                if tie { format!(", a near-tie, but only {i} of {min_steps} steps agreed") } else { String::new() }
            )));
        }
        let d = (lp - logprobs[i] as f32).abs();
        if d > LOGPROB {
            return Err(kit_err(format!(
                "{what}: step {i} logprob {lp} vs mlx-lm's {} (bound {LOGPROB})",
                logprobs[i]
            )));
        }
        lp_worst = lp_worst.max(d);
    }
    Ok((ours.len(), lp_worst, worst))
}

pub(crate) fn compare(s: &Subject, model: &dyn DynModel, path: &Path, min_steps: usize) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let g: Value =
        serde_json::from_str(&text).map_err(|e| kit_err(format!("{}: invalid JSON: {e}", path.display())))?;
    let header = field(&g, "header", "the golden")?;
    if let Some(mt) = header.pointer("/config/model_type").and_then(Value::as_str) {
        if mt != s.model_type {
            return Err(kit_err(format!("the golden is for model type `{mt}`, the config says `{}`", s.model_type)));
        }
    }
    let fixed: Vec<usize> = numbers(field(header, "fixed_vocab_ids", "the header")?, "fixed_vocab_ids")?
        .iter()
        .map(|&x| x as usize)
        .collect();
    let prompts =
        field(&g, "prompts", "the golden")?.as_array().ok_or_else(|| kit_err("golden: `prompts` is not a list"))?;
    let mut parts = Vec::new();
    for p in prompts {
        let (steps, lp, logit) = prompt(model, p, &fixed, min_steps)?;
        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
        parts
            .push(format!("{name}: {steps} greedy steps identical, logprob |diff| <= {lp:.1e}, logits <= {logit:.1e}"));
    }
    if parts.is_empty() {
        return Err(kit_err("golden: no prompts"));
    }
    Ok(format!("mlx-lm {}: {}", header.get("mlx_lm").and_then(Value::as_str).unwrap_or("?"), parts.join("; ")))
}
