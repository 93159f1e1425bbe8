//! The HTTP endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both plain JSON
//! or SSE streams ending in `data: [DONE]`), `GET /v1/models`, `GET /health`.
//!
//! A generation request goes: parse (400) -> model check (404) -> admission (503) -> prompt
//! tokens (chat template or raw text, on a blocking thread) -> the scheduler. The handler
//! waits for the scheduler's first event before answering, so a request the engine refuses
//! (a bad sampling value, a prompt over the context length) gets its status code even when
//! it asked for a stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::auth::ApiKey;
use super::errors::ApiError;
use super::openai::{self, ChatRequest, Common, CompletionRequest, Prompt};
use super::scheduler::{Permit, RowEvent, RowGuard, Scheduler, Submitted};
use super::structured::{self, ToolChoice};
use super::tools::{self, ToolFormat};
use super::RequestId;
use crate::generate::{GenerateRequest, GenerationResult, StopReason, Token};
use crate::model_kit::{CancelHandle, ModelKit};
use crate::vision::{ImageInput, VisionPath};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub kit: Arc<ModelKit>,
    pub scheduler: Scheduler,
    /// The id clients name in `model`.
    pub model_id: String,
    pub api_key: Option<ApiKey>,
    /// When the server started (the models list's `created`).
    pub created: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub async fn health(State(s): State<AppState>) -> Json<Value> {
    let m = &s.scheduler.metrics;
    Json(json!({
        "status": "ok",
        "model": s.model_id,
        "active_rows": m.active_rows.load(Ordering::Relaxed),
        "queued": m.queued.load(Ordering::Relaxed),
    }))
}

fn model_object(s: &AppState) -> Value {
    json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "mlx-engine"})
}

pub async fn models(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&s)]}))
}

pub async fn model(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id != s.model_id {
        return Err(ApiError::model_not_found(&id, &s.model_id));
    }
    Ok(Json(model_object(&s)))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("Unknown endpoint: this server has /v1/chat/completions, /v1/completions, /v1/models, /health")
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::from_status(r.status(), format!("could not read the request body: {}", r.body_text())))
}

fn check_model(s: &AppState, model: &str) -> Result<(), ApiError> {
    if model != s.model_id {
        return Err(ApiError::model_not_found(model, &s.model_id));
    }
    Ok(())
}

/// How a response is shaped: chat completion or text completion, and what it reports.
#[derive(Clone)]
struct Shape {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    include_usage: bool,
    /// Tool calls are parsed out of the output in this format (chat with `tools`).
    tools: Option<ToolFormat>,
}

