//! The HTTP layer: a thin adapter from OpenAI's API to the engine thread.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::metrics::Metrics;
use super::openai::{
    self, now, random_id, ApiError, ChatRequest, CompletionRequest, Generation, PromptIn, Usage,
};
use super::store::Store;
use super::worker::{EngineHandle, Job, Out};
use crate::data::PromptFormat;
use crate::generate::chat::{self, Message, Role};
use crate::generate::{Completion, Request, SamplingParams};
use crate::tokenizer::Tokenizer;

/// What the server needs once the model is loaded.
pub struct Ready {
    pub engine: EngineHandle,
    pub tokenizer: Tokenizer,
    pub format: PromptFormat,
    pub max_len: usize,
}

pub struct AppState {
    /// The model name clients send (`model`).
    pub name: String,
    /// Uploaded files and batches (`/v1/files`, `/v1/batches`).
    pub batches: Store,
    pub metrics: Metrics,
    /// Required bearer token, when set.
    pub api_key: Option<String>,
    pub ready: OnceLock<Ready>,
    /// When the server started (the models' `created`).
    pub created: u64,
}

pub(super) type Shared = Arc<AppState>;

/// The server's routes, with `more` (the Files and Batch API's) beside them.
pub fn router(state: Shared, more: Router<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .merge(more)
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

pub(super) fn json_with(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub(super) fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_with(status, &e.body())
}

pub(super) fn json_response(v: Value) -> Response {
    json_with(StatusCode::OK, &v)
}

/// Count the answer in the metrics and return it.
pub(super) fn answered(s: &AppState, endpoint: &str, r: Result<Response, ApiError>) -> Response {
    let r = r.unwrap_or_else(|e| error_response(&e));
    s.metrics.answered(endpoint, r.status().as_u16());
    r
}

pub(super) fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    Err(ApiError {
        status: 401,
        message: match given {
            None => "missing API key: send `Authorization: Bearer <key>`".into(),
            Some(_) => "incorrect API key provided".into(),
        },
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    })
}

fn ready(s: &AppState) -> Result<&Ready, ApiError> {
    s.ready.get().ok_or_else(|| {
        ApiError::status(
            503,
            "service_unavailable",
            "the model is still loading; retry when /health answers 200",
        )
    })
}

fn check_model(s: &AppState, model: &str) -> Result<(), ApiError> {
    if model == s.name {
        return Ok(());
    }
    Err(ApiError {
        status: 404,
        message: format!(
            "the model `{model}` does not exist; this server serves `{}`",
            s.name
        ),
        kind: "invalid_request_error",
        param: Some("model".into()),
        code: Some("model_not_found"),
    })
}

async fn health(State(s): State<Shared>) -> Response {
    match s.ready.get() {
        Some(_) => json_response(json!({"status": "ok", "model": s.name})),
        None => json_with(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading"}),
        ),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(&ApiError::status(
        404,
        "invalid_request_error",
        "no such endpoint",
    ))
}

fn model_card(s: &AppState) -> Value {
    json!({"id": s.name, "object": "model", "created": s.created, "owned_by": "janus"})
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let r = check_key(&s, &headers)
        .map(|_| json_response(json!({"object": "list", "data": [model_card(&s)]})));
    answered(&s, "models", r)
}

async fn model(
    State(s): State<Shared>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let r = check_key(&s, &headers)
        .and_then(|_| check_model(&s, &id))
        .map(|_| json_response(model_card(&s)));
    answered(&s, "models", r)
}

/// The chat's messages as prompt-format text.
fn chat_prompt(format: PromptFormat, req: &ChatRequest) -> Result<String, ApiError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("role `{other}` is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let _ = &m.name;
        messages.push(Message::new(role, openai::content_text(m, i)?));
    }
    chat::render(format, &messages).map_err(|e| {
        let param = if req.messages.is_empty() {
            "messages".to_string()
        } else {
            format!("messages[{}]", e.index)
        };
        ApiError::invalid(param.clone(), format!("`{param}`: {}", e.message))
    })
}

/// BOS + the text's tokens.
fn encode(tok: &Tokenizer, text: &str, param: &str) -> Result<Vec<i64>, ApiError> {
    let mut ids = vec![tok.bos_id];
    ids.extend(
        tok.encode(text)
            .map_err(|e| ApiError::invalid(param, format!("cannot tokenize `{param}`: {e}")))?,
    );
    Ok(ids)
}

