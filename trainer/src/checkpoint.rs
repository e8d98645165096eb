//! Checkpoints: `<dir>/<job>/step-<N>/` with HF model files, optimizer state, trainer
//! state (step, schedule, data cursor, seed) and `manifest.json`, written last. A step
//! directory without a manifest does not exist. `<dir>/<job>/latest` names the newest
//! complete step.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, IoContext, Result};
use crate::model::{load_model_dir, save_model_dir, tensors_to_safetensors, ModelConfig};
use crate::optim::AdamW;

pub const MANIFEST: &str = "manifest.json";
pub const LATEST: &str = "latest";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER_STATE: &str = "trainer_state.json";
const FORMAT: &str = "janus-checkpoint/v1";
/// Model files are sharded above this size, like HF's `save_pretrained`.
pub const MAX_SHARD_BYTES: usize = 5 << 30;

/// Where the data stream stands: the next unit is `order(epoch)[position]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: u64,
    pub position: usize,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub cursor: DataCursor,
    pub learning_rate: f64,
    /// `TrainConfig::trajectory_hash` of the run that wrote it.
    pub config_hash: String,
    pub tokenizer: String,
    pub world_size: usize,
    pub tokens_seen: u64,
    /// Loss of every completed step, so a resumed run reports the whole curve.
    pub losses: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub step: u64,
    pub files: Vec<ManifestEntry>,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).ctx(|| path.display().to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).ctx(|| path.display().to_string())?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Write `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).ctx(|| tmp.display().to_string())?;
    f.write_all(bytes).ctx(|| tmp.display().to_string())?;
    f.sync_all().ctx(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).ctx(|| path.display().to_string())
}

/// Checkpoints of one job.
pub struct CheckpointDir {
    pub root: PathBuf,
}

impl CheckpointDir {
    pub fn new(dir: &Path, job: &str) -> Self {
        Self {
            root: dir.join(job),
        }
    }

    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step}"))
    }

    /// Save a complete checkpoint; returns its directory.
    pub fn save(
        &self,
        vs: &VarStore,
        model_config: &ModelConfig,
        tokenizer_json: &Path,
        optimizer: &AdamW,
        state: &TrainerState,
        keep: usize,
    ) -> Result<PathBuf> {
        let dir = self.step_dir(state.step);
        if dir.exists() {
            // A leftover from a crash mid-save (no manifest) or an older run of this step.
            std::fs::remove_dir_all(&dir).ctx(|| dir.display().to_string())?;
        }
        let mut files = save_model_dir(&dir, vs, model_config, MAX_SHARD_BYTES)?;
        std::fs::copy(tokenizer_json, dir.join("tokenizer.json"))
            .ctx(|| tokenizer_json.display().to_string())?;
        files.push("tokenizer.json".into());
        tensors_to_safetensors(&optimizer.state_tensors(), &dir.join(OPTIMIZER))?;
        files.push(OPTIMIZER.into());
        let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
        std::fs::write(dir.join(TRAINER_STATE), state_json)
            .ctx(|| dir.join(TRAINER_STATE).display().to_string())?;
        files.push(TRAINER_STATE.into());
        let mut entries = Vec::new();
        for f in files {
            let (bytes, sha256) = sha256_file(&dir.join(&f))?;
            entries.push(ManifestEntry {
                path: f,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            step: state.step,
            files: entries,
        };
        write_atomic(
            &dir.join(MANIFEST),
            &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )?;
        write_atomic(
            &self.root.join(LATEST),
            format!("step-{}\n", state.step).as_bytes(),
        )?;
        self.prune(keep, state.step)?;
        Ok(dir)
    }

    /// Delete complete checkpoints beyond the newest `keep` (0 keeps all), and
    /// incomplete ones older than `newest`.
    fn prune(&self, keep: usize, newest: u64) -> Result<()> {
        let steps = self.list()?;
        let complete: Vec<u64> = steps.iter().filter(|(_, c)| *c).map(|(s, _)| *s).collect();
        let cutoff = if keep == 0 || complete.len() <= keep {
            0
        } else {
            complete[complete.len() - keep]
        };
        for (step, is_complete) in steps {
            if (is_complete && step < cutoff) || (!is_complete && step < newest) {
                let d = self.step_dir(step);
                std::fs::remove_dir_all(&d).ctx(|| d.display().to_string())?;
            }
        }
        Ok(())
    }

    /// Step numbers present, ascending, with whether a manifest exists.
    fn list(&self) -> Result<Vec<(u64, bool)>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for e in rd {
            let e = e.ctx(|| self.root.display().to_string())?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, e.path().join(MANIFEST).exists()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Check a step directory against its manifest.
    pub fn verify(&self, step: u64) -> std::result::Result<TrainerState, String> {
        let dir = self.step_dir(step);
        let text =
            std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| format!("no manifest: {e}"))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("unreadable manifest: {e}"))?;
        if m.format != FORMAT || m.step != step {
            return Err(format!("manifest says format {} step {}", m.format, m.step));
        }
        for f in &m.files {
            let (bytes, sha) = sha256_file(&dir.join(&f.path)).map_err(|e| e.to_string())?;
            if bytes != f.bytes || sha != f.sha256 {
                return Err(format!("{} does not match its checksum", f.path));
            }
        }
        let s = std::fs::read_to_string(dir.join(TRAINER_STATE)).map_err(|e| e.to_string())?;
        serde_json::from_str(&s).map_err(|e| format!("{TRAINER_STATE}: {e}"))
    }

    /// The newest complete, intact checkpoint; broken ones are skipped with a warning.
    pub fn latest(&self) -> Result<Option<(PathBuf, TrainerState)>> {
        for (step, complete) in self.list()?.into_iter().rev() {
            if !complete {
                tracing::warn!(checkpoint = %self.step_dir(step).display(), "skipping checkpoint without manifest (incomplete save)");
                continue;
            }
            match self.verify(step) {
                Ok(state) => return Ok(Some((self.step_dir(step), state))),
                Err(e) => {
                    tracing::warn!(checkpoint = %self.step_dir(step).display(), error = %e, "skipping corrupt checkpoint")
                }
            }
        }
        Ok(None)
    }
}

/// Load a checkpoint's weights and optimizer state.
pub fn restore(
    dir: &Path,
    vs: &VarStore,
    model_config: &ModelConfig,
    optimizer: &mut AdamW,
    state: &TrainerState,
) -> Result<()> {
    load_model_dir(dir, vs, model_config).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let opt = Tensor::read_safetensors(dir.join(OPTIMIZER))
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", dir.join(OPTIMIZER).display())))?;
    optimizer.load_state(opt, state.step)
}
