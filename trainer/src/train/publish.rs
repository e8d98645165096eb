//! The end of a run: the final model in Hugging Face format with its tokenizer and
//! `summary.json`, in `output_dir` (a path, or a URL the files are uploaded to).

use std::path::Path;

use tch::nn::VarStore;

use super::record::Summary;
use crate::config::TrainConfig;
use crate::error::{IoContext, Result};
use crate::model::{save_model_dir, ModelConfig};
use crate::storage::{self, Store};

/// Write the final model (HF format, with tokenizer) to `output_dir`.
/// A URL `output_dir` gets the same files, written locally first and then uploaded.
pub fn publish(
    cfg: &TrainConfig,
    vs: &VarStore,
    model_config: &ModelConfig,
    tokenizer: &Path,
    summary: &Summary,
) -> Result<()> {
    let target = cfg.output_dir.to_string_lossy().to_string();
    let remote = storage::is_url(&target);
    let scratch = if remote {
        Some(crate::checkpoint::staging_dir("janus-output-")?)
    } else {
        None
    };
    let local = scratch
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(|| cfg.output_dir.clone());
    if remote {
        // The whole model is written here before it is uploaded.
        let bytes: u64 = vs
            .variables()
            .values()
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum();
        crate::scratch::ensure_room(
            &local,
            bytes,
            &format!("staging the final model for {target}"),
        )?;
    }
    let mut files = save_model_dir(&local, vs, model_config, crate::checkpoint::MAX_SHARD_BYTES)?;
    std::fs::copy(tokenizer, local.join("tokenizer.json")).ctx(|| local.display().to_string())?;
    files.push("tokenizer.json".into());
    let path = local.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(summary).expect("summary serializes"),
    )
    .ctx(|| path.display().to_string())?;
    files.push("summary.json".into());
    if remote {
        let store = Store::open(
            &target,
            std::time::Duration::from_secs(cfg.checkpoint.retry_timeout_seconds),
        )?;
        for f in &files {
            store.put_file(f, &local.join(f))?;
        }
    }
    Ok(())
}
