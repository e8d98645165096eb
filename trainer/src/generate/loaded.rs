//! A model ready for inference: weights in the chosen dtype on the chosen device, its
//! tokenizer, its end-of-sequence ids and context length. A model directory given by
//! URL (s3://, gs://, az://, file://) is downloaded first (`crate::model_dir`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tch::{nn::VarStore, Device, Kind};

use crate::config::{DeviceChoice, Dtype};
use crate::error::Result;
use crate::model::{load_model_dir, ModelConfig, Transformer};
use crate::model_dir::ModelDir;
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
    /// The files it was loaded from (a downloaded copy is deleted with it).
    _files: ModelDir,
}

/// How long one storage request is retried while downloading a model.
const DOWNLOAD_RETRY: Duration = Duration::from_secs(120);

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
        let files = ModelDir::fetch(path, tokenizer, DOWNLOAD_RETRY)?;
        let (config, tok) = files.open()?;
        let mut vs = VarStore::new(device);
        let model = Transformer::new(&vs.root(), &config);
        vs.set_kind(kind);
        load_model_dir(&files.dir, &vs, &config)?;
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
            _files: files,
        })
    }

    /// A model directory on local disk.
    pub fn load_dir(dir: &Path, dtype: Dtype, device: DeviceChoice) -> Result<Self> {
        Self::load(&dir.to_string_lossy(), None, dtype, device)
    }
}
