//! A draft model: a second, smaller model of the same vocabulary, loaded beside the main one on
//! its worker, with a prompt cache of its own so that follow-up turns reuse its KV as they
//! reuse the main model's.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{async_eval, eval, Array, Dtype, DynModel, Input};

use super::{compat, DraftSampling, Drafter};
use crate::cache::prompt_cache::PromptCache;
use crate::cache::{CacheConfig, KvCache};
use crate::error::{Error, Result};
use crate::generate::prefill::{self, last_logits, token_ids, OutputHead, Plan};
use crate::generate::PromptProgress;
use crate::model::{self, DtypeChoice, LoadedModel};
use crate::plugin_host::PluginHost;
use crate::tokenizer::Tokenizer;

/// What a host may want to show about a loaded draft model.
#[derive(Clone, Debug)]
pub struct DraftInfo {
    pub path: PathBuf,
    pub model_type: String,
    /// The plugin (or built-in) that provides its architecture.
    pub provider: String,
    pub dtype: Dtype,
    pub num_parameters: usize,
    pub layers: usize,
}

/// A loaded draft model and its prompt cache. Lives on the main model's worker thread.
pub struct DraftModel {
    pub loaded: LoadedModel,
    pub cache: PromptCache,
    /// Query heads, for the prefill's chunk size.
    pub attention_heads: Option<usize>,
    /// Where it computes (as the main model), for its prefill's plan.
    pub device: Device,
    pub info: DraftInfo,
}

/// How the draft is loaded: as the main model was.
pub struct DraftLoad<'a> {
    pub host: &'a PluginHost,
    pub dtype: DtypeChoice,
    pub device: Device,
    pub cache: &'a CacheConfig,
    pub prompt_cache_capacity: usize,
    /// The main model's tokenizer, which the draft's must match.
    pub main: &'a Tokenizer,
}

fn refuse(path: &Path, main: &Tokenizer, reason: String) -> Error {
    Error::Model { path: path.to_path_buf(), reason: format!("cannot draft for {}: {reason}", main.source().display()) }
}

/// Checks that `draft` can draft for the model of tokenizer `main` (see [`compat`]).
pub fn check_tokenizers(path: &Path, main: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    match compat::incompatibility(main, draft) {
        Some(reason) => Err(refuse(path, main, reason)),
        None => Ok(()),
    }
}

/// The tokenizer of a model folder without loading its weights; `None` when it is not a
/// folder with a `tokenizer.json` (a GGUF file keeps its tokenizer in the file).
pub fn folder_tokenizer(path: &Path) -> Result<Option<Tokenizer>> {
    if path.is_dir() && path.join("tokenizer.json").is_file() {
        return Ok(Some(Tokenizer::from_dir(path)?));
    }
    Ok(None)
}

impl DraftModel {
    /// Loads `path` as a draft model. The vocabularies are compared before any weight is read
    /// (after loading, for a GGUF file); a KV group size that does not divide the draft's head
    /// dimension is refused, since the draft's cache is quantized as the main model's is.
    pub fn load(path: &Path, how: &DraftLoad<'_>) -> Result<DraftModel> {
        if let Some(tok) = folder_tokenizer(path)? {
            check_tokenizers(path, how.main, &tok)?;
        }
        let mut loaded = model::load_with(path, how.host, how.dtype, how.device)?;
        if how.device == Device::Gpu {
            crate::generate::warmup::warm_up(loaded.model.as_ref(), loaded.dtype)?;
        }
        // A draft sees token ids only; a vision-language checkpoint's image part is not needed.
        loaded.vision = None;
        check_tokenizers(path, how.main, &model::load_tokenizer(&loaded)?)?;
        let (attention_heads, head_dim) = crate::model_kit::attention_dims(&loaded.text_config);
        if let Some(d) = head_dim {
            how.cache.check_head_dim(i32::try_from(d).unwrap_or(i32::MAX)).map_err(|e| Error::Model {
                path: path.to_path_buf(),
                reason: format!("as a draft model with this KV cache quantization: {e}"),
            })?;
        }
        let cache = PromptCache::new(loaded.cache_layout.clone(), how.cache.clone(), how.prompt_cache_capacity)?;
        let info = DraftInfo {
            path: path.to_path_buf(),
            model_type: loaded.model_type.clone(),
            provider: loaded.provider.clone(),
            dtype: loaded.dtype,
            num_parameters: loaded.num_parameters,
            layers: loaded.cache_layout.len(),
        };
        Ok(DraftModel { loaded, cache, attention_heads, device: how.device, info })
    }