/// The engine requests for one prompt's `n` choices, after the length check.
fn requests(
    r: &Ready,
    g: &Generation,
    prompt: Vec<i64>,
    param: &str,
    first_stream: u64,
) -> Result<Vec<Request>, ApiError> {
    let room = r.max_len.saturating_sub(prompt.len());
    let too_long = |asked: usize| {
        ApiError::invalid(
            if room == 0 { param } else { g.max_tokens_field },
            format!(
                "this model's maximum context length is {} tokens, but {} tokens were requested ({} in the prompt, {asked} to generate); shorten the prompt or the completion",
                r.max_len,
                prompt.len() + asked,
                prompt.len()
            ),
        )
        .with_code("context_length_exceeded")
    };
    if room == 0 {
        return Err(too_long(g.max_tokens.unwrap_or(1)));
    }
    let max_new = match g.max_tokens {
        Some(m) if m > room => return Err(too_long(m)),
        Some(m) => m,
        None => room,
    };
    let seed = g.seed.unwrap_or_else(rand::random);
    let params = SamplingParams {
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        repetition_penalty: g.repetition_penalty,
        seed,
    };
    let mut stop = g.stop.clone();
    stop.extend(chat::default_stops(r.format));
    Ok((0..g.n as u64)
        .map(|i| Request {
            prompt: prompt.clone(),
            params: params.clone(),
            max_new_tokens: max_new,
            stop: stop.clone(),
            ignore_eos: g.ignore_eos,
            stream: first_stream + i,
        })
        .collect())
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Completion,
}

impl Api {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }
}

/// A request accepted by the engine, ready to be answered.
struct Accepted {
    api: Api,
    id: String,
    model: String,
    created: u64,
    choices: usize,
    /// Prompt tokens of all the request's prompts (counted once per prompt).
    prompt_tokens: usize,
    include_usage: bool,
    rx: UnboundedReceiver<Out>,
}

fn submit(
    s: &AppState,
    r: &Ready,
    api: Api,
    g: &Generation,
    prompts: Vec<Vec<i64>>,
    param: &str,
) -> Result<Accepted, ApiError> {
    let mut all = vec![];
    let mut prompt_tokens = 0;
    for (i, p) in prompts.into_iter().enumerate() {
        prompt_tokens += p.len();
        all.extend(requests(r, g, p, param, (i * g.n) as u64)?);
    }
    let (tx, rx) = unbounded_channel();
    let choices = all.len();
    if !r.engine.submit(Job {
        requests: all,
        out: tx,
        arrived: Instant::now(),
    }) {
        return Err(ApiError::status(
            500,
            "server_error",
            "the engine has stopped",
        ));
    }
    Ok(Accepted {
        api,
        id: random_id(if api == Api::Chat { "chatcmpl" } else { "cmpl" }),
        model: s.name.clone(),
        created: now(),
        choices,
        prompt_tokens,
        include_usage: g.include_usage,
        rx,
    })
}

/// A chat completion request accepted by the engine, and whether to stream it.
fn accept_chat(s: &AppState, body: &[u8]) -> Result<(Accepted, bool), ApiError> {
    let ready = ready(s)?;
    let req: ChatRequest = openai::parse_body(body)?;
    check_model(s, &req.model)?;
    let g = req.sampling()?;
    let text = chat_prompt(ready.format, &req)?;
    let prompt = encode(&ready.tokenizer, &text, "messages")?;
    let acc = submit(s, ready, Api::Chat, &g, vec![prompt], "messages")?;
    Ok((acc, g.stream))
}

/// The chat completion object answering `body` (not streamed): what a batch line runs.
pub async fn chat_completion(s: &AppState, body: &[u8]) -> Result<Value, ApiError> {
    let (acc, stream) = accept_chat(s, body)?;
    if stream {
        return Err(ApiError::invalid(
            "stream",
            "a batch request cannot be streamed: set `stream` to false",
        ));
    }
    collect(acc).await
}

async fn chat_completions(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        check_key(&s, &headers)?;
        let (acc, stream) = accept_chat(&s, &body)?;
        Ok(respond(acc, stream).await)
    }
    .await;
    answered(&s, "chat_completions", r)
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        check_key(&s, &headers)?;
        let ready = ready(&s)?;
        let req: CompletionRequest = openai::parse_body(&body)?;
        check_model(&s, &req.model)?;
        let g = req.sampling()?;
        let vocab = ready.tokenizer.vocab_size() as i64;
        let check_ids = |ids: Vec<i64>| -> Result<Vec<i64>, ApiError> {
            match ids.iter().find(|&&t| t < 0 || t >= vocab) {
                Some(t) => Err(ApiError::invalid(
                    "prompt",
                    format!("token id {t} is outside the vocabulary (0..{vocab})"),
                )),
                None if ids.is_empty() => Err(ApiError::invalid("prompt", "the prompt is empty")),
                None => Ok(ids),
            }
        };
        let prompts = match req.prompt.clone() {
            PromptIn::Text(t) => vec![encode(&ready.tokenizer, &t, "prompt")?],
            PromptIn::Texts(ts) if ts.is_empty() => {
                return Err(ApiError::invalid("prompt", "the prompt list is empty"))
            }
            PromptIn::Texts(ts) => ts
                .iter()
                .map(|t| encode(&ready.tokenizer, t, "prompt"))
                .collect::<Result<_, _>>()?,
            PromptIn::Tokens(ids) => vec![check_ids(ids)?],
            PromptIn::TokenLists(ls) if ls.is_empty() => {
                return Err(ApiError::invalid("prompt", "the prompt list is empty"))
            }
            PromptIn::TokenLists(ls) => ls.into_iter().map(check_ids).collect::<Result<_, _>>()?,
        };
        let acc = submit(&s, ready, Api::Completion, &g, prompts, "prompt")?;
        Ok(respond(acc, g.stream).await)
    }
    .await;
    answered(&s, "completions", r)
}