pub async fn chat(
    State(s): State<AppState>,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(body)?;
    let req: ChatRequest = openai::parse(&body)?;
    let common: Common = openai::parse(&body)?;
    check_model(&s, &common.model)?;
    // `auto` (the default) renders the tools and parses calls out of the output; a forced
    // call (`required`, a named function) is also constrained to the call syntax.
    let mut constraint = structured::response_format(req.response_format.as_ref())?;
    let choice = structured::tool_choice(req.tool_choice.as_ref(), req.tools.as_deref())?;
    let tools = req.tools.clone().filter(|t| !t.is_empty() && !matches!(choice, ToolChoice::None));
    let mut args = serde_json::Map::new();
    // A model may ship a template for tool use besides its default one (as transformers picks).
    let (template, tool_format) = match &tools {
        None => (None, None),
        Some(t) => {
            args.insert("tools".into(), Value::Array(t.clone()));
            let tok = s.kit.tokenizer();
            let named = tok.named_chat_templates().get("tool_use").cloned();
            let source = named.as_ref().or(tok.chat_template()).map(|t| t.text.as_str()).unwrap_or("");
            let format = ToolFormat::of_template(source);
            if let ToolChoice::Forced(names) = &choice {
                if constraint.is_some() {
                    let msg = "a forced tool call (tool_choice) cannot be combined with a response_format";
                    return Err(ApiError::bad_request(msg, Some("tool_choice")));
                }
                constraint = Some(structured::tool_call_constraint(tok, format, source, t, names)?);
            }
            (named, Some(format))
        }
    };
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty", Some("messages")));
    }
    let messages = req.messages.iter().enumerate().map(|(i, m)| m.to_chat(i)).collect::<Result<Vec<_>, _>>()?;
    let images = image_parts(&s, &req)?;
    let logprobs = req.logprobs.unwrap_or(false);
    if req.top_logprobs.is_some() && !logprobs {
        return Err(ApiError::bad_request("top_logprobs needs logprobs: true", Some("top_logprobs")));
    }
    let top = if logprobs { req.top_logprobs.unwrap_or(0) } else { 0 };
    let max_tokens = req.max_completion_tokens.or(common.max_tokens);
    let gen = common.to_request(max_tokens, top)?;
    let permit = s.scheduler.admit().ok_or_else(|| ApiError::overloaded(1))?;
    let kit = s.kit.clone();
    let with_images = !images.is_empty();
    // With images the rendered text is tokenized on the model's thread, where the vision
    // add-on sizes each image's span.
    let (prompt, text) = tokio::task::spawn_blocking(move || -> crate::Result<(Vec<u32>, Option<String>)> {
        if with_images {
            let cancel = std::sync::atomic::AtomicBool::new(false);
            let text =
                kit.tokenizer().apply_chat_template_cancellable(&messages, true, &args, template.as_ref(), &cancel)?;
            return Ok((Vec::new(), Some(text)));
        }
        Ok((kit.tokenize_chat_cancellable(&messages, template.as_ref(), &args, &CancelHandle::new())?, None))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the chat template task failed: {e}")))??;
    let shape = Shape {
        chat: true,
        id: format!("chatcmpl-{}", rid.0),
        created: now(),
        model: s.model_id.clone(),
        logprobs,
        include_usage: common.include_usage(),
        tools: tool_format,
    };
    let gen = GenerateRequest { prompt_tokens: prompt, images, constraint, ..gen };
    respond(&s, &rid, shape, (gen, text), common.stream.unwrap_or(false), permit).await
}

/// The request's `image_url` parts, refused (400, naming the part) for a text-only model.
fn image_parts(s: &AppState, req: &ChatRequest) -> Result<Vec<ImageInput>, ApiError> {
    let mut images = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        images.extend(m.images(i)?);
    }
    if let Some((_, param)) = images.first() {
        if s.kit.info().vision_path == VisionPath::None {
            return Err(ApiError::bad_request(
                format!(
                    "`{}` is a text-only model (its config.json has no vision_config): it takes no images",
                    s.model_id
                ),
                Some(param),
            ));
        }
    }
    Ok(images.into_iter().map(|(image, _)| image).collect())
}

pub async fn completions(
    State(s): State<AppState>,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(body)?;
    let req: CompletionRequest = openai::parse(&body)?;
    let common: Common = openai::parse(&body)?;
    check_model(&s, &common.model)?;
    if req.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported by this server", Some("echo")));
    }
    if req.suffix.as_deref().is_some_and(|x| !x.is_empty()) {
        return Err(ApiError::bad_request("suffix is not supported by this server", Some("suffix")));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::bad_request("best_of other than 1 is not supported", Some("best_of")));
    }
    let one = |n: usize| -> Result<(), ApiError> {
        match n {
            1 => Ok(()),
            n => Err(ApiError::bad_request(format!("one prompt per request (got {n})"), Some("prompt"))),
        }
    };
    // Text is tokenized as the tokenizer's `encode(text)` does; token ids go in as they are.
    let (text, ids) = match req.prompt {
        Prompt::Text(t) => (Some(t), None),
        Prompt::Texts(mut v) => {
            one(v.len())?;
            (Some(v.remove(0)), None)
        }
        Prompt::Tokens(t) => (None, Some(t)),
        Prompt::TokenLists(mut v) => {
            one(v.len())?;
            (None, Some(v.remove(0)))
        }
    };
    let top = req.logprobs.unwrap_or(0);
    let gen = common.to_request(common.max_tokens, top)?;
    let permit = s.scheduler.admit().ok_or_else(|| ApiError::overloaded(1))?;
    let prompt = match (text, ids) {
        (Some(text), _) => {
            let kit = s.kit.clone();
            tokio::task::spawn_blocking(move || kit.tokenize(&text))
                .await
                .map_err(|e| ApiError::internal(format!("the tokenizer task failed: {e}")))??
        }
        (None, ids) => ids.unwrap_or_default(),
    };
    let shape = Shape {
        chat: false,
        id: format!("cmpl-{}", rid.0),
        created: now(),
        model: s.model_id.clone(),
        logprobs: req.logprobs.is_some(),
        include_usage: common.include_usage(),
        tools: None,
    };
    respond(
        &s,
        &rid,
        shape,
        (GenerateRequest { prompt_tokens: prompt, ..gen }, None),
        common.stream.unwrap_or(false),
        permit,
    )
    .await
}

