//! The model's worker thread: it loads the model and then serves [`Job`]s one at a time, so
//! that every MLX call for the model runs on the thread whose default stream it is.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;

use mlx_engine_plugin_api::runtime::Device;

use super::{attention_dims, LoadOptions, ModelInfo, WorkerParts};
use crate::cache::prompt_cache::{PromptCache, PromptCacheInfo};
use crate::distributed::{CancelRelay, Lockstep};
use crate::error::{Error, Result};
use crate::generate::{self, GenContext, GenerateRequest, GenerationResult, GenerationStats, PromptProgress, Session};
use crate::model;
use crate::plugin_host::PluginHost;
use crate::speculative::{
    self,
    model::{DraftInfo, DraftLoad, DraftModel},
};
use crate::tokenizer::Tokenizer;
use crate::vision::prompt;
use crate::vision::{FeatureMemo, ImageInput, ImageLimits, FEATURE_MEMO_CAPACITY};

pub(super) enum Job {
    Generate {
        req: Box<GenerateRequest>,
        progress: Box<dyn PromptProgress>,
        cancel: Arc<AtomicBool>,
        tx: mpsc::Sender<Event>,
    },
    CacheInfo(mpsc::Sender<PromptCacheInfo>),
    ClearCache(mpsc::Sender<()>),
    LoadDraft(PathBuf, mpsc::Sender<Result<DraftInfo>>),
    CheckDraft(PathBuf, mpsc::Sender<Result<()>>),
    UnloadDraft(mpsc::Sender<bool>),
    /// Runs a host's loop on the worker (the server's scheduler; see [`super::ModelKit::run_on_worker`]).
    Run(Box<dyn FnOnce(WorkerParts<'_>) + Send>),
    /// Expands the image placeholders of `text` (rendered or raw) and tokenizes it.
    Tokenize {
        text: String,
        add_special_tokens: bool,
        images: Vec<ImageInput>,
        max_image_size: Option<u32>,
        tx: mpsc::Sender<Result<Vec<u32>>>,
    },
}

pub(super) enum Event {
    Result(GenerationResult),
    Done(Result<GenerationStats>),
}

pub(super) struct Worker {
    loaded: model::LoadedModel,
    pub(super) tokenizer: Arc<Tokenizer>,
    cache: PromptCache,
    attention_heads: Option<usize>,
    memo: FeatureMemo,
    /// The host and options the model was loaded with, for loading a draft model the same way.
    host: PluginHost,
    options: LoadOptions,
    draft: Option<DraftModel>,
    /// Set when the model is sharded: requests then cancel through the ranks' agreement.
    relay: Option<CancelRelay>,
}

impl Worker {
    /// Loads the model at `path` on this thread (the worker's), with its prompt cache and
    /// tokenizer; on the GPU also warms up the attention kernels.
    pub(super) fn load(path: PathBuf, options: LoadOptions) -> Result<(Worker, ModelInfo)> {
        options.device.set_default()?;
        // Cheap checks first, before any weight is read.
        options.cache.validate()?;
        let host = PluginHost::new(&options.plugins)?;
        let mut loaded = model::load_with(&path, &host, options.dtype, options.device)?;
        let relay = match &options.group {
            Some(group) if group.size() > 1 => {
                let relay = CancelRelay::default();
                loaded.model = Box::new(Lockstep::split(loaded.model, group.clone(), options.split, relay.clone())?);
                loaded.cache_layout = loaded.model.cache_layout();
                Some(relay)
            }
            _ => None,
        };
        let (attention_heads, head_dim) = attention_dims(&loaded.text_config);
        if let Some(d) = head_dim {
            options.cache.check_head_dim(i32::try_from(d).unwrap_or(i32::MAX))?;
        }
        let cache =
            PromptCache::new(loaded.cache_layout.clone(), options.cache.clone(), options.prompt_cache_capacity)?;
        let tokenizer = Arc::new(model::load_tokenizer(&loaded)?);
        if options.device == Device::Gpu {
            crate::generate::warmup::warm_up(loaded.model.as_ref(), loaded.dtype)?;
        }
        let info = ModelInfo {
            path: path.clone(),
            model_type: loaded.model_type.clone(),
            provider: loaded.provider.clone(),
            dtype: loaded.dtype,
            context_length: loaded.context_length,
            cache_layout: loaded.cache_layout.clone(),
            num_parameters: loaded.num_parameters,
            storage: loaded.storage.clone(),
            attention_heads,
            head_dim,
            cache_config: options.cache.clone(),
            vision_path: loaded.vision_path.clone(),
        };
        let memo = FeatureMemo::new(FEATURE_MEMO_CAPACITY);
        let worker = Worker { loaded, tokenizer, cache, attention_heads, memo, host, options, draft: None, relay };
        Ok((worker, info))
    }

    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Generate { req, mut progress, cancel, tx } => {
                    let cancel = match &self.relay {
                        Some(relay) => relay.begin(cancel),
                        None => cancel,
                    };
                    let ctx = gen_context(&self.loaded, &self.tokenizer);
                    let mut emit = |r: GenerationResult| tx.send(Event::Result(r)).is_ok();
                    let cache = &mut self.cache;
                    let memo = &mut self.memo;
                    let draft = &mut self.draft;
                    // A panic in a built-in architecture fails this request, not the worker.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let session = Session {
                            cache: &mut *cache,
                            progress: progress.as_mut(),
                            attention_heads: self.attention_heads,
                            device: self.options.device,
                            memo: Some(&mut *memo),
                            draft: draft.as_mut(),
                        };
                        generate::generate_in(&ctx, session, &req, &cancel, &mut emit)
                    }))
                    .unwrap_or_else(|p| {
                        // The panic may have left the live caches half-updated.
                        cache.discard_live();
                        if let Some(d) = draft.as_mut() {
                            d.cache.discard_live();
                        }
                        Err(Error::Array(mlx_engine_plugin_api::Error::from_panic(p)))
                    });
                    if let Some(relay) = &self.relay {
                        relay.end();
                    }
                    // The reporter (a progress bar) goes before the stream ends.
                    drop(progress);
                    let _ = tx.send(Event::Done(out));
                }
                Job::CacheInfo(tx) => {
                    let _ = tx.send(self.cache.info());
                }
                Job::Run(f) => {
                    let ctx = gen_context(&self.loaded, &self.tokenizer);
                    let cache = &mut self.cache;
                    let draft = self.draft.as_mut();
                    let parts = WorkerParts {
                        ctx,
                        cache: &mut *cache,
                        device: self.options.device,
                        attention_heads: self.attention_heads,
                        draft,
                    };
                    // The loop contains its own panics per request; one that escapes it must
                    // not take the worker (and so the model kit) down with it.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(parts))).is_err() {
                        cache.discard_live();
                    }
                }
                Job::Tokenize { text, add_special_tokens, images, max_image_size, tx } => {
                    let _ = tx.send(self.tokenize(&text, add_special_tokens, &images, max_image_size));
                }
                Job::ClearCache(tx) => {
                    self.cache.clear();
                    if let Some(d) = self.draft.as_mut() {
                        d.cache.clear();
                    }
                    mlx_engine_plugin_api::runtime::clear_cache();
                    let _ = tx.send(());
                }
                Job::LoadDraft(path, tx) => {
                    // The old draft goes first: two drafts need not fit in memory at once.
                    self.draft = None;
                    let loaded = DraftModel::load(&path, &self.draft_load());
                    let _ = tx.send(loaded.map(|d| {
                        let info = d.info.clone();
                        self.draft = Some(d);
                        info
                    }));
                }
                Job::CheckDraft(path, tx) => {
                    let _ = tx.send(self.check_draft(&path));
                }
                Job::UnloadDraft(tx) => {
                    let had = self.draft.take().is_some();
                    // MLX keeps freed buffers for reuse; without this the draft's memory stays held.
                    mlx_engine_plugin_api::runtime::clear_cache();
                    let _ = tx.send(had);
                }
            }
        }
    }
}

