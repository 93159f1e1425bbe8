//! A loaded model with its own worker thread: the library API hosts use.
//!
//! MLX's default streams are per thread, so every MLX call for one model (load, prefill,
//! decode) happens on that model's worker. Requests go to it over a channel; results stream
//! back over another; cancellation is a flag the worker checks between tokens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use mlx_engine_plugin_api::runtime::Device;
use mlx_engine_plugin_api::{Dtype, LayerCache};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::generate::{self, GenContext, GenerateRequest, GenerationResult, GenerationStats};
use crate::model::{self, DtypeChoice};
use crate::plugin_host::{HostOptions, PluginHost};
use crate::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DtypeChoice,
    pub device: Device,
    pub plugins: HostOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DtypeChoice::Auto, device: Device::Cpu, plugins: HostOptions::standard(Vec::new(), None) }
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
    pub num_parameters: usize,
}

enum Job {
    Generate { req: GenerateRequest, cancel: Arc<AtomicBool>, tx: mpsc::Sender<Event> },
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

/// Cancels a running generation (between tokens).
#[derive(Clone)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
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
}

impl Worker {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Generate { req, cancel, tx } => {
                    let ctx = GenContext {
                        model: self.loaded.model.as_ref(),
                        tokenizer: &self.tokenizer,
                        generation_config: &self.loaded.generation_config,
                        context_length: self.loaded.context_length,
                    };
                    let mut emit = |r: GenerationResult| tx.send(Event::Result(r)).is_ok();
                    // A panic in a built-in architecture fails this request, not the worker.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        generate::generate(&ctx, &req, &cancel, &mut emit)
                    }))
                    .unwrap_or_else(|p| Err(Error::Array(mlx_engine_plugin_api::Error::from_panic(p))));
                    let _ = tx.send(Event::Done(out));
                }
            }
        }
    }
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
                    let host = PluginHost::new(&options.plugins)?;
                    let loaded = model::load_with(&path, &host, options.dtype, options.device)?;
                    let tokenizer = Arc::new(model::load_tokenizer(&loaded)?);
                    let info = ModelInfo {
                        path: path.clone(),
                        model_type: loaded.model_type.clone(),
                        provider: loaded.provider.clone(),
                        dtype: loaded.dtype,
                        context_length: loaded.context_length,
                        cache_layout: loaded.cache_layout.clone(),
                        num_parameters: loaded.num_parameters,
                    };
                    Ok((Worker { loaded, tokenizer }, info))
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

    /// Starts a generation; results stream through the returned iterator.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let jobs = self.jobs.as_ref().ok_or_else(|| Error::Param {
            name: "model".into(),
            reason: "the model was unloaded".into(),
        })?;
        jobs.send(Job::Generate { req, cancel: cancel.clone(), tx }).map_err(|_| Error::Param {
            name: "model".into(),
            reason: "the model's worker thread stopped".into(),
        })?;
        Ok(Generation { rx, cancel: CancelHandle(cancel), stats: None, done: false })
    }
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
