//! OpenAI's request and response shapes (chat completions, completions, models,
//! errors), named as OpenAI names them so the official clients work unchanged, with
//! vLLM's extras (`top_k`, `repetition_penalty`, `ignore_eos`) beside them. A request
//! is checked field by field; what is wrong comes back as a 400 naming the field.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An object's `created` / `created_at`: seconds since the Unix epoch.
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An object id in OpenAI's style: `<prefix>-<24 hex digits>`.
pub(super) fn random_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn status(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

/// Message content: text, or a list of parts of which only text parts are supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Sampling fields common to both endpoints.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<String>,
    pub metadata: Option<Value>,
    pub store: Option<bool>,
    pub service_tier: Option<Value>,
}

/// `prompt` of a completion: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptIn,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<Value>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    pub user: Option<String>,
}

/// Most choices one request may ask for.
pub const MAX_N: i64 = 64;
/// Most stop strings (OpenAI allows 4).
pub const MAX_STOP: usize = 4;

/// What a request asks the engine for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: Option<usize>,
    pub repetition_penalty: f64,
    pub n: usize,
    /// None: up to the context length.
    pub max_tokens: Option<usize>,
    /// Which field gave `max_tokens` (for the over-long error).
    pub max_tokens_field: &'static str,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f64, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        Some(x) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, found {x}"),
        )),
    }
}

fn unsupported(param: &str, set: bool, what: &str) -> Result<(), ApiError> {
    if set {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` is not supported by this server ({what})"),
        ));
    }
    Ok(())
}

impl Sampling {
    /// Check the common fields; `max_completion_tokens` (chat) wins over the legacy
    /// `max_tokens` when only it is given.
    pub fn check(self, max_completion_tokens: Option<i64>) -> Result<Generation, ApiError> {
        let temperature = range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        let repetition_penalty = range(
            "repetition_penalty",
            self.repetition_penalty,
            0.01,
            10.0,
            1.0,
        )?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}, found {n}"),
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be >= 1 (or -1: off), found {k}"),
                ))
            }
        };
        let (max_tokens, field) = match (self.max_tokens, max_completion_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::invalid(
                    "max_completion_tokens",
                    format!(
                        "`max_tokens` ({a}) and `max_completion_tokens` ({b}) disagree: give one"
                    ),
                ))
            }
            (_, Some(b)) => (Some(b), "max_completion_tokens"),
            (Some(a), None) => (Some(a), "max_tokens"),
            (None, None) => (None, "max_tokens"),
        };
        if let Some(m) = max_tokens.filter(|&m| m < 1) {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be >= 1, found {m}"),
            ));
        }
        let stop = self.stop.map(Stop::into_vec).unwrap_or_default();
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOP} stop sequences, found {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ));
        }
        for (param, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            let v = range(param, v, -2.0, 2.0, 0.0)?;
            unsupported(param, v != 0.0, "use `repetition_penalty`")?;
        }
        let bias = self
            .logit_bias
            .as_ref()
            .is_some_and(|b| b.as_object().is_none_or(|m| !m.is_empty()));
        unsupported("logit_bias", bias, "no logit bias")?;
        let _ = self.user;
        Ok(Generation {
            // top_p = 0 keeps only the most likely token.
            temperature: if top_p == 0.0 { 0.0 } else { temperature },
            top_p: if top_p == 0.0 { 1.0 } else { top_p },
            top_k,
            repetition_penalty,
            n: n as usize,
            max_tokens: max_tokens.map(|m| m as usize),
            max_tokens_field: field,
            stop,
            seed: self.seed.map(|s| s as u64),
            stream,
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

impl ChatRequest {
    /// The sampling fields, after refusing what this server does not do.
    pub fn sampling(&self) -> Result<Generation, ApiError> {
        unsupported(
            "logprobs",
            self.logprobs == Some(true),
            "no log-probabilities",
        )?;
        unsupported(
            "top_logprobs",
            self.top_logprobs.is_some_and(|n| n > 0),
            "no log-probabilities",
        )?;
        unsupported(
            "tools",
            self.tools
                .as_ref()
                .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())),
            "no tool calls",
        )?;
        unsupported(
            "tool_choice",
            self.tool_choice
                .as_ref()
                .is_some_and(|t| t != "none" && t != "auto"),
            "no tool calls",
        )?;
        let text_format = self
            .response_format
            .as_ref()
            .is_none_or(|f| f.get("type").and_then(Value::as_str) == Some("text"));
        unsupported("response_format", !text_format, "text only")?;
        let s = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            seed: self.seed,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            ignore_eos: self.ignore_eos,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias.clone(),
            user: self.user.clone(),
        };
        s.check(self.max_completion_tokens)
    }
}

impl CompletionRequest {
    pub fn sampling(&self) -> Result<Generation, ApiError> {
        unsupported(
            "logprobs",
            self.logprobs.is_some_and(|n| n > 0),
            "no log-probabilities",
        )?;
        unsupported("echo", self.echo == Some(true), "the prompt is not echoed")?;
        unsupported(
            "suffix",
            self.suffix.as_ref().is_some_and(|s| !s.is_empty()),
            "no insertion",
        )?;
        let s = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            max_tokens: self.max_tokens.or(Some(16)),
            stop: self.stop.clone(),
            seed: self.seed,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            ignore_eos: self.ignore_eos,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias.clone(),
            user: self.user.clone(),
        };
        let g = s.check(None)?;
        if let Some(b) = self.best_of.filter(|&b| b != g.n as i64) {
            return Err(ApiError::invalid(
                "best_of",
                format!("`best_of` ({b}) other than `n` is not supported"),
            ));
        }
        Ok(g)
    }
}

/// The text of a message's content.
pub fn content_text(m: &ChatMessageIn, index: usize) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    match &m.content {
        None => Err(ApiError::invalid(
            param,
            format!("messages[{index}] has no content"),
        )),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}]"),
                            format!("content parts of type `{kind}` are not supported (text only)"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Parse a JSON body into `T`, naming the field at fault.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // A missing or unknown field is named in serde's message; the path is its parent.
        let param = if path == "." {
            field_in(&message).unwrap_or_default()
        } else {
            path.clone()
        };
        let message = if path == "." {
            format!("invalid request body: {message}")
        } else {
            format!("`{path}`: {message}")
        };
        ApiError::invalid(param, message)
    })
}

/// The field a serde message names in backquotes (`unknown field `x``, `missing field `y``).
fn field_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Generation, ApiError> {
        parse_body::<ChatRequest>(body.to_string().as_bytes())?.sampling()
    }

    #[test]
    fn defaults_are_openai_s() {
        let g =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(
            (g.temperature, g.top_p, g.n, g.max_tokens, g.stream),
            (1.0, 1.0, 1, None, false)
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({"model": "m", "messages": [], "temperature": 3}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [], "top_p": -0.5}),
                "top_p",
            ),
            (json!({"model": "m", "messages": [], "n": 0}), "n"),
            (
                json!({"model": "m", "messages": [], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": [], "max_completion_tokens": -3}),
                "max_completion_tokens",
            ),
            (
                json!({"model": "m", "messages": [], "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (
                json!({"model": "m", "messages": [], "stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (
                json!({"model": "m", "messages": [], "presence_penalty": 1.0}),
                "presence_penalty",
            ),
            (
                json!({"model": "m", "messages": [], "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"model": "m", "messages": [], "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "messages": [], "temprature": 1}),
                "temprature",
            ),
            (json!({"messages": []}), "model"),
            (json!({"model": "m", "messages": [], "n": "two"}), "n"),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert!(e.message.contains(param), "{body}: {}", e.message);
        }
    }
}
