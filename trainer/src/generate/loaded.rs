//! A model ready for inference: weights in the chosen dtype on the chosen device, its
//! tokenizer, its end-of-sequence ids and context length. A model directory given by
//! URL (s3://, gs://, az://, file://) is downloaded to a staging directory first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tch::{nn::VarStore, Device, Kind};

use crate::config::{DeviceChoice, Dtype};
use crate::error::{Error, Result};
use crate::model::{load_model_dir, ModelConfig, Transformer};
use crate::storage::{self, Store};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub model: Transformer,
    _vs: VarStore,
    pub tokenizer: Tokenizer,
    pub device: Device,
    pub kind: Kind,
    /// Token ids that end a sequence (the config's `eos_token_id`, one or a list, and
    /// the tokenizer's EOS).
    pub eos: Vec<i64>,
    /// Longest sequence (prompt + generated), from `max_position_embeddings`.
    pub max_len: usize,
    /// The directory or URL it came from.
    pub source: String,
    _staging: Option<tempfile::TempDir>,
}

/// Files of a Hugging Face model directory that inference reads.
fn is_model_file(name: &str) -> bool {
    name == "config.json"
        || name == "tokenizer.json"
        || name == "model.safetensors.index.json"
        || name.ends_with(".safetensors")
}

/// How long one storage request is retried while downloading a model.
const DOWNLOAD_RETRY: Duration = Duration::from_secs(120);

/// A local copy of the model directory at `path` (a path or a URL) and the path of
/// its tokenizer (`tokenizer`, a path or URL, or the directory's `tokenizer.json`).
fn local_copy(
    path: &str,
    tokenizer: Option<&str>,
) -> Result<(PathBuf, PathBuf, Option<tempfile::TempDir>)> {
    let remote = storage::is_url(path) || tokenizer.is_some_and(storage::is_url);
    let staging = remote
        .then(|| crate::checkpoint::staging_dir("janus-infer-"))
        .transpose()?;
    let dir = if storage::is_url(path) {
        let local = staging.as_ref().expect("staged").path().join("model");
        let store = Store::open(path, DOWNLOAD_RETRY)?;
        let names: Vec<String> = store
            .list_objects("")?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| is_model_file(n))
            .collect();
        if !names.iter().any(|n| n == "config.json") {
            return Err(Error::Model(format!(
                "{path}: no config.json there (expected a Hugging Face model directory)"
            )));
        }
        for n in &names {
            store.get_file(n, &local.join(n))?;
        }
        tracing::info!(url = %path, files = names.len(), "downloaded the model");
        local
    } else {
        PathBuf::from(path)
    };
    let tok = match tokenizer {
        Some(t) if storage::is_url(t) => {
            let (parent, name) = t
                .rsplit_once('/')
                .ok_or_else(|| Error::Config(format!("tokenizer URL `{t}` names no object")))?;
            let local = staging
                .as_ref()
                .expect("staged")
                .path()
                .join("tokenizer.json");
            Store::open(parent, DOWNLOAD_RETRY)?.get_file(name, &local)?;
            local
        }
        Some(t) => PathBuf::from(t),
        None => dir.join("tokenizer.json"),
    };
    Ok((dir, tok, staging))
}

/// End-of-sequence ids named by `config.json` (`eos_token_id`: an id or a list).
fn config_eos(c: &ModelConfig) -> Vec<i64> {
    match &c.eos_token_id {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => vec![],
    }
}

impl LoadedModel {
    /// Load `path` (a directory or URL) in `dtype` on `device` (CUDA: the GPU of this
    /// process's `LOCAL_RANK`, see `crate::device`).
    pub fn load(
        path: &str,
        tokenizer: Option<&str>,
        dtype: Dtype,
        device: DeviceChoice,
    ) -> Result<Self> {
        let device = crate::device::select(device, crate::device::local_rank_from_env()?)?;
        let kind = crate::config::kind(dtype);
        let (dir, tok_path, staging) = local_copy(path, tokenizer)?;
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let tok = Tokenizer::from_file(&tok_path)?;
        if tok.vocab_size() > config.vocab_size {
            return Err(Error::Model(format!(
                "{}: tokenizer has {} tokens, the model's vocab_size is {}",
                tok_path.display(),
                tok.vocab_size(),
                config.vocab_size
            )));
        }
        let mut vs = VarStore::new(device);
        let model = Transformer::new(&vs.root(), &config);
        vs.set_kind(kind);
        load_model_dir(&dir, &vs, &config)?;
        vs.freeze();
        let mut eos = config_eos(&config);
        if !eos.contains(&tok.eos_id) {
            eos.push(tok.eos_id);
        }
        tracing::info!(
            model = %path,
            parameters = config.num_parameters(),
            dtype = dtype.as_str(),
            device = ?device,
            "model loaded"
        );
        Ok(Self {
            max_len: config.max_position_embeddings,
            model,
            _vs: vs,
            tokenizer: tok,
            device,
            kind,
            eos,
            source: path.to_string(),
            _staging: staging,
        })
    }

    /// A model directory on local disk.
    pub fn load_dir(dir: &Path, dtype: Dtype, device: DeviceChoice) -> Result<Self> {
        Self::load(&dir.to_string_lossy(), None, dtype, device)
    }
}
