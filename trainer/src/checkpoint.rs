//! Checkpoints: `<dir>/<job>/step-<N>/` with HF model files, optimizer state, trainer
//! state (step, schedule, data cursor, seed) and `manifest.json`, written last. A step
//! directory without a manifest does not exist. `<dir>/<job>/latest` names the newest
//! complete step.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;

use crate::dist::Collective;
use crate::error::{Error, IoContext, Result};
use crate::model::{load_model_dir, save_model, ModelConfig, SafetensorsFile, SafetensorsWriter};
use crate::optim::Optimizer;
use crate::storage::{Store, Written};

pub const MANIFEST: &str = "manifest.json";
pub const LATEST: &str = "latest";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER_STATE: &str = "trainer_state.json";
/// v2 adds fp32 master weights to the optimizer state (`master.<name>`) and the
/// global batch to the trainer state; v1 checkpoints still load.
const FORMAT: &str = "janus-checkpoint/v2";
const READABLE_FORMATS: &[&str] = &["janus-checkpoint/v1", FORMAT];
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
    /// Units (examples, packed rows or pairs) per optimizer step over all ranks:
    /// `micro_batch_size x gradient_accumulation_steps x world_size`. A resume on
    /// another number of ranks keeps it (absent in v1 checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    pub tokens_seen: u64,
    /// Loss of every completed step, so a resumed run reports the whole curve.
    pub losses: Vec<f64>,
    /// `checkpoint.owner` of the run that wrote it (the job's UID under the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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

/// Checkpoints of one job in any store: files are written in place or streamed to
/// object storage (multipart, parts in parallel, no staging copy) and hashed as they
/// are written; then the manifest, then `latest`. Resuming downloads a complete
/// checkpoint to a local cache in parallel ranges, hashing as it arrives, and checks it.
pub struct CheckpointDir {
    store: Store,
    /// Unique per instance (and removed with it): runs in one process never share it.
    staging: tempfile::TempDir,
}

/// libtorch on one thread while a checkpoint moves bytes: its copies are bound by
/// memory, and an idle OpenMP worker spins on the core that the hash thread and the
/// I/O runtime need (a third of the CPU time of a save or load on 2 cores otherwise).
struct OneTorchThread(i32);

impl OneTorchThread {
    fn new() -> Self {
        let n = tch::get_num_threads();
        tch::set_num_threads(1);
        Self(n)
    }
}

impl Drop for OneTorchThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

fn step_name(step: u64) -> String {
    format!("step-{step}")
}

impl CheckpointDir {
    /// `dir` is a URL or a path; checkpoints go below `<dir>/<job>/`.
    pub fn new(dir: &str, job: &str, retry_timeout: Duration) -> Result<Self> {
        let store = Store::open(dir, retry_timeout)?.child(job);
        let staging = staging_dir(&format!("janus-{job}-"))?;
        Ok(Self { store, staging })
    }

