//! A client for any OpenAI-compatible chat completions endpoint, made for thousands
//! of calls (the evaluation's judge, `janus data synthesize`): calls start no faster
//! than the requests-per-minute limit (evenly spaced, retries included), a call that
//! meets a 429, a 5xx, a timeout or a broken connection is retried with exponential
//! backoff (or after the server's `Retry-After`), and a refusal that retrying cannot
//! change (400, 401, 403, 404) is reported as such.
//!
//! Besides chat completions, the subset of OpenAI's Batch API the judge's batch mode
//! uses: upload a JSONL file (`POST /files`, `purpose=batch`), create a batch
//! (`POST /batches`), look at it (`GET /batches/{id}`) and download a file
//! (`GET /files/{id}/content`), with the same retries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait between two tries of a call.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// First wait after a failure without `Retry-After`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The endpoint refused the request itself (bad key, unknown model, bad body).
    Refused(String),
    /// Still failing after every retry.
    GaveUp(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(m) | CallError::GaveUp(m) => f.write_str(m),
        }
    }
}

/// Calls started no closer together than `interval`.
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// At most `per_minute` starts per minute (0: no limit).
    pub fn new(per_minute: u32) -> Self {
        let interval = if per_minute == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(60.0 / per_minute as f64)
        };
        Self {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Wait for this call's slot.
    pub async fn acquire(&self) {
        if self.interval.is_zero() {
            return;
        }
        let slot = {
            let mut next = self.next.lock().expect("lock");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

pub struct JudgeClient {
    http: reqwest::Client,
    base: String,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    limiter: RateLimiter,
    max_retries: usize,
    temperature: f64,
    top_p: f64,
    max_tokens: usize,
}

pub struct ClientOptions {
    /// Base URL of the API (`.../v1`).
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub requests_per_minute: u32,
    pub timeout: Duration,
    pub max_retries: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
}

/// The API key in the environment variable `var` names; None (with a warning) when it
/// is unset or empty, or when there is no variable.
pub fn api_key_from_env(var: Option<&str>) -> Option<String> {
    let var = var?;
    match std::env::var(var) {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            tracing::warn!(variable = %var, "API key variable is not set; calling without a key");
            None
        }
    }
}

/// `Retry-After` (seconds) or OpenAI's `retry-after-ms`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// The text of a chat completion's first choice.
pub fn answer_text(body: &Value) -> Option<String> {
    body.get("choices")?
        .get(0)?
        .get("message")?
        .get("content")?
        .as_str()
        .map(str::to_string)
}

fn short(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(300).collect()
}

/// Statuses worth another try: rate limits, timeouts, conflicts, server errors.
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// A `multipart/form-data` body of a `purpose` field and one file, as OpenAI's file
/// upload takes it.
fn multipart(purpose: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("janus-{:032x}", rand::random::<u128>());
    let mut body = Vec::with_capacity(bytes.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl JudgeClient {
    pub fn new(o: ClientOptions) -> Result<Self, String> {
        crate::storage::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(o.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let base = o.url.trim_end_matches('/').to_string();
        Ok(Self {
            http,
            endpoint: format!("{base}/chat/completions"),
            base,
            model: o.model,
            api_key: o.api_key,
            limiter: RateLimiter::new(o.requests_per_minute),
            max_retries: o.max_retries,
            temperature: o.temperature,
            top_p: o.top_p,
            max_tokens: o.max_tokens,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The chat completion request of one judge call (what a batch line's `body` holds
    /// too): the original's `SAMPLING_PARAMS_OPENAI` from the config, and the seed.
    pub fn request_body(&self, messages: &[Value], seed: u64) -> Value {
        json!({
            "model": self.model, "messages": messages, "temperature": self.temperature,
            "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": seed, "n": 1,
        })
    }

    /// One exchange with `url`, retried as needed (`limited`: each try waits for its
    /// slot of the rate limit): what `parse` makes of the first 2xx answer's body. A
    /// 2xx body `parse` refuses is retried too.
    async fn exchange<T>(
        &self,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        limited: bool,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, CallError> {
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            if limited {
                self.limiter.acquire().await;
            }
            let mut req = build();
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let hinted = retry_after(resp.headers());
                    let body = resp.bytes().await.unwrap_or_default();
                    let text = || short(&String::from_utf8_lossy(&body));
                    if status.is_success() {
                        match parse(&body) {
                            Ok(t) => return Ok(t),
                            Err(why) => last = format!("{url}: HTTP {status} {why}: {}", text()),
                        }
                        None
                    } else if retryable(status) {
                        last = format!("{url}: HTTP {status}: {}", text());
                        hinted
                    } else {
                        return Err(CallError::Refused(format!(
                            "{url}: HTTP {status}: {}",
                            text()
                        )));
                    }
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        format!("{url}: no answer within the timeout")
                    } else {
                        format!("{url}: {e}")
                    };
                    None
                }
            };
            if attempt == self.max_retries {
                break;
            }
            let backoff = wait.unwrap_or_else(|| {
                let exp = FIRST_BACKOFF
                    .saturating_mul(1 << attempt.min(16))
                    .min(MAX_BACKOFF);
                // Jitter (50-100%) so that concurrent calls do not retry in lockstep.
                exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
            });
            tracing::debug!(attempt, wait_s = backoff.as_secs_f64(), error = %last, "judge call retried");
            tokio::time::sleep(backoff).await;
        }
        Err(CallError::GaveUp(format!(
            "{last} (gave up after {} tries)",
            self.max_retries + 1
        )))
    }

    async fn json_exchange(
        &self,
        url: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        limited: bool,
    ) -> Result<Value, CallError> {
        self.exchange(url, build, limited, |b| {
            serde_json::from_slice::<Value>(b).map_err(|_| "without a JSON body".to_string())
        })
        .await
    }

    /// One chat completion of `messages`, retried as needed; its text.
    pub async fn ask(&self, messages: &[Value], seed: u64) -> Result<String, CallError> {
        let body = self.request_body(messages, seed).to_string();
        let build = || {
            self.http
                .post(&self.endpoint)
                .header("Content-Type", "application/json")
                .body(body.clone())
        };
        self.exchange(&self.endpoint, build, true, |b| {
            serde_json::from_slice::<Value>(b)
                .ok()
                .as_ref()
                .and_then(answer_text)
                .ok_or_else(|| "without a chat completion".to_string())
        })
        .await
    }

    /// Upload a batch input file (`purpose=batch`); its file id.
    pub async fn upload_batch_file(
        &self,
        filename: &str,
        jsonl: &[u8],
    ) -> Result<String, CallError> {
        let url = format!("{}/files", self.base);
        let (content_type, body) = multipart("batch", filename, jsonl);
        let build = || {
            self.http
                .post(&url)
                .header("Content-Type", content_type.clone())
                .body(body.clone())
        };
        let v = self.json_exchange(&url, build, false).await?;
        field_str(&v, "id", &url)
    }

    /// Create a batch of chat completions from an uploaded file; the batch object.
    pub async fn create_batch(
        &self,
        input_file_id: &str,
        metadata: Value,
    ) -> Result<Value, CallError> {
        let url = format!("{}/batches", self.base);
        let body = json!({
            "input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": metadata,
        })
        .to_string();
        let build = || {
            self.http
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body.clone())
        };
        self.json_exchange(&url, build, false).await
    }

    /// The batch object of `id` (its status, request counts and files).
    pub async fn batch(&self, id: &str) -> Result<Value, CallError> {
        let url = format!("{}/batches/{id}", self.base);
        self.json_exchange(&url, || self.http.get(&url), false)
            .await
    }

    /// The bytes of file `id`.
    pub async fn file_content(&self, id: &str) -> Result<Vec<u8>, CallError> {
        let url = format!("{}/files/{id}/content", self.base);
        self.exchange(&url, || self.http.get(&url), false, |b| Ok(b.to_vec()))
            .await
    }
}

/// A string field of an API object, or a refusal naming it.
pub fn field_str(v: &Value, key: &str, url: &str) -> Result<String, CallError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            CallError::Refused(format!(
                "{url}: the answer has no `{key}`: {}",
                short(&v.to_string())
            ))
        })
}
