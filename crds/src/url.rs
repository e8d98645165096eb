//! A storage URL field: an object-store URL (`s3://`, `gs://`, `az://`, `file://`, ...)
//! or an absolute path. The API server checks the pattern (the schema carries it), and
//! it accepts exactly the URLs the trainer's object store opens ([`SCHEMES`] is the one
//! list both read), so a job is never accepted by one side and refused by the other.

use serde::{Deserialize, Serialize};

/// URL schemes the trainer opens (`trainer/src/storage.rs`): S3 (and Hadoop's `s3a`),
/// Google Cloud Storage, Azure Blob Storage / ADLS Gen2, and the local file system.
/// `https://` is not one: no object store is addressed by a plain web URL.
pub const SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "abfs", "abfss", "file"];

/// The pattern the API server enforces: a scheme of [`SCHEMES`] with a bucket or
/// container (`file://` takes any path), or an absolute path.
pub const URL_PATTERN: &str =
    r"^((s3|s3a|gs|az|abfs|abfss)://[^/\s]+(/[^\s]*)?|file://[^\s]+|/[^\s]*)$";
/// Longest URL accepted (keeps CEL cost estimates of immutability rules bounded).
pub const URL_MAX_LENGTH: u32 = 2048;

/// URLs at the edges of [`URL_PATTERN`], with whether both the API server and the
/// trainer accept them; the operator's control-plane tests apply them to the API
/// server, the trainer's tests open them. (Paths are not among them: the trainer, also
/// a local CLI, takes relative paths and paths with spaces, which a job refuses.)
pub const BOUNDARY_URLS: [(&str, bool); 15] = [
    ("s3://bucket", true),
    ("s3://bucket/models/janus-7b", true),
    ("s3a://bucket/data", true),
    ("gs://bucket/data", true),
    ("az://container/data", true),
    ("abfs://container@account.dfs.core.windows.net/data", true),
    ("abfss://container@account.dfs.core.windows.net/data", true),
    ("file:///var/lib/janus/models", true),
    ("/models/janus-7b", true),
    ("https://huggingface.co/kaist-ai/janus-7b", false),
    ("http://minio:9000/bucket", false),
    ("ftp://host/file", false),
    ("s3:///no-bucket", false),
    ("s3://", false),
    ("S3://bucket/upper-case-scheme", false),
];

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

#[cfg(feature = "k8s")]
impl schemars::JsonSchema for StorageUrl {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StorageUrl".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": URL_MAX_LENGTH,
            "pattern": URL_PATTERN,
            "description": "An object-store URL (s3://, s3a://, gs://, az://, abfs://, abfss:// with a bucket or container, or file://) or an absolute path. https:// is not one."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_lists_exactly_the_trainers_schemes() {
        let remote: Vec<&str> = SCHEMES.iter().copied().filter(|s| *s != "file").collect();
        assert!(
            URL_PATTERN.starts_with(&format!("^(({})://", remote.join("|"))),
            "{URL_PATTERN}"
        );
        assert!(URL_PATTERN.contains("|file://"), "{URL_PATTERN}");
        // Every scheme is covered by an accepted boundary URL.
        for s in SCHEMES {
            assert!(
                BOUNDARY_URLS
                    .iter()
                    .any(|(u, ok)| *ok && u.starts_with(&format!("{s}://"))),
                "{s}"
            );
        }
    }
}
