//! A loaded model with its own worker thread: the library API hosts use.
//!
//! MLX's default streams are per thread, so every MLX call for one model (load, prefill,
//! decode) happens on that model's worker. Requests go to it over a channel; results stream
//! back over another; cancellation is a flag the worker checks between prefill chunks and
//! between tokens. The worker also owns the model's [`PromptCache`], so consecutive requests
//! (the turns of a chat) reuse the KV of the prefix they share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{Dtype, LayerCache};
use serde_json::Value;

use crate::cache::prompt_cache::{PromptCache, PromptCacheInfo, DEFAULT_CAPACITY};
use crate::cache::CacheConfig;
use crate::distributed::{self, CancelRelay, Lockstep};
use crate::error::{Error, Result};
use crate::generate::{
    self, GenContext, GenerateRequest, GenerationResult, GenerationStats, NoProgress, PromptProgress, Session,
};
use crate::model::{self, DtypeChoice};
use crate::plugin_host::{HostOptions, PluginHost};
use crate::speculative::{
    self,
    model::{DraftInfo, DraftLoad, DraftModel},
};
use crate::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use crate::vision::prompt;
use crate::vision::{FeatureMemo, ImageInput, ImageLimits, FEATURE_MEMO_CAPACITY};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DtypeChoice,
    pub device: Device,
    pub plugins: HostOptions,
    /// KV cache settings (max_kv_size, KV quantization), checked at load against the model.
    pub cache: CacheConfig,
    /// Prompt-cache snapshots kept for reuse across requests ([`DEFAULT_CAPACITY`]; 0 turns
    /// reuse off).
    pub prompt_cache_capacity: usize,
    /// Tensor parallelism: the group of ranks (from [`distributed::init`]) this model is
    /// sharded over. Every rank must load the same model and run the same requests.
    pub group: Option<distributed::Group>,
    /// How the model is split over `group`.
    pub split: distributed::Split,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DtypeChoice::Auto,
            device: Device::Cpu,
            plugins: HostOptions::standard(Vec::new(), None),
            cache: CacheConfig::default(),
            prompt_cache_capacity: DEFAULT_CAPACITY,
            group: None,
            split: distributed::Split::Tensor,
        }
    }
}

/// What a host may want to show about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub model_type: String,
    /// The plugin (or built-in) that provides the architecture, and its file if any.
    pub provider: String,
    /// The dtype the model computes in.
    pub dtype: Dtype,
    pub context_length: Option<usize>,
    pub cache_layout: Vec<LayerCache>,
    /// Logical parameters (see `LoadedModel::num_parameters`).
    pub num_parameters: usize,
    /// How the checkpoint stores its weights (see `LoadedModel::storage`).
    pub storage: String,
    /// Query heads and head dimension from the config, when it gives them.
    pub attention_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub cache_config: CacheConfig,
    /// Which vision path the model took: none (text only), a dedicated add-on, or the generic
    /// VLM fallback (see `docs/vision.md` for what each keeps).
    pub vision_path: crate::vision::VisionPath,
}

enum Job {
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
    /// Runs a host's loop on the worker (the server's scheduler; see [`ModelKit::run_on_worker`]).
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

/// What a loop run by [`ModelKit::run_on_worker`] gets: the model and its prompt cache, on the
/// thread that owns them.
pub struct WorkerParts<'a> {
    pub ctx: GenContext<'a>,
    pub cache: &'a mut PromptCache,
    /// Where the model computes and its query heads, for the prefill's
    /// [`generate::prefill::Plan::for_device`].
    pub device: Device,
    pub attention_heads: Option<usize>,
    /// The draft model, when one is loaded ([`ModelKit::load_draft_model`]).
    pub draft: Option<&'a mut DraftModel>,
}

enum Event {
    Result(GenerationResult),
    Done(Result<GenerationStats>),
}

/// A model loaded on its worker thread.
pub struct ModelKit {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
}

/// Cancels a running generation (between prefill chunks and between tokens), or a chat
/// template render ([`ModelKit::tokenize_chat_cancellable`]).
#[derive(Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// A handle nothing has cancelled yet, for the calls that take one.
    pub fn new() -> CancelHandle {
        CancelHandle::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A generation in progress: iterate to receive its results, the last of which carries the
/// stop condition; [`Generation::stats`] is available once the iterator is exhausted.
pub struct Generation {
    rx: mpsc::Receiver<Event>,
    cancel: CancelHandle,
    stats: Option<GenerationStats>,
    done: bool,
}

impl Generation {
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    pub fn stats(&self) -> Option<&GenerationStats> {
        self.stats.as_ref()
    }
}

impl Iterator for Generation {
    type Item = Result<GenerationResult>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(Event::Result(r)) => Some(Ok(r)),
            Ok(Event::Done(Ok(stats))) => {
                self.stats = Some(stats);
                self.done = true;
                None
            }
            Ok(Event::Done(Err(e))) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                Some(Err(Error::Param { name: "model".into(), reason: "the model's worker thread stopped".into() }))
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // A host that stops reading wants the work to stop too.
        if !self.done {
            self.cancel.cancel();
        }
    }
}