/// Submits the generation (and the text to tokenize with its images, if it has any) and
/// answers once the scheduler has taken (or refused) it.
async fn respond(
    s: &AppState,
    rid: &RequestId,
    shape: Shape,
    (req, text): (GenerateRequest, Option<String>),
    stream: bool,
    permit: Permit,
) -> Result<Response, ApiError> {
    let Submitted { mut events, mut guard } = s.scheduler.submit(&rid.0, req, text)?;
    let (prompt_tokens, cached_tokens) = match events.recv().await {
        Some(RowEvent::Started { prompt_tokens, cached_tokens }) => (prompt_tokens, cached_tokens),
        Some(RowEvent::Done(Err(e))) => {
            guard.finished = true;
            return Err(e.into());
        }
        _ => return Err(ApiError::internal("the model's scheduler stopped")),
    };
    let acc = Acc { prompt_tokens, cached_tokens, ..Default::default() };
    if stream {
        let st = StreamState { events, guard, _permit: permit, shape, acc, out: VecDeque::new(), done: false };
        if st.shape.chat {
            let mut st = st;
            let role = st.chunk(json!({"role": "assistant", "content": ""}), Value::Null, None);
            st.out.push_back(role);
            return Ok(sse(st));
        }
        return Ok(sse(st));
    }
    collect(events, guard, permit, shape, acc).await
}

/// What a response has gathered so far.
#[derive(Default)]
struct Acc {
    prompt_tokens: usize,
    cached_tokens: usize,
    text: String,
    tokens: Vec<Token>,
    top: Vec<Vec<Token>>,
    reason: Option<StopReason>,
}

impl Acc {
    fn add(&mut self, r: GenerationResult) {
        self.text.push_str(&r.text);
        self.tokens.extend(r.tokens);
        self.top.extend(r.top_logprobs);
        if let Some(c) = r.stop_condition {
            self.reason = Some(c.reason);
        }
    }

    fn usage(&self) -> Value {
        openai::usage(self.prompt_tokens, self.tokens.len(), self.cached_tokens)
    }
}

