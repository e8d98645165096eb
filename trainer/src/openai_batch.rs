//! What every user of the OpenAI Batch API here shares (the judge's batch mode,
//! `janus data synthesize` with `llm.mode: batch`): input files within the API's
//! limits, polling a batch to its end, and reading each output line back by its
//! `custom_id`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::openai::{answer_text, CallError, JudgeClient};

/// Most requests in one batch (the Batch API's limit).
pub const MAX_LINES: usize = 50_000;
/// Most bytes of one batch input file (the API takes 200 MB).
pub const MAX_BYTES: usize = 190 << 20;

/// One line of a batch input file: a chat completion with `body`.
pub fn input_line(custom_id: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

/// Lines (with what each is for) cut into input files within [`MAX_LINES`] and
/// [`MAX_BYTES`].
pub fn input_files<C>(lines: impl IntoIterator<Item = (String, C)>) -> Vec<(Vec<u8>, Vec<C>)> {
    let mut files: Vec<(Vec<u8>, Vec<C>)> = vec![];
    for (line, c) in lines {
        let full = files
            .last()
            .is_none_or(|(b, cs)| cs.len() >= MAX_LINES || b.len() + line.len() + 1 > MAX_BYTES);
        if full {
            files.push((vec![], vec![]));
        }
        let (bytes, cs) = files.last_mut().expect("pushed");
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        cs.push(c);
    }
    files
}

/// What came back for one line.
pub enum LineAnswer {
    Text(String),
    /// Worth another try (429, 5xx, expired, no line at all).
    Failed(String),
    /// A refusal no retry changes.
    Refused(String),
}

/// The answer an output or error file line holds.
pub fn answer_of(line: &Value) -> LineAnswer {
    let status = line["response"]["status_code"].as_u64();
    let body = &line["response"]["body"];
    match status {
        Some(200) => match answer_text(body) {
            Some(t) => LineAnswer::Text(t),
            None => LineAnswer::Failed(format!("HTTP 200 without a chat completion: {body}")),
        },
        Some(s) if matches!(s, 408 | 409 | 429) || s >= 500 => {
            LineAnswer::Failed(format!("HTTP {s}: {body}"))
        }
        Some(s) => LineAnswer::Refused(format!("HTTP {s}: {body}")),
        None => LineAnswer::Failed(format!("no response: {}", line["error"])),
    }
}

/// Why waiting for a batch ended without its lines.
#[derive(Debug)]
pub enum WaitError {
    /// Looking at the batch or downloading a file failed.
    Call(CallError),
    /// The batch itself failed (its `errors`).
    Failed(String),
    /// An output line is not JSON.
    Data(String),
}

/// Poll batch `id` every `poll` until it ends (completed, expired or cancelled); the
/// lines of its output and error files by `custom_id`. `what` names the batch in logs.
pub async fn wait(
    client: &JudgeClient,
    id: &str,
    poll: Duration,
    what: &str,
) -> Result<HashMap<String, Value>, WaitError> {
    let batch = loop {
        let b = client.batch(id).await.map_err(WaitError::Call)?;
        let status = b["status"].as_str().unwrap_or_default().to_string();
        tracing::info!(batch = %id, %status, counts = %b["request_counts"], "{what} batch");
        match status.as_str() {
            "completed" | "expired" | "cancelled" => break b,
            "failed" => return Err(WaitError::Failed(b["errors"].to_string())),
            _ => tokio::time::sleep(poll).await,
        }
    };
    let mut lines = HashMap::new();
    for key in ["output_file_id", "error_file_id"] {
        let Some(file) = batch[key].as_str().filter(|f| !f.is_empty()) else {
            continue;
        };
        let bytes = client.file_content(file).await.map_err(WaitError::Call)?;
        for (n, l) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(l).map_err(|e| {
                WaitError::Data(format!("batch {id}: file {file} line {}: {e}", n + 1))
            })?;
            if let Some(c) = v["custom_id"].as_str() {
                lines.insert(c.to_string(), v);
            }
        }
    }
    Ok(lines)
}