    /// Fills the draft's cache with `prompt` (reusing its prompt cache unless `reuse` is
    /// false), reporting through `progress`'s draft calls. Returns the prompt tokens that came
    /// from its cache, or `None` when the prefill was cancelled.
    pub fn prefill(
        &mut self,
        prompt: &[u32],
        reuse: bool,
        step: usize,
        progress: &mut dyn PromptProgress,
        cancel: &AtomicBool,
    ) -> Result<Option<usize>> {
        model::check_token_ids("prompt", prompt, self.loaded.vocab_size)?;
        let cached = self.cache.prepare(prompt, reuse)?;
        let checkpoint = self.cache.checkpoint_at(prompt.len(), cached);
        let plan = Plan::for_device(
            self.device,
            step,
            self.attention_heads,
            checkpoint,
            OutputHead::of(self.loaded.model.as_ref(), self.loaded.vocab_size),
        );
        let mut reports = DraftReports(progress);
        let model = self.loaded.model.as_ref();
        let done = prefill::prefill(model, self.cache.live_mut(), prompt, cached, &plan, &mut reports, cancel)?;
        if let (Some(at), Some(snapshot)) = (plan.checkpoint, done.checkpoint) {
            self.cache.store_checkpoint(at, snapshot);
        }
        Ok(done.logits.map(|_| cached))
    }

    /// The drafter of one generation whose prompt [`DraftModel::prefill`] just filled in.
    pub fn drafter(&mut self, prompt_len: usize) -> ModelDrafter<'_> {
        ModelDrafter { model: self.loaded.model.as_ref(), cache: &mut self.cache, recorded: prompt_len, snapshot: None }
    }
}

/// Hands the draft prefill's reports to the draft calls of the request's reporter.
struct DraftReports<'p>(&'p mut dyn PromptProgress);

impl PromptProgress for DraftReports<'_> {
    fn begin(&mut self, cached: usize, total: usize) -> bool {
        self.0.draft_begin(cached, total)
    }

    fn update(&mut self, processed: usize) -> bool {
        self.0.draft_update(processed)
    }

    fn finish(&mut self) -> bool {
        self.0.draft_finish()
    }
}

/// Drafts with the draft model, autoregressively, feeding it what it has not seen yet.
pub struct ModelDrafter<'a> {
    model: &'a dyn DynModel,
    cache: &'a mut PromptCache,
    /// Tokens of the history recorded into the draft's prompt cache.
    recorded: usize,
    /// The cache before a draft that makes a ring evict (it cannot be trimmed back after).
    snapshot: Option<KvCache>,
}

impl ModelDrafter<'_> {
    fn record(&mut self, history: &[u32]) {
        for &t in &history[self.recorded.min(history.len())..] {
            self.cache.record(t);
        }
        self.recorded = self.recorded.max(history.len());
    }
}

impl Drafter for ModelDrafter<'_> {
    fn name(&self) -> &'static str {
        "draft model"
    }

    fn draft(&mut self, history: &[u32], n: usize, sampling: &mut DraftSampling<'_>) -> Result<Vec<u32>> {
        self.record(history);
        let fed = self.cache.live().len().min(history.len().saturating_sub(1));
        // The draft sees the unseen tail of the history, then each draft but the last.
        let adds = history.len() - fed + n - 1;
        self.snapshot = (!self.cache.live().is_trimmable_after(adds)).then(|| self.cache.live().clone());
        let mut seen = history.to_vec();
        let mut input = token_ids(&history[fed..])?;
        let mut tokens: Vec<Array> = Vec::with_capacity(n);
        for i in 0..n {
            let logits = self.model.forward(Input::Tokens(&input), self.cache.live_mut())?;
            let s = sampling.sample(i, &seen, &last_logits(&logits)?)?;
            async_eval(&[&s.token])?;
            if sampling.needs_history() {
                seen.push(s.token.item::<u32>()?);
            }
            input = s.token.reshape(&[1, 1])?;
            tokens.push(s.token);
        }
        eval(&tokens.iter().collect::<Vec<_>>())?;
        tokens.iter().map(|t| Ok(t.item::<u32>()?)).collect()
    }

    fn accept(&mut self, history: &[u32], _drafted: usize, _accepted: usize) -> Result<()> {
        // Everything but the main model's own last token, which the next draft feeds first.
        let keep = history.len().saturating_sub(1);
        let held = self.cache.live().len();
        if held > keep && self.cache.live_mut().trim(held - keep) != held - keep {
            match self.snapshot.take() {
                Some(s) => *self.cache.live_mut() = s,
                None => {
                    return Err(Error::Param {
                        name: "draft_model".into(),
                        reason: "the draft model's KV cache could not be rewound (engine bug)".into(),
                    })
                }
            }
        }
        self.snapshot = None;
        self.record(history);
        Ok(())
    }
}