impl Worker {
    fn draft_load(&self) -> DraftLoad<'_> {
        DraftLoad {
            host: &self.host,
            dtype: self.options.dtype,
            device: self.options.device,
            cache: &self.options.cache,
            prompt_cache_capacity: self.options.prompt_cache_capacity,
            main: &self.tokenizer,
        }
    }

    /// Compares the vocabularies; a GGUF file is loaded for its tokenizer, then dropped.
    fn check_draft(&self, path: &Path) -> Result<()> {
        match speculative::model::folder_tokenizer(path)? {
            Some(tok) => speculative::model::check_tokenizers(path, &self.tokenizer, &tok),
            None => DraftModel::load(path, &self.draft_load()).map(drop),
        }
    }

    fn tokenize(
        &self,
        text: &str,
        special: bool,
        images: &[ImageInput],
        max_image_size: Option<u32>,
    ) -> Result<Vec<u32>> {
        if images.is_empty() {
            return self.tokenizer.encode(text, special);
        }
        let vision = match &self.loaded.vision {
            Some(Ok(v)) => v,
            Some(Err(why)) => {
                return Err(Error::Param {
                    name: "images".into(),
                    reason: format!("this model cannot take images: {why}"),
                })
            }
            None => {
                return Err(Error::Param {
                    name: "images".into(),
                    reason: "this is a text-only model (its config.json has no vision_config)".into(),
                })
            }
        };
        let limits = ImageLimits { max_image_size, ..Default::default() };
        let prepared = prompt::prepare_images(vision, images, &limits)?;
        // A raw prompt (encoded with special tokens) may leave the placeholders to us; a
        // rendered chat must have them from its template.
        self.tokenizer.encode(&prompt::expand_placeholders(text, &prepared, special)?, special)
    }
}

/// What a generation needs of the loaded model, borrowed apart from the worker's caches.
fn gen_context<'a>(loaded: &'a model::LoadedModel, tokenizer: &'a Tokenizer) -> GenContext<'a> {
    GenContext {
        model: loaded.model.as_ref(),
        tokenizer,
        generation_config: &loaded.generation_config,
        context_length: loaded.context_length,
        vocab_size: loaded.vocab_size,
        vision: loaded.vision.as_ref(),
    }
}
