//! The Hugging Face model directory a command reads: a local path, or a URL (s3://,
//! gs://, az://, file://) whose model files are downloaded to a staging directory first,
//! once the scratch space is known to hold a copy for each local rank. Training (its
//! model and DPO's reference model), generation, `janus serve` and evaluation all fetch
//! their models here.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::storage::{self, Store};
use crate::tokenizer::Tokenizer;

/// A model directory on local disk and the tokenizer that goes with it; a downloaded
/// copy lives as long as this value (checkpoints and the published model copy its
/// tokenizer, a frozen reference loads from it).
pub struct ModelDir {
    pub dir: PathBuf,
    pub tokenizer: PathBuf,
    _staging: Option<tempfile::TempDir>,
}

/// Files of an HF model directory that the trainer and inference read.
fn is_model_file(name: &str) -> bool {
    name == "config.json"
        || name == "tokenizer.json"
        || name == "model.safetensors.index.json"
        || name.ends_with(".safetensors")
}

impl ModelDir {
    /// The model directory at `path` (a path or a URL) and its tokenizer (`tokenizer`, a
    /// path or URL, or the directory's `tokenizer.json`); `retry`: how long one storage
    /// request is retried.
    pub fn fetch(path: &str, tokenizer: Option<&str>, retry: Duration) -> Result<Self> {
        let staging = (storage::is_url(path) || tokenizer.is_some_and(storage::is_url))
            .then(|| crate::checkpoint::staging_dir("janus-model-"))
            .transpose()?;
        let dir = match &staging {
            Some(s) if storage::is_url(path) => download(path, s.path(), retry)?,
            _ => PathBuf::from(path),
        };
        let tokenizer = match (tokenizer, &staging) {
            (Some(t), Some(s)) if storage::is_url(t) => {
                let (parent, name) = t
                    .rsplit_once('/')
                    .ok_or_else(|| Error::Config(format!("tokenizer URL `{t}` names no object")))?;
                let local = s.path().join("tokenizer.json");
                Store::open(parent, retry)?.get_file(name, &local)?;
                local
            }
            (Some(t), _) => PathBuf::from(t),
            (None, _) => dir.join("tokenizer.json"),
        };
        Ok(Self {
            dir,
            tokenizer,
            _staging: staging,
        })
    }

    /// Its `config.json` and tokenizer, checked to fit each other.
    pub fn open(&self) -> Result<(ModelConfig, Tokenizer)> {
        let config = ModelConfig::from_file(&self.dir.join("config.json"))?;
        let tok = Tokenizer::from_file(&self.tokenizer)?;
        if tok.vocab_size() > config.vocab_size {
            return Err(Error::Model(format!(
                "{}: tokenizer has {} tokens, the model's vocab_size is {}",
                self.tokenizer.display(),
                tok.vocab_size(),
                config.vocab_size
            )));
        }
        Ok((config, tok))
    }
}

/// Download the model files under the URL `url` into `staging/model`.
fn download(url: &str, staging: &std::path::Path, retry: Duration) -> Result<PathBuf> {
    let local = staging.join("model");
    let store = Store::open(url, retry)?;
    let files: Vec<(String, u64)> = store
        .list_objects("")?
        .into_iter()
        .filter(|(n, _)| is_model_file(n))
        .collect();
    if !files.iter().any(|(n, _)| n == "config.json") {
        return Err(Error::Model(format!(
            "{url}: no config.json there (expected a Hugging Face model directory)"
        )));
    }
    crate::scratch::ensure_room_per_rank(
        staging,
        files.iter().map(|(_, b)| b).sum(),
        &format!("the model download ({url})"),
    )?;
    for (n, _) in &files {
        store.get_file(n, &local.join(n))?;
    }
    tracing::info!(url = %url, files = files.len(), "downloaded the model");
    Ok(local)
}
