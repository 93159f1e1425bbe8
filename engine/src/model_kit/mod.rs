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
use crate::distributed;
use crate::error::{Error, Result};
use crate::generate::{GenContext, GenerateRequest, GenerationResult, GenerationStats, NoProgress, PromptProgress};
use crate::model::DtypeChoice;
use crate::plugin_host::HostOptions;
use crate::speculative::model::{DraftInfo, DraftModel};
use crate::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use crate::vision::ImageInput;
use worker::{Event, Job, Worker};

mod worker;

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

/// What a loop run by [`ModelKit::run_on_worker`] gets: the model and its prompt cache, on the
/// thread that owns them.
pub struct WorkerParts<'a> {
    pub ctx: GenContext<'a>,
    pub cache: &'a mut PromptCache,
    /// Where the model computes and its query heads, for the prefill's
    /// [`crate::generate::prefill::Plan::for_device`].
    pub device: Device,
    pub attention_heads: Option<usize>,
    /// The draft model, when one is loaded ([`ModelKit::load_draft_model`]).
    pub draft: Option<&'a mut DraftModel>,
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
            .spawn(move || match Worker::load(path, options) {
                Ok((worker, info)) => {
                    let _ = ready_tx.send(Ok((info, worker.tokenizer.clone())));
                    worker.run(job_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
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
