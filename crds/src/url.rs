//! A storage URL field: `s3://`, `gs://`, `az://`, `file://`, `https://` or an
//! absolute path. The API server checks the pattern (the schema carries it).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The pattern the API server enforces.
pub const URL_PATTERN: &str = r"^((s3|gs|az|file|https)://[^\s]+|/[^\s]*)$";
/// Longest URL accepted (keeps CEL cost estimates of immutability rules bounded).
pub const URL_MAX_LENGTH: u32 = 2048;

/// An object-store URL or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageUrl(pub String);

impl StorageUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StorageUrl {
    fn from(s: &str) -> Self {
        StorageUrl(s.to_string())
    }
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for StorageUrl {
    fn schema_name() -> Cow<'static, str> {
        "StorageUrl".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": URL_MAX_LENGTH,
            "pattern": URL_PATTERN,
            "description": "A URL with scheme s3://, gs://, az://, file:// or https://, or an absolute path."
        })
    }
}
