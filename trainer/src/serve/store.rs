//! The Files and Batch API's objects, in memory (a restarted server has none): below
//! the routes, which hold them in their state, and the batch handlers, which fill them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::{json, Value};

use super::openai::{now, random_id, ApiError};

pub(super) struct StoredFile {
    pub(super) object: Value,
    pub(super) bytes: Bytes,
}

/// Uploaded files and batch objects, by id.
#[derive(Default)]
pub struct Store {
    pub(super) files: Mutex<HashMap<String, Arc<StoredFile>>>,
    pub(super) batches: Mutex<HashMap<String, Value>>,
}

impl Store {
    pub(super) fn add_file(&self, filename: &str, purpose: &str, bytes: Bytes) -> Value {
        let id = random_id("file");
        let object = json!({
            "id": id, "object": "file", "bytes": bytes.len(), "created_at": now(),
            "filename": filename, "purpose": purpose, "status": "processed",
            "status_details": null, "expires_at": null,
        });
        let f = Arc::new(StoredFile {
            object: object.clone(),
            bytes,
        });
        self.files.lock().expect("lock").insert(id, f);
        object
    }

    pub(super) fn file(&self, id: &str) -> Result<Arc<StoredFile>, ApiError> {
        self.files
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("file", id))
    }

    pub(super) fn batch(&self, id: &str) -> Result<Value, ApiError> {
        self.batches
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("batch", id))
    }

    /// Apply `f` to batch `id`'s object.
    pub(super) fn update(&self, id: &str, f: impl FnOnce(&mut Value)) {
        if let Some(b) = self.batches.lock().expect("lock").get_mut(id) {
            f(b);
        }
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError {
        status: 404,
        message: format!("no {what} with id `{id}`"),
        kind: "invalid_request_error",
        param: Some("id".into()),
        code: None,
    }
}