struct Worker {
    loaded: model::LoadedModel,
    tokenizer: Arc<Tokenizer>,
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
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Generate { req, mut progress, cancel, tx } => {
                    let cancel = match &self.relay {
                        Some(relay) => relay.begin(cancel),
                        None => cancel,
                    };
                    let ctx = GenContext {
                        model: self.loaded.model.as_ref(),
                        tokenizer: &self.tokenizer,
                        generation_config: &self.loaded.generation_config,
                        context_length: self.loaded.context_length,
                        vocab_size: self.loaded.vocab_size,
                        vision: self.loaded.vision.as_ref(),
                    };
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
                    let ctx = GenContext {
                        model: self.loaded.model.as_ref(),
                        tokenizer: &self.tokenizer,
                        generation_config: &self.loaded.generation_config,
                        context_length: self.loaded.context_length,
                        vocab_size: self.loaded.vocab_size,
                        vision: self.loaded.vision.as_ref(),
                    };
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

/// `(query heads, head dimension)` from a text config: `num_attention_heads`, and `head_dim`
/// or else `hidden_size / num_attention_heads` (the convention of configs that omit it).
pub fn attention_dims(text_config: &Value) -> (Option<usize>, Option<usize>) {
    let get = |k: &str| text_config.get(k).and_then(Value::as_u64).map(|n| n as usize).filter(|&n| n > 0);
    let heads = get("num_attention_heads");
    let head_dim = get("head_dim").or_else(|| Some(get("hidden_size")? / heads?));
    (heads, head_dim)
}

impl ModelKit {
    /// Loads the model at `path` (a model folder, or a `.gguf` file) on a new worker thread.
    pub fn load(path: &Path, options: LoadOptions) -> Result<ModelKit> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(ModelInfo, Arc<Tokenizer>)>>();
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let path = path.to_path_buf();
        let worker = std::thread::Builder::new()
            .name("mlx-engine-model".into())
            .spawn(move || {
                let setup = || -> Result<(Worker, ModelInfo)> {
                    options.device.set_default()?;
                    // Cheap checks first, before any weight is read.
                    options.cache.validate()?;
                    let host = PluginHost::new(&options.plugins)?;
                    let mut loaded = model::load_with(&path, &host, options.dtype, options.device)?;
                    let relay = match &options.group {
                        Some(group) if group.size() > 1 => {
                            let relay = CancelRelay::default();
                            loaded.model =
                                Box::new(Lockstep::split(loaded.model, group.clone(), options.split, relay.clone())?);
                            loaded.cache_layout = loaded.model.cache_layout();
                            Some(relay)
                        }
                        _ => None,
                    };
                    let (attention_heads, head_dim) = attention_dims(&loaded.text_config);
                    if let Some(d) = head_dim {
                        options.cache.check_head_dim(i32::try_from(d).unwrap_or(i32::MAX))?;
                    }
                    let cache = PromptCache::new(
                        loaded.cache_layout.clone(),
                        options.cache.clone(),
                        options.prompt_cache_capacity,
                    )?;
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
                    let worker =
                        Worker { loaded, tokenizer, cache, attention_heads, memo, host, options, draft: None, relay };
                    Ok((worker, info))
                };
                match setup() {
                    Ok((worker, info)) => {
                        let _ = ready_tx.send(Ok((info, worker.tokenizer.clone())));
                        worker.run(job_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::Io { path: PathBuf::from("<thread>"), source: e })?;
        let (info, tokenizer) = ready_rx.recv().map_err(|_| Error::Param {
            name: "model".into(),
            reason: "the model's worker thread stopped while loading".into(),
        })??;
        Ok(ModelKit { jobs: Some(job_tx), worker: Some(worker), info, tokenizer })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes raw text as the HF tokenizer's `encode(text)` does (special tokens added by its
    /// post-processor, e.g. BOS).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// Renders the chat template and tokenizes the result (the template adds BOS itself).
    pub fn tokenize_chat(
        &self,
        messages: &[ChatMessage],
        template: Option<&ChatTemplate>,
        args: &serde_json::Map<String, Value>,
    ) -> Result<Vec<u32>> {
        let text = self.tokenizer.apply_chat_template(messages, true, args, template)?;
        self.tokenizer.encode(&text, false)
    }

    /// [`ModelKit::tokenize_chat`] that `cancel` stops while the template renders (a
    /// template runs for up to [`crate::tokenizer::TEMPLATE_SECONDS`] before it is abandoned).
    pub fn tokenize_chat_cancellable(
        &self,
        messages: &[ChatMessage],
        template: Option<&ChatTemplate>,
        args: &serde_json::Map<String, Value>,
        cancel: &CancelHandle,
    ) -> Result<Vec<u32>> {
        let text = self.tokenizer.apply_chat_template_cancellable(messages, true, args, template, &cancel.0)?;
        self.tokenizer.encode(&text, false)
    }

    /// [`ModelKit::tokenize_chat`] for messages with images (`ChatMessage::images`): the
    /// template's image placeholders become each image's token span (the model's vision add-on
    /// says how, from the image's preprocessed size). Pass the same `images` in the request.
    pub fn tokenize_chat_with_images(
        &self,
        messages: &[ChatMessage],
        template: Option<&ChatTemplate>,
        args: &serde_json::Map<String, Value>,
        images: &[ImageInput],
        max_image_size: Option<u32>,
    ) -> Result<Vec<u32>> {
        let declared: usize = messages.iter().map(|m| m.images).sum();
        if declared != images.len() {
            return Err(Error::Param {
                name: "images".into(),
                reason: format!("the messages hold {declared} image(s) but {} were given", images.len()),
            });
        }
        let text = self.tokenizer.apply_chat_template(messages, true, args, template)?;
        self.tokenize_job(text, false, images, max_image_size)
    }

    /// [`ModelKit::tokenize`] of a raw prompt with images: each image placeholder of `text`
    /// becomes that image's token span; a prompt without placeholders gets the images first.
    pub fn tokenize_with_images(
        &self,
        text: &str,
        images: &[ImageInput],
        max_image_size: Option<u32>,
    ) -> Result<Vec<u32>> {
        self.tokenize_job(text.to_string(), true, images, max_image_size)
    }

    fn tokenize_job(
        &self,
        text: String,
        special: bool,
        images: &[ImageInput],
        max_image_size: Option<u32>,
    ) -> Result<Vec<u32>> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Tokenize { text, add_special_tokens: special, images: images.to_vec(), max_image_size, tx })?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Starts a generation; results stream through the returned iterator. The prompt reuses
    /// whatever prefix earlier requests left in the model's prompt cache.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation> {
        self.generate_with_progress(req, Box::new(NoProgress))
    }

    /// [`ModelKit::generate`] with a prefill reporter, called on the worker thread; any of its
    /// calls may cancel the request by returning false.
    pub fn generate_with_progress(
        &self,
        req: GenerateRequest,
        progress: Box<dyn PromptProgress>,
    ) -> Result<Generation> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        self.send(Job::Generate { req: Box::new(req), progress, cancel: cancel.clone(), tx })?;
        Ok(Generation { rx, cancel: CancelHandle(cancel), stats: None, done: false })
    }

    /// Loads `path` (a model folder or `.gguf` file) as the draft model for speculative
    /// decoding, replacing any draft loaded before. Its vocabulary must match the main
    /// model's (see [`ModelKit::check_draft_model`]); it computes in the main model's dtype on
    /// its device, with the same KV cache settings, and keeps a prompt cache of its own.
    /// Requests then decode speculatively unless they say otherwise
    /// (`GenerateRequest::speculation`).
    pub fn load_draft_model(&self, path: &Path) -> Result<DraftInfo> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::LoadDraft(path.to_path_buf(), tx))?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Whether `path` could draft for this model: the same vocabulary size, the same special
    /// tokens, and the same ids for a sample of the vocabulary. The error says what differs.
    pub fn check_draft_model(&self, path: &Path) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::CheckDraft(path.to_path_buf(), tx))?;
        rx.recv().map_err(|_| stopped())?
    }