    /// The checkpoint history at `url` (`<dir>/<job>`, as `url()` names it).
    pub fn at(url: &str, retry_timeout: Duration) -> Result<Self> {
        let url = url.trim_end_matches('/');
        match url.rsplit_once('/') {
            Some((dir, job)) if !job.is_empty() && !dir.ends_with(':') && !dir.ends_with("//") => {
                Self::new(dir, job, retry_timeout)
            }
            _ => Err(Error::Config(format!(
                "{url}: not a checkpoint history (expected <dir>/<job>, e.g. s3://bucket/checkpoints/team/job)"
            ))),
        }
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Where the checkpoint of `step` lives (URL or path).
    pub fn step_url(&self, step: u64) -> String {
        format!("{}/{}", self.store.url(), step_name(step))
    }

    /// A file of the job beside its checkpoints (e.g. precomputed reference
    /// log-probabilities); `None` when absent.
    pub fn get_extra(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if !self.store.exists(name)? {
            return Ok(None);
        }
        self.store.get_bytes(name).map(Some)
    }

    pub fn put_extra(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store.put_bytes(name, bytes)
    }

    /// Fail early when the store cannot be reached or read.
    pub fn check_access(&self) -> Result<()> {
        self.store.check_access()
    }

    /// Save a complete checkpoint; returns its URL. Called by rank 0; when the
    /// optimizer is sharded the other ranks call `Optimizer::gather_state` at the same
    /// time (the state is gathered first, before any other work).
    #[allow(clippy::too_many_arguments)]
    pub fn save(
        &self,
        vs: &VarStore,
        model_config: &ModelConfig,
        tokenizer_json: &Path,
        optimizer: &Optimizer,
        comm: &mut dyn Collective,
        state: &TrainerState,
        keep: usize,
    ) -> Result<String> {
        let _threads = OneTorchThread::new();
        let name = step_name(state.step);
        // A leftover of this step (a crash mid-save, or an older run) goes first.
        self.store.delete_prefix(&name)?;
        if let Some(dir) = self.store.local_dir().map(|root| root.join(&name)) {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).ctx(|| dir.display().to_string())?;
            }
        }
        // Every file goes straight to its place (a local file, or an upload whose parts
        // leave while the next bytes are produced), hashed as it is written.
        let step = self.store.child(&name);
        if self.store.local_dir().is_none() {
            tracing::info!(checkpoint = %self.step_url(state.step), "uploading checkpoint");
        }
        let started = std::time::Instant::now();
        let mut writer = SafetensorsWriter::new(step.writer(OPTIMIZER)?, optimizer.state_specs())?;
        optimizer.gather_state(comm, &mut |name, t| writer.write(name, t))?;
        let mut files: Vec<(String, Written)> = vec![(OPTIMIZER.into(), writer.finish()?)];
        files.extend(save_model(&step, vs, model_config, MAX_SHARD_BYTES)?);
        let tokenizer =
            std::fs::read(tokenizer_json).ctx(|| tokenizer_json.display().to_string())?;
        let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
        for (f, bytes) in [("tokenizer.json", tokenizer), (TRAINER_STATE, state_json)] {
            let mut w = step.writer(f)?;
            w.write(&bytes)?;
            files.push((f.into(), w.finish()?));
        }
        let written = started.elapsed().as_secs_f64();
        let mut entries = Vec::with_capacity(files.len());
        for (path, w) in files {
            let (bytes, sha256) = w.wait()?;
            entries.push(ManifestEntry {
                path,
                bytes,
                sha256,
            });
        }
        tracing::debug!(
            written,
            uploaded = started.elapsed().as_secs_f64(),
            "checkpoint phases (cumulative seconds)"
        );
        let manifest = Manifest {
            format: FORMAT.into(),
            step: state.step,
            files: entries,
        };
        self.store.put_bytes(
            &format!("{name}/{MANIFEST}"),
            serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )?;
        self.store
            .put_bytes(LATEST, format!("{name}\n").into_bytes())?;
        self.prune(keep, state.step)?;
        Ok(self.step_url(state.step))
    }

    /// Delete complete checkpoints beyond the newest `keep` (0 keeps all), and
    /// incomplete ones older than `newest`. Runs only after `newest` is complete.
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
                self.store.delete_prefix(&step_name(step))?;
            }
        }
        Ok(())
    }

    /// Step numbers present, ascending, with whether a manifest exists.
    fn list(&self) -> Result<Vec<(u64, bool)>> {
        let mut out = Vec::new();
        for name in self.store.list_dirs("")? {
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.push((step, self.store.exists(&format!("{name}/{MANIFEST}"))?));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Download a step and check it against its manifest; returns the local copy.
    /// The checkpoint of `step`, checked; `Ok(Err(why))` for one that is corrupt or
    /// incomplete (an older one may do), `Err` for what no older one would change (no
    /// room in the scratch space to download it).
    fn fetch(&self, step: u64) -> Result<std::result::Result<(PathBuf, TrainerState), String>> {
        let name = step_name(step);
        let m = match self.manifest(&name, step) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why)),
        };
        if self.store.local_dir().is_none() {
            crate::scratch::ensure_room_per_rank(
                self.staging.path(),
                m.files.iter().map(|f| f.bytes).sum(),
                &format!("downloading checkpoint {}", self.step_url(step)),
            )?;
        }
        let fetched = self.fetch_files(&name, m);
        if fetched.is_err() && self.store.local_dir().is_none() {
            // A corrupt download would count against the scratch room of the older one.
            let _ = std::fs::remove_dir_all(self.staging.path().join("restore").join(&name));
        }
        Ok(fetched)
    }

    fn manifest(&self, name: &str, step: u64) -> std::result::Result<Manifest, String> {
        let text = self
            .store
            .get_bytes(&format!("{name}/{MANIFEST}"))
            .map_err(|e| format!("no manifest: {e}"))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| format!("unreadable manifest: {e}"))?;
        if !READABLE_FORMATS.contains(&m.format.as_str()) || m.step != step {
            return Err(format!("manifest says format {} step {}", m.format, m.step));
        }
        Ok(m)
    }

    /// Download (when remote) and check every file of checkpoint `name`.
    fn fetch_files(
        &self,
        name: &str,
        m: Manifest,
    ) -> std::result::Result<(PathBuf, TrainerState), String> {
        // Local checkpoints are checked where they are; remote ones are downloaded in
        // ranges and hashed as they arrive. Files in parallel.
        let in_place = self.store.local_dir().map(|root| root.join(name));
        let local = in_place
            .clone()
            .unwrap_or_else(|| self.staging.path().join("restore").join(name));
        std::thread::scope(|scope| {
            let checks: Vec<_> = m
                .files
                .iter()
                .map(|f| {
                    let dst = local.join(&f.path);
                    let remote = format!("{name}/{}", f.path);
                    let in_place = in_place.is_some();
                    scope.spawn(move || {
                        let (bytes, sha) = if in_place {
                            sha256_file(&dst)
                        } else {
                            self.store.get_file_hashed(&remote, &dst)
                        }
                        .map_err(|e| e.to_string())?;
                        if bytes != f.bytes || sha != f.sha256 {
                            return Err(format!("{} does not match its checksum", f.path));
                        }
                        Ok(())
                    })
                })
                .collect();
            checks
                .into_iter()
                .try_for_each(|h| h.join().expect("checksum thread"))
        })?;
        let s = std::fs::read_to_string(local.join(TRAINER_STATE)).map_err(|e| e.to_string())?;
        let state = serde_json::from_str(&s).map_err(|e| format!("{TRAINER_STATE}: {e}"))?;
        Ok((local, state))
    }

    /// The newest complete, intact checkpoint (downloaded to a local directory);
    /// incomplete or corrupt ones are skipped with a warning naming them.
    pub fn latest(&self) -> Result<Option<(PathBuf, TrainerState)>> {
        let _threads = OneTorchThread::new();
        for (step, complete) in self.list()?.into_iter().rev() {
            if !complete {
                tracing::warn!(checkpoint = %self.step_url(step), "skipping checkpoint without manifest (incomplete save)");
                continue;
            }
            match self.fetch(step)? {
                Ok(found) => return Ok(Some(found)),
                Err(e) => {
                    tracing::warn!(checkpoint = %self.step_url(step), error = %e, "skipping corrupt checkpoint")
                }
            }
        }
        Ok(None)
    }
}

/// A fresh local scratch directory under `JANUS_STAGING_DIR` (default: the system
/// temp dir), removed when dropped.
pub fn staging_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = crate::scratch::staging_base();
    std::fs::create_dir_all(&base).ctx(|| base.display().to_string())?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .ctx(|| base.display().to_string())
}

/// Load a checkpoint's weights and this rank's part of the optimizer state.
pub fn restore(
    dir: &Path,
    vs: &VarStore,
    model_config: &ModelConfig,
    optimizer: &mut Optimizer,
    state: &TrainerState,
) -> Result<()> {
    let _threads = OneTorchThread::new();
    load_model_dir(dir, vs, model_config).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let file = SafetensorsFile::open(&dir.join(OPTIMIZER))?;
    optimizer.load_state(&file, state.step)
}
