//! A client for any OpenAI-compatible chat completions endpoint, made for thousands
//! of judge calls: calls start no faster than the requests-per-minute limit (evenly
//! spaced, retries included), a call that meets a 429, a 5xx, a timeout or a broken
//! connection is retried with exponential backoff (or after the server's
//! `Retry-After`), and a refusal that retrying cannot change (400, 401, 403, 404) is
//! reported as such.

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
    endpoint: String,
    model: String,
    api_key: Option<String>,
    limiter: RateLimiter,
    max_retries: usize,
    temperature: f64,
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
    pub max_tokens: usize,
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
fn answer_text(body: &Value) -> Option<String> {
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

impl JudgeClient {
    pub fn new(o: ClientOptions) -> Result<Self, String> {
        crate::storage::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(o.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            endpoint: format!("{}/chat/completions", o.url.trim_end_matches('/')),
            model: o.model,
            api_key: o.api_key,
            limiter: RateLimiter::new(o.requests_per_minute),
            max_retries: o.max_retries,
            temperature: o.temperature,
            max_tokens: o.max_tokens,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One chat completion of `messages`, retried as needed; its text.
    pub async fn ask(&self, messages: &[Value], seed: u64) -> Result<String, CallError> {
        let body = json!({
            "model": self.model, "messages": messages, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "seed": seed, "n": 1,
        })
        .to_string();
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            self.limiter.acquire().await;
            let mut req = self
                .http
                .post(&self.endpoint)
                .header("Content-Type", "application/json")
                .body(body.clone());
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let hinted = retry_after(resp.headers());
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        let parsed = serde_json::from_str::<Value>(&text).ok();
                        match parsed.as_ref().and_then(answer_text) {
                            Some(t) => return Ok(t),
                            None => {
                                last = format!(
                                    "{}: HTTP 200 without a chat completion: {}",
                                    self.endpoint,
                                    short(&text)
                                );
                                None
                            }
                        }
                    } else if status.as_u16() == 429
                        || status.as_u16() == 408
                        || status.as_u16() == 409
                        || status.is_server_error()
                    {
                        last = format!("{}: HTTP {status}: {}", self.endpoint, short(&text));
                        hinted
                    } else {
                        return Err(CallError::Refused(format!(
                            "{}: HTTP {status}: {}",
                            self.endpoint,
                            short(&text)
                        )));
                    }
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        format!("{}: no answer within the timeout", self.endpoint)
                    } else {
                        format!("{}: {e}", self.endpoint)
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
}
