//! The subset of OpenAI's Files and Batch API that batch judging uses (vLLM's server has
//! neither), so a local judge behind `janus serve` works in `judge.mode: batch` too:
//!
//! - `POST /v1/files` (multipart: `file`, `purpose`), `GET /v1/files/{id}`,
//!   `GET /v1/files/{id}/content`;
//! - `POST /v1/batches` (`input_file_id`, `endpoint` `/v1/chat/completions`,
//!   `completion_window`, `metadata`), `GET /v1/batches/{id}`.
//!
//! Objects are shaped as OpenAI's (`file`, `batch`, output lines with `custom_id`,
//! `response.status_code` and `response.body`), so the official client works
//! unchanged. A batch runs in the background through the same engine as online
//! requests (all its lines queued at once, batched by the engine): `validating` (every
//! line checked first; a bad one fails the batch with its line number), `in_progress`,
//! `finalizing`, `completed`, with successes in the output file and failed requests
//! (their status and error body) in the error file. Files and batches live in memory:
//! a restarted server has none, and a client polling an old batch id gets a 404.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::openai::{now, random_id, ApiError};
use super::routes::{answered, chat_completion, check_key, json_response, Shared};

/// Largest upload (the Batch API takes input files up to 200 MB).
pub const MAX_FILE_BYTES: usize = 200 << 20;
/// The only endpoint a batch may target.
const CHAT: &str = "/v1/chat/completions";

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v1/files",
            post(create_file).layer(DefaultBodyLimit::max(MAX_FILE_BYTES + (1 << 20))),
        )
        .route("/v1/files/{id}", get(file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch))
        .route("/v1/batches/{id}", get(batch))
}

/// A part of a `multipart/form-data` body: its field name, file name and bytes.
struct FormPart {
    name: String,
    filename: Option<String>,
    bytes: Bytes,
}

/// The `name="..."` parameter of a header value.
fn param(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The parts of a `multipart/form-data` body (RFC 7578), as HTTP clients send uploads.
fn form_parts(headers: &HeaderMap, body: &Bytes) -> Result<Vec<FormPart>, ApiError> {
    let bad = |m: &str| ApiError::invalid("file", m.to_string());
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(bad(
            "expected a multipart/form-data upload with `file` and `purpose`",
        ));
    }
    let boundary =
        param(ct, "boundary").ok_or_else(|| bad("the multipart body has no boundary"))?;
    let delim = format!("--{boundary}");
    let mut parts = vec![];
    let mut at = find(body, delim.as_bytes(), 0).ok_or_else(|| bad("no multipart part"))?;
    loop {
        let start = at + delim.len();
        if body.get(start..start + 2) == Some(b"--") {
            break;
        }
        let head_end =
            find(body, b"\r\n\r\n", start).ok_or_else(|| bad("a part without headers"))?;
        let next = find(body, format!("\r\n{delim}").as_bytes(), head_end)
            .ok_or_else(|| bad("an unterminated multipart part"))?;
        let head = String::from_utf8_lossy(&body[start..head_end]);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or_default();
        parts.push(FormPart {
            name: param(disposition, "name").unwrap_or_default(),
            filename: param(disposition, "filename"),
            bytes: body.slice(head_end + 4..next),
        });
        at = next + 2;
    }
    Ok(parts)
}

async fn create_file(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = (|| {
        check_key(&s, &headers)?;
        let parts = form_parts(&headers, &body)?;
        let get = |n: &str| parts.iter().find(|p| p.name == n);
        let file = get("file").ok_or_else(|| ApiError::invalid("file", "no `file` part"))?;
        let purpose = get("purpose")
            .map(|p| String::from_utf8_lossy(&p.bytes).trim().to_string())
            .ok_or_else(|| ApiError::invalid("purpose", "no `purpose` part"))?;
        if purpose != "batch" {
            return Err(ApiError::invalid(
                "purpose",
                format!("purpose `{purpose}` is not supported (this server takes `batch`)"),
            ));
        }
        let name = file
            .filename
            .clone()
            .unwrap_or_else(|| "upload.jsonl".into());
        Ok(json_response(s.batches.add_file(
            &name,
            &purpose,
            file.bytes.clone(),
        )))
    })();
    answered(&s, "files", r)
}

async fn file(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = check_key(&s, &headers)
        .and_then(|_| s.batches.file(&id))
        .map(|f| json_response(f.object.clone()));
    answered(&s, "files", r)
}

async fn file_content(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = check_key(&s, &headers)
        .and_then(|_| s.batches.file(&id))
        .map(|f| {
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                f.bytes.clone(),
            )
                .into_response()
        });
    answered(&s, "files", r)
}