/// A non-streaming response: every result, then one JSON object.
async fn collect(
    mut events: UnboundedReceiver<RowEvent>,
    mut guard: RowGuard,
    _permit: Permit,
    shape: Shape,
    mut acc: Acc,
) -> Result<Response, ApiError> {
    loop {
        match events.recv().await {
            Some(RowEvent::Chunk(r)) => acc.add(r),
            Some(RowEvent::Done(Ok(()))) => break,
            Some(RowEvent::Done(Err(e))) => {
                guard.finished = true;
                return Err(e.into());
            }
            Some(RowEvent::Started { .. }) => {}
            None => return Err(ApiError::internal("the model's scheduler stopped")),
        }
    }
    guard.finished = true;
    let mut finish = openai::finish_reason(acc.reason);
    let choice = if shape.chat {
        let logprobs = if shape.logprobs { openai::chat_logprobs(&acc.tokens, &acc.top) } else { Value::Null };
        let mut message = json!({"role": "assistant", "content": acc.text});
        if let Some(format) = shape.tools {
            let parsed = tools::parse(format, &acc.text);
            if !parsed.calls.is_empty() {
                message["content"] = json!(parsed.content);
                message["tool_calls"] = tools::tool_calls_json(&parsed.calls, &shape.id, false);
                finish = "tool_calls";
            }
        }
        json!({"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish})
    } else {
        let logprobs = if shape.logprobs { openai::completion_logprobs(&acc.tokens, &acc.top, 0) } else { Value::Null };
        json!({"index": 0, "text": acc.text, "logprobs": logprobs, "finish_reason": finish})
    };
    let object = if shape.chat { "chat.completion" } else { "text_completion" };
    Ok(Json(json!({
        "id": shape.id, "object": object, "created": shape.created, "model": shape.model,
        "choices": [choice], "usage": acc.usage(),
    }))
    .into_response())
}

/// A streaming response in progress.
struct StreamState {
    events: UnboundedReceiver<RowEvent>,
    /// Dropped with the stream: a client that goes away cancels its row.
    guard: RowGuard,
    _permit: Permit,
    shape: Shape,
    acc: Acc,
    out: VecDeque<Event>,
    done: bool,
}

impl StreamState {
    fn frame(&self, choices: Value, usage: Option<Value>) -> Event {
        let object = if self.shape.chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v = json!({
            "id": self.shape.id, "object": object, "created": self.shape.created,
            "model": self.shape.model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Event::default().data(v.to_string())
    }

    /// One choice chunk: a chat `delta` or completion text, its logprobs, its finish reason.
    fn chunk(&self, content: Value, logprobs: Value, finish: Option<&str>) -> Event {
        let choice = if self.shape.chat {
            json!({"index": 0, "delta": content, "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": content, "logprobs": logprobs, "finish_reason": finish})
        };
        self.frame(json!([choice]), None)
    }

    fn on_result(&mut self, r: GenerationResult) {
        if let Some(format) = self.shape.tools {
            return self.on_tool_result(format, r);
        }
        let offset = self.acc.text.chars().count();
        let logprobs = match (self.shape.logprobs, self.shape.chat) {
            (false, _) => Value::Null,
            (true, true) => openai::chat_logprobs(&r.tokens, &r.top_logprobs),
            (true, false) => openai::completion_logprobs(&r.tokens, &r.top_logprobs, offset),
        };
        let text = r.text.clone();
        let has_tokens = !r.tokens.is_empty();
        self.acc.add(r);
        if !text.is_empty() || (self.shape.logprobs && has_tokens) {
            let content = if self.shape.chat { json!({"content": text}) } else { json!(text) };
            let e = self.chunk(content, logprobs, None);
            self.out.push_back(e);
        }
        if let Some(reason) = self.acc.reason.filter(|_| !self.done) {
            let content = if self.shape.chat { json!({}) } else { json!("") };
            let e = self.chunk(content, Value::Null, Some(openai::finish_reason(Some(reason))));
            self.out.push_back(e);
        }
    }

    /// With tools the text is held until the end, when it is known whether it is a call.
    fn on_tool_result(&mut self, format: ToolFormat, r: GenerationResult) {
        self.acc.add(r);
        let Some(reason) = self.acc.reason else { return };
        let parsed = tools::parse(format, &self.acc.text);
        let logprobs =
            if self.shape.logprobs { openai::chat_logprobs(&self.acc.tokens, &self.acc.top) } else { Value::Null };
        if parsed.calls.is_empty() {
            let e = self.chunk(json!({"content": self.acc.text}), logprobs, None);
            self.out.push_back(e);
            let e = self.chunk(json!({}), Value::Null, Some(openai::finish_reason(Some(reason))));
            self.out.push_back(e);
            return;
        }
        if let Some(c) = &parsed.content {
            let e = self.chunk(json!({"content": c}), logprobs, None);
            self.out.push_back(e);
        }
        let calls = tools::tool_calls_json(&parsed.calls, &self.shape.id, true);
        let e = self.chunk(json!({"tool_calls": calls}), Value::Null, None);
        self.out.push_back(e);
        let e = self.chunk(json!({}), Value::Null, Some("tool_calls"));
        self.out.push_back(e);
    }

    fn end(&mut self, error: Option<ApiError>) {
        self.guard.finished = true;
        self.done = true;
        match error {
            Some(e) => self.out.push_back(Event::default().data(e.body().to_string())),
            None if self.shape.include_usage => {
                let e = self.frame(json!([]), Some(self.acc.usage()));
                self.out.push_back(e);
            }
            None => {}
        }
        self.out.push_back(Event::default().data("[DONE]"));
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            match self.events.recv().await {
                Some(RowEvent::Chunk(r)) => self.on_result(r),
                Some(RowEvent::Started { .. }) => {}
                Some(RowEvent::Done(Ok(()))) => self.end(None),
                Some(RowEvent::Done(Err(e))) => self.end(Some(e.into())),
                None => self.end(Some(ApiError::internal("the model's scheduler stopped"))),
            }
        }
    }
}

fn sse(st: StreamState) -> Response {
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        let e = st.next_event().await?;
        Some((Ok::<_, Infallible>(e), st))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