    /// Drops the draft model and its prompt cache; returns whether one was loaded.
    pub fn unload_draft_model(&self) -> Result<bool> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::UnloadDraft(tx))?;
        rx.recv().map_err(|_| stopped())
    }

    /// Runs `f` on the model's worker thread with the model and its prompt cache, after the
    /// jobs queued before it; jobs sent later wait until it returns. For hosts that schedule
    /// requests themselves (the server's continuous batching), since every MLX call for this
    /// model must happen on that thread.
    pub fn run_on_worker(&self, f: impl FnOnce(WorkerParts<'_>) + Send + 'static) -> Result<()> {
        self.send(Job::Run(Box::new(f)))
    }

    /// The prompt cache's state and counters (waits for queued generations to finish).
    pub fn prompt_cache_info(&self) -> Result<PromptCacheInfo> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::CacheInfo(tx))?;
        rx.recv().map_err(|_| stopped())
    }

    /// Drops the prompt cache (live cache, snapshots, counters) and MLX's buffer cache, e.g. to
    /// measure a cold start or free memory.
    pub fn clear_prompt_cache(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::ClearCache(tx))?;
        rx.recv().map_err(|_| stopped())
    }

    fn send(&self, job: Job) -> Result<()> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Param { name: "model".into(), reason: "the model was unloaded".into() })?;
        jobs.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::Param { name: "model".into(), reason: "the model's worker thread stopped".into() }
}

impl Drop for ModelKit {
    fn drop(&mut self) {
        // Closing the job channel ends the worker's loop; joining frees the model on its thread.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