async fn batch(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let r = check_key(&s, &headers)
        .and_then(|_| s.batches.batch(&id))
        .map(json_response);
    answered(&s, "batches", r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Value>,
}

async fn create_batch(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let r = (|| {
        check_key(&s, &headers)?;
        let req: CreateBatch = super::openai::parse_body(&body)?;
        if req.endpoint != CHAT {
            return Err(ApiError::invalid(
                "endpoint",
                format!(
                    "endpoint `{}` is not supported (this server batches {CHAT})",
                    req.endpoint
                ),
            ));
        }
        if req.completion_window != "24h" {
            return Err(ApiError::invalid(
                "completion_window",
                "only `24h` is supported",
            ));
        }
        let input = s.batches.file(&req.input_file_id).map_err(|mut e| {
            e.param = Some("input_file_id".into());
            e
        })?;
        let id = random_id("batch");
        let created = now();
        let b = json!({
            "id": id, "object": "batch", "endpoint": CHAT, "errors": null,
            "input_file_id": req.input_file_id, "completion_window": req.completion_window,
            "status": "validating", "output_file_id": null, "error_file_id": null,
            "created_at": created, "in_progress_at": null, "expires_at": created + 86_400,
            "finalizing_at": null, "completed_at": null, "failed_at": null, "expired_at": null,
            "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": req.metadata,
        });
        s.batches
            .batches
            .lock()
            .expect("lock")
            .insert(id.clone(), b.clone());
        tokio::spawn(run_batch(s.clone(), id, input.bytes.clone()));
        Ok(json_response(b))
    })();
    answered(&s, "batches", r)
}

/// One line of an input file, checked.
struct Line {
    custom_id: String,
    body: Vec<u8>,
}

/// Every line of an input file, or the errors that fail the batch (OpenAI's shape).
fn lines_of(bytes: &[u8]) -> Result<Vec<Line>, Value> {
    let mut out = vec![];
    let mut errors = vec![];
    let mut seen = HashSet::new();
    for (i, raw) in String::from_utf8_lossy(bytes).lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let mut err = |m: String| {
            errors.push(
                json!({"code": "invalid_request", "message": m, "param": null, "line": i + 1}),
            )
        };
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                err(format!("line {} is not JSON: {e}", i + 1));
                continue;
            }
        };
        let custom_id = v["custom_id"].as_str().unwrap_or_default().to_string();
        if custom_id.is_empty() || !seen.insert(custom_id.clone()) {
            err(format!(
                "line {}: `custom_id` is missing or repeated",
                i + 1
            ));
        } else if v["method"] != "POST" || v["url"] != CHAT {
            err(format!("line {}: only POST {CHAT} is supported", i + 1));
        } else if !v["body"].is_object() {
            err(format!("line {}: `body` must be an object", i + 1));
        } else {
            out.push(Line {
                custom_id,
                body: v["body"].to_string().into_bytes(),
            });
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "message": "the input file has no requests", "param": null, "line": null}));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(json!({"object": "list", "data": errors}))
    }
}

/// Run batch `id` over the lines of `input`, updating its object as it goes.
async fn run_batch(s: Shared, id: String, input: Bytes) {
    let store = &s.batches;
    let lines = match lines_of(&input) {
        Ok(l) => l,
        Err(errors) => {
            store.update(&id, |b| {
                b["status"] = json!("failed");
                b["errors"] = errors;
                b["failed_at"] = json!(now());
            });
            return;
        }
    };
    // Requests are answered once the model is loaded, as online ones would be.
    while s.ready.get().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.update(&id, |b| {
        b["status"] = json!("in_progress");
        b["in_progress_at"] = json!(now());
        b["request_counts"]["total"] = json!(lines.len());
    });
    let answers = futures::future::join_all(lines.iter().map(|l| {
        let (s, id) = (s.clone(), id.clone());
        async move {
            let r = chat_completion(&s, &l.body).await;
            let ok = r.is_ok();
            s.batches.update(&id, |b| {
                let k = if ok { "completed" } else { "failed" };
                b["request_counts"][k] = json!(b["request_counts"][k].as_u64().unwrap_or(0) + 1);
            });
            r
        }
    }))
    .await;
    store.update(&id, |b| {
        b["status"] = json!("finalizing");
        b["finalizing_at"] = json!(now());
    });
    let (mut out, mut errs) = (String::new(), String::new());
    for (l, r) in lines.iter().zip(answers) {
        let (status, body, dest) = match r {
            Ok(v) => (200, v, &mut out),
            Err(e) => (e.status, e.body(), &mut errs),
        };
        let line = json!({
            "id": random_id("batch_req"), "custom_id": l.custom_id,
            "response": {"status_code": status, "request_id": random_id("req"), "body": body},
            "error": null,
        });
        dest.push_str(&line.to_string());
        dest.push('\n');
    }
    let name = |kind: &str| format!("{id}_{kind}.jsonl");
    let output = (!out.is_empty())
        .then(|| store.add_file(&name("output"), "batch_output", Bytes::from(out)));
    let error = (!errs.is_empty())
        .then(|| store.add_file(&name("error"), "batch_output", Bytes::from(errs)));
    store.update(&id, |b| {
        b["output_file_id"] = output.map(|o| o["id"].clone()).unwrap_or(Value::Null);
        b["error_file_id"] = error.map(|o| o["id"].clone()).unwrap_or(Value::Null);
        b["status"] = json!("completed");
        b["completed_at"] = json!(now());
    });
}
