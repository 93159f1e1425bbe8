//! Sanity checks of an architecture's config values, run by the plugin right after parsing
//! `config.json` and before any weight is touched ([`crate::ModelArch::validate`]). Without
//! them a zero head count divides by zero in `sanitize`, a head dimension of 0 or an odd one
//! fails deep inside MLX at the first forward, and a negative epsilon or a rope base of 0
//! turns every logit into NaN. Every problem is collected, so one error lists them all, each
//! naming its field.

use std::fmt::Display;

use crate::{Error, Result};

#[derive(Default)]
pub struct ConfigCheck {
    problems: Vec<String>,
}

impl ConfigCheck {
    pub fn new() -> ConfigCheck {
        ConfigCheck::default()
    }

    /// Records `problem` for `field` unless `ok`.
    pub fn ensure(&mut self, ok: bool, field: &str, problem: impl Display) -> &mut Self {
        if !ok {
            self.problems.push(format!("field `{field}` {problem}"));
        }
        self
    }

    /// The sizes every decoder-only transformer config has, under their Hugging Face names:
    /// all positive, and the query heads a multiple of the key/value heads.
    pub fn decoder_sizes(
        &mut self,
        hidden: i32,
        layers: usize,
        intermediate: i32,
        heads: i32,
        kv_heads: i32,
        vocab: i32,
    ) -> &mut Self {
        self.positive("hidden_size", hidden)
            .positive("num_hidden_layers", layers as f64)
            .positive("intermediate_size", intermediate)
            .positive("num_attention_heads", heads)
            .positive("num_key_value_heads", kv_heads)
            .multiple_of("num_attention_heads", heads.into(), "num_key_value_heads", kv_heads.into())
            .positive("vocab_size", vocab)
    }

    /// `value > 0` (and finite).
    pub fn positive<T: Into<f64> + Display + Copy>(&mut self, field: &str, value: T) -> &mut Self {
        let v: f64 = value.into();
        self.ensure(v > 0.0 && v.is_finite(), field, format!("must be positive, got {value}"))
    }

    /// Like [`ConfigCheck::positive`], for an optional field.
    pub fn positive_if_set<T: Into<f64> + Display + Copy>(&mut self, field: &str, value: Option<T>) -> &mut Self {
        match value {
            Some(v) => self.positive(field, v),
            None => self,
        }
    }

    /// `value` is a multiple of `by` (checked only when both are positive, since otherwise
    /// [`ConfigCheck::positive`] already reports them).
    pub fn multiple_of(&mut self, field: &str, value: i64, by_field: &str, by: i64) -> &mut Self {
        let ok = value <= 0 || by <= 0 || value % by == 0;
        self.ensure(ok, field, format!("({value}) must be a multiple of `{by_field}` ({by})"))
    }

    /// `value` is even (rotary embeddings rotate pairs of dimensions).
    pub fn even(&mut self, field: &str, value: i64) -> &mut Self {
        self.ensure(value % 2 == 0, field, format!("must be even, got {value}"))
    }

    /// An optional string field takes one of `allowed`.
    pub fn one_of(&mut self, field: &str, value: Option<&str>, allowed: &[&str]) -> &mut Self {
        match value {
            Some(v) if !allowed.contains(&v) => {
                let list = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
                self.ensure(false, field, format!("is `{v}`; this architecture supports {list}"))
            }
            _ => self,
        }
    }

    /// `Ok` when nothing was recorded, else one [`Error::Config`] listing every problem.
    pub fn finish(&mut self) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(Error::Config(std::mem::take(&mut self.problems).join("; ")))
    }
}