async fn respond(acc: Accepted, stream: bool) -> Response {
    if stream {
        return Sse::new(sse_stream(acc)).into_response();
    }
    collect(acc)
        .await
        .map(json_response)
        .unwrap_or_else(|e| error_response(&e))
}

/// Wait for every choice, then answer in one body.
async fn collect(mut acc: Accepted) -> Result<Value, ApiError> {
    let mut done: Vec<Option<Completion>> = vec![None; acc.choices];
    while done.iter().any(Option::is_none) {
        match acc.rx.recv().await {
            Some(Out::Done { choice, completion }) => done[choice] = Some(completion),
            Some(Out::Delta { .. }) => {}
            Some(Out::Failed(m)) => return Err(ApiError::status(500, "server_error", m)),
            None => return Err(ApiError::status(500, "server_error", "the engine stopped")),
        }
    }
    let done: Vec<Completion> = done.into_iter().map(|c| c.expect("all done")).collect();
    let completion_tokens = done.iter().map(|c| c.tokens.len()).sum();
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, c)| match acc.api {
            Api::Chat => json!({
                "index": i, "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish.as_str(), "logprobs": null,
            }),
            Api::Completion => json!({
                "index": i, "text": c.text, "finish_reason": c.finish.as_str(), "logprobs": null,
            }),
        })
        .collect();
    Ok(json!({
        "id": acc.id, "object": acc.api.object(false), "created": acc.created, "model": acc.model,
        "choices": choices, "usage": Usage::new(acc.prompt_tokens, completion_tokens),
        "system_fingerprint": null,
    }))
}

/// The state of one streamed answer.
struct Streaming {
    acc: Accepted,
    pending: VecDeque<String>,
    role_sent: Vec<bool>,
    finished: usize,
    completion_tokens: usize,
    over: bool,
}

impl Streaming {
    fn chunk(&self, choices: Value) -> String {
        let mut v = json!({
            "id": self.acc.id, "object": self.acc.api.object(true), "created": self.acc.created,
            "model": self.acc.model, "choices": choices, "system_fingerprint": null,
        });
        if self.acc.include_usage {
            v["usage"] = Value::Null;
        }
        v.to_string()
    }

    fn choice(&self, index: usize, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.acc.api {
            Api::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!([{"index": index, "delta": delta, "finish_reason": finish, "logprobs": null}])
            }
            Api::Completion => {
                json!([{"index": index, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null}])
            }
        }
    }

    /// Chat streams open each choice with a chunk carrying the role.
    fn open(&mut self, choice: usize) {
        if self.acc.api == Api::Chat && !self.role_sent[choice] {
            self.role_sent[choice] = true;
            let c = self.choice(choice, Some(""), true, None);
            self.pending.push_back(self.chunk(c));
        }
    }

    fn on(&mut self, out: Option<Out>) {
        match out {
            Some(Out::Delta { choice, text }) => {
                self.open(choice);
                let c = self.choice(choice, Some(&text), false, None);
                self.pending.push_back(self.chunk(c));
            }
            Some(Out::Done { choice, completion }) => {
                self.open(choice);
                self.completion_tokens += completion.tokens.len();
                self.finished += 1;
                let text = (self.acc.api == Api::Completion).then_some("");
                let c = self.choice(choice, text, false, Some(completion.finish.as_str()));
                self.pending.push_back(self.chunk(c));
                if self.finished == self.acc.choices {
                    if self.acc.include_usage {
                        let mut v: Value =
                            serde_json::from_str(&self.chunk(json!([]))).expect("json");
                        v["usage"] =
                            json!(Usage::new(self.acc.prompt_tokens, self.completion_tokens));
                        self.pending.push_back(v.to_string());
                    }
                    self.pending.push_back("[DONE]".into());
                    self.over = true;
                }
            }
            Some(Out::Failed(m)) => {
                let e = ApiError::status(500, "server_error", m);
                self.pending.push_back(e.body().to_string());
                self.pending.push_back("[DONE]".into());
                self.over = true;
            }
            None => self.over = true,
        }
    }
}

fn sse_stream(acc: Accepted) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    let n = acc.choices;
    let st = Streaming {
        acc,
        pending: VecDeque::new(),
        role_sent: vec![false; n],
        finished: 0,
        completion_tokens: 0,
        over: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.over {
                return None;
            }
            let out = st.acc.rx.recv().await;
            st.on(out);
        }
    })
}
