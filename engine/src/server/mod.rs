//! `mlx-engine serve`: an OpenAI-compatible HTTP server over one loaded model.
//!
//! - `routes`: the endpoints; `openai`: the request and response shapes; `errors`: OpenAI
//!   error objects and status codes; `auth`: the bearer key;
//! - `metrics`: `/metrics` for Prometheus; `memory`: keeping resident memory flat; `tools`:
//!   tool-call formats and their parsers;
//! - `scheduler`: admission to the bounded queue and the handle requests submit through;
//!   `batch`: the continuous-batching loop on the model's worker thread.
//!
//! Threads: a small tokio runtime does HTTP; chat templates and tokenizing run on its blocking
//! pool; every MLX call runs on the model's worker thread, which the scheduler loop occupies
//! for the server's lifetime.

pub mod auth;
pub mod batch;
pub mod errors;
pub mod joint_prefill;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod row;
pub mod scheduler;
pub mod structured;
pub mod tools;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::model_kit::ModelKit;
use auth::ApiKey;
use routes::AppState;
use scheduler::{Limits, Scheduler};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port (printed on stdout as `listening on http://ADDR`).
    pub port: u16,
    pub model_id: String,
    pub api_key: Option<String>,
    pub limits: Limits,
    pub max_body_bytes: usize,
}

/// The request id: from the client's `x-request-id` when it sends a sane one, else ours. It
/// names the request in every log line and in the completion id.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn request_id(req: &Request) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok());
    match given.filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        Some(v) => v.to_string(),
        None => {
            // Unique within the process; the start time keeps ids of restarts apart.
            static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            let start = *START.get_or_init(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            });
            format!("{start:x}{:06x}", NEXT.fetch_add(1, Ordering::Relaxed))
        }
    }
}

/// Gives the request its id and a tracing span, and logs how it ended.
async fn with_request_id(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let span = tracing::info_span!("request", id = %id);
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let t = std::time::Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!("{method} {path} -> {} in {:.1} ms", resp.status().as_u16(), t.elapsed().as_secs_f64() * 1e3)
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The router over `state` (also used by the tests through a real listener).
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{id}", get(routes::model))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(routes::health))
        .route("/metrics", get(metrics::metrics))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(with_request_id))
        .with_state(state)
}

fn server_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Server { reason: format!("{what}: {e}") }
}

/// Resolves on SIGINT or SIGTERM; a second signal ends the process at once.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::warn!("shutting down: no new connections; in-flight requests finish (signal again to quit now)");
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

/// A server running on its own runtime: the library's way to embed it (and the tests').
pub struct Running {
    addr: std::net::SocketAddr,
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    kit: Arc<ModelKit>,
}

impl Running {
    /// Binds `config.host:config.port` and serves `kit` in the background until [`Running::stop`].
    pub fn start(kit: ModelKit, config: &ServeConfig) -> Result<Running> {
        if let Some(t) = memory::fix_mmap_threshold() {
            tracing::debug!("glibc's mmap threshold fixed at {t} bytes");
        }
        let kit = Arc::new(kit);
        let scheduler = Scheduler::start(&kit, config.limits)?;
        let state = AppState {
            kit: kit.clone(),
            scheduler,
            model_id: config.model_id.clone(),
            api_key: config.api_key.as_deref().map(ApiKey::new),
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mlx-engine-http")
            .enable_all()
            .build()
            .map_err(|e| server_error("starting the async runtime", e))?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&addr))
            .map_err(|e| server_error(&format!("binding {addr}"), e))?;
        let local = listener.local_addr().map_err(|e| server_error("reading the bound address", e))?;
        tracing::info!(
            "serving `{}` on http://{local} ({} rows, queue {}, auth {})",
            config.model_id,
            config.limits.max_concurrency,
            config.limits.queue,
            if config.api_key.is_some() { "on" } else { "off" }
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = app(state, config.max_body_bytes);
        let served = rt.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Running { addr: local, rt, stop, served, kit })
    }

    /// The bound address (the port that `--port 0` picked).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets in-flight requests finish, then unloads the model.
    pub fn stop(self) -> Result<()> {
        let Running { rt, stop, served, kit, .. } = self;
        let _ = stop.send(());
        let served = rt.block_on(served).map_err(|e| server_error("the server task", e))?;
        // In-flight rows are done; dropping the runtime and the last scheduler handle ends the
        // scheduler loop, and the model kit then unloads on its worker thread.
        drop(rt);
        drop(kit);
        served.map_err(|e| server_error("serving", e))
    }
}

/// Serves `kit` until SIGINT or SIGTERM, then lets in-flight requests finish.
pub fn run(kit: ModelKit, config: ServeConfig) -> Result<()> {
    let running = Running::start(kit, &config)?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{}", running.addr())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Io { path: "stdout".into(), source: e })?;
    running.rt.block_on(shutdown_signal());
    running.stop()
}
