//! Checkpoints: `<dir>/<job>/step-<N>/` with HF model files, optimizer state, trainer
//! state (step, schedule, data cursor, seed) and `manifest.json`, written last. A step
//! directory without a manifest does not exist. `<dir>/<job>/latest` names the newest
//! complete step. `<dir>/<job>/fence.json` names the newest attempt of the job (the
//! operator's gang restarts): a writer of an older attempt publishes nothing once a
//! newer one has started.
//!
//! A save is either synchronous (`CheckpointDir::save`: the tensors stream to their
//! files while the step loop waits) or in the background (`background`: a copy into
//! reusable host buffers, then the same writes, manifest last, on a thread of its own).
//! The children import from here, never the other way (no import cycle).

pub mod background;
mod snapshot;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
pub const FENCE: &str = "fence.json";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER_STATE: &str = "trainer_state.json";
const TOKENIZER: &str = "tokenizer.json";
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
    /// The attempt that wrote it (`JANUS_ATTEMPT`; absent outside the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// The fence's epoch when it was published (absent: no fence yet). Resume and
    /// pruning order checkpoints by (epoch, step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// [`FENCE`]: the newest writer to claim the history, and how many claims it has seen.
/// The epoch, not the attempt, orders histories: a job created again on the same
/// history (another owner, `resumeFrom`) starts again at attempt 0, after the first
/// owner's attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fence {
    #[serde(flatten)]
    writer: Writer,
    epoch: u64,
}

/// Who writes a history: the job (`checkpoint.owner`) and its attempt. The newest one
/// to start is recorded in [`FENCE`]; older ones may no longer publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Writer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub attempt: u64,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attempt {}", self.attempt)?;
        if let Some(o) = &self.owner {
            write!(f, " of owner {o}")?;
        }
        Ok(())
    }
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
/// A clone is the same history (a background save holds one).
#[derive(Clone)]
pub struct CheckpointDir {
    store: Store,
    /// Set for a run of the operator: saves are fenced by attempt.
    writer: Option<Writer>,
    /// Unique per instance (and removed with its last clone): runs in one process never
    /// share it.
    staging: Arc<tempfile::TempDir>,
    /// Tests only: the background write of this file fails.
    #[cfg(test)]
    fail_file: Option<String>,
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
        Ok(Self {
            store,
            writer: None,
            staging: Arc::new(staging),
            #[cfg(test)]
            fail_file: None,
        })
    }

    /// Saves of this instance are `writer`'s: refused once a newer attempt (or another
    /// owner) has claimed the history, and their manifests record the attempt.
    pub fn fenced(mut self, writer: Option<Writer>) -> Self {
        self.writer = writer;
        self
    }

    /// The fence, if any writer claimed the history.
    fn fence(&self) -> Result<Option<Fence>> {
        if !self.store.exists(FENCE)? {
            return Ok(None);
        }
        let bytes = self.store.get_bytes(FENCE)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Checkpoint(format!("{}/{FENCE}: unreadable: {e}", self.store.url()))
        })
    }

    /// Claim the history for this run's attempt (rank 0, once it knows where it
    /// resumes from): from now on an older attempt of the same job publishes nothing
    /// here. Refused when a newer attempt of the same job has claimed it already: this
    /// run is the stale one (its pod outlived a gang restart). Without a writer (a run
    /// outside the operator) nothing is fenced.
    pub fn claim(&self) -> Result<()> {
        let Some(me) = &self.writer else {
            return Ok(());
        };
        let fence = self.fence()?;
        let epoch = match &fence {
            Some(f) if f.writer.owner == me.owner && f.writer.attempt > me.attempt => {
                return Err(self.fenced_out(&f.writer, "start"));
            }
            // The same writer again (its rank 0 restarted in place): the same epoch.
            Some(f) if f.writer == *me => return Ok(()),
            Some(f) => f.epoch + 1,
            None => 1,
        };
        let fence = Fence {
            writer: me.clone(),
            epoch,
        };
        self.store
            .put_bytes(FENCE, serde_json::to_vec(&fence).expect("fence serializes"))
    }

    /// Refuse to `what` when the fence names another writer than this one: a newer
    /// attempt of the job, or another owner, took the history over. Else the epoch
    /// this write belongs to (an unfenced run writes into the current one).
    fn check_fence(&self, what: &str) -> Result<Option<u64>> {
        let fence = self.fence()?;
        if let (Some(me), Some(f)) = (&self.writer, &fence) {
            if f.writer.owner != me.owner || f.writer.attempt > me.attempt {
                return Err(self.fenced_out(&f.writer, what));
            }
        }
        Ok(fence.map(|f| f.epoch))
    }

    fn fenced_out(&self, theirs: &Writer, what: &str) -> Error {
        let me = self.writer.as_ref().expect("a fenced writer");
        Error::Checkpoint(format!(
            "{}/{FENCE} names {theirs}, newer than this run ({me}): a stale attempt may not {what} \
             here; stopping without writing (its pod outlived a gang restart)",
            self.store.url()
        ))
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
        let step = self.begin_step(state.step)?;
        let started = std::time::Instant::now();
        let mut writer = SafetensorsWriter::new(step.writer(OPTIMIZER)?, optimizer.state_specs())?;
        optimizer.gather_state(comm, &mut |name, t| writer.write(name, t))?;
        let mut files: Vec<(String, Written)> = vec![(OPTIMIZER.into(), writer.finish()?)];
        files.extend(save_model(&step, vs, model_config, MAX_SHARD_BYTES)?);
        let tokenizer =
            std::fs::read(tokenizer_json).ctx(|| tokenizer_json.display().to_string())?;
        let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
        for (f, bytes) in [(TOKENIZER, tokenizer), (TRAINER_STATE, state_json)] {
            let mut w = step.writer(f)?;
            w.write(&bytes)?;
            files.push((f.into(), w.finish()?));
        }
        tracing::debug!(
            written = started.elapsed().as_secs_f64(),
            "checkpoint files written (seconds)"
        );
        self.publish_step(state.step, files, keep)
    }

    /// Start writing the checkpoint of `step`: refused when fenced out, and whatever
    /// an earlier try left of this step is deleted. The store to write its files to.
    fn begin_step(&self, step: u64) -> Result<Store> {
        let name = step_name(step);
        // A stale attempt would delete the newer one's step of this number first.
        self.check_fence(&format!("save step {step}"))?;
        // A leftover of this step (a crash mid-save, or an older run) goes first.
        self.store.delete_prefix(&name)?;
        if let Some(dir) = self.store.local_dir().map(|root| root.join(&name)) {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).ctx(|| dir.display().to_string())?;
            }
        }
        // Every file goes straight to its place (a local file, or an upload whose parts
        // leave while the next bytes are produced), hashed as it is written.
        if self.store.local_dir().is_none() {
            tracing::info!(checkpoint = %self.step_url(step), "uploading checkpoint");
        }
        Ok(self.store.child(&name))
    }

    /// Finish the checkpoint of `step` once its `files` are written: wait for their
    /// uploads, publish the manifest (last, and only while the fence still names this
    /// writer), move `latest`, prune. Returns its URL.
    fn publish_step(
        &self,
        step: u64,
        files: Vec<(String, Written)>,
        keep: usize,
    ) -> Result<String> {
        let name = step_name(step);
        let mut entries = Vec::with_capacity(files.len());
        for (path, w) in files {
            let (bytes, sha256) = w.wait()?;
            entries.push(ManifestEntry {
                path,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            step,
            files: entries,
            attempt: self.writer.as_ref().map(|w| w.attempt),
            // A newer attempt may have started while this one wrote the files.
            epoch: self.check_fence(&format!("publish step {step}"))?,
        };
        self.store.put_bytes(
            &format!("{name}/{MANIFEST}"),
            serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )?;
        self.store
            .put_bytes(LATEST, format!("{name}\n").into_bytes())?;
        // A stale attempt that got its manifest in just before the newer one claimed
        // deletes nothing of the newer one's.
        self.check_fence(&format!("prune after step {step}"))?;
        self.prune(keep, step)?;
        Ok(self.step_url(step))
    }

    /// Delete complete checkpoints beyond the newest `keep` (0 keeps all), and
    /// incomplete ones older than `newest`. Runs only after `newest` is complete.
    fn prune(&self, keep: usize, newest: u64) -> Result<()> {
        let steps = self.list()?;
        let complete = self.newest_last(&steps);
        let old = if keep == 0 {
            0
        } else {
            complete.len().saturating_sub(keep)
        };
        for (_, step) in &complete[..old] {
            self.store.delete_prefix(&step_name(*step))?;
        }
        for (step, is_complete) in steps {
            if !is_complete && step < newest {
                self.store.delete_prefix(&step_name(step))?;
            }
        }
        Ok(())
    }

    /// The complete steps of `steps`, oldest first by (fence epoch, step): the newest
    /// attempt's history comes last even where an older attempt got further (its save
    /// raced the newer attempt's start). A manifest that cannot be read sorts as
    /// written before any fence (`latest` then skips it as corrupt).
    fn newest_last(&self, steps: &[(u64, bool)]) -> Vec<(Option<u64>, u64)> {
        let mut out: Vec<(Option<u64>, u64)> = steps
            .iter()
            .filter(|(_, complete)| *complete)
            .map(|(step, _)| {
                let epoch = self
                    .manifest(&step_name(*step), *step)
                    .ok()
                    .and_then(|m| m.epoch);
                (epoch, *step)
            })
            .collect();
        out.sort();
        out
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
    /// Of several attempts, the newest one's history wins (see `newest_last`).
    pub fn latest(&self) -> Result<Option<(PathBuf, TrainerState)>> {
        let _threads = OneTorchThread::new();
        let steps = self.list()?;
        let newest = steps.iter().filter(|(_, c)| *c).map(|(s, _)| *s).max();
        for (step, _) in steps.iter().filter(|(s, c)| !c && Some(*s) > newest) {
            tracing::warn!(checkpoint = %self.step_url(*step), "skipping checkpoint without manifest (incomplete save)");
        }
        for (_, step) in self.newest_last(&steps).into_iter().rev() {
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

/// What the tests of both kinds of save share: a small model's run and its states.
#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::optim::AdamWConfig;
    use crate::train::Trainer;

    pub struct Run {
        pub trainer: Trainer,
        pub config: ModelConfig,
        pub tokenizer: PathBuf,
    }

    pub fn run(dir: &Path) -> Run {
        let config = ModelConfig::small("mistral", 64, 16, 32, 1, 2, 1);
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let trainer = Trainer::new(&config, tch::Kind::Float, tch::Device::Cpu, adam, 1.0);
        let tokenizer = dir.join("tokenizer.json");
        std::fs::write(&tokenizer, b"{}").unwrap();
        Run {
            trainer,
            config,
            tokenizer,
        }
    }

    pub fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            total_steps: 100,
            cursor: DataCursor {
                epoch: 0,
                position: step as usize,
                seed: 0,
            },
            learning_rate: 0.0,
            config_hash: "h".into(),
            tokenizer: "t".into(),
            world_size: 1,
            global_batch: None,
            tokens_seen: 0,
            losses: vec![],
            owner: Some("uid-a".into()),
        }
    }

    pub fn attempt(dir: &Path, n: u64) -> CheckpointDir {
        CheckpointDir::new(&dir.display().to_string(), "job", Duration::from_secs(5))
            .unwrap()
            .fenced(Some(Writer {
                owner: Some("uid-a".into()),
                attempt: n,
            }))
    }

    pub fn save(c: &CheckpointDir, r: &mut Run, step: u64) -> Result<String> {
        c.save(
            &r.trainer.vs,
            &r.config,
            &r.tokenizer,
            &r.trainer.opt,
            r.trainer.comm.as_mut(),
            &state(step),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn an_old_attempt_still_running_beside_a_new_one_cannot_overwrite_its_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let ckpt = tmp.path().join("ckpt");
        let old = attempt(&ckpt, 1);
        old.claim().unwrap();
        save(&old, &mut r, 10).unwrap();

        // Attempt 2 starts (the gang restarted; attempt 1's pods still run on a node
        // whose kubelet reports NotReady) and saves step 12.
        let new = attempt(&ckpt, 2);
        new.claim().unwrap();
        save(&new, &mut r, 12).unwrap();
        let manifest = |step: u64| -> Manifest {
            let m = std::fs::read(ckpt.join(format!("job/step-{step}/{MANIFEST}"))).unwrap();
            serde_json::from_slice(&m).unwrap()
        };
        assert_eq!(manifest(12).attempt, Some(2));
        assert_eq!((manifest(10).epoch, manifest(12).epoch), (Some(1), Some(2)));
        let before = std::fs::read(ckpt.join("job/step-12/optimizer.safetensors")).unwrap();

        // The old attempt neither writes a step of its own nor one of the new
        // attempt's numbers (a save deletes a leftover of its step first), nor moves
        // `latest`.
        for step in [20, 12] {
            let e = save(&old, &mut r, step).unwrap_err().to_string();
            assert!(
                e.contains("attempt 2 of owner uid-a")
                    && e.contains("attempt 1 of owner uid-a")
                    && e.contains(FENCE)
                    && e.contains(&format!("save step {step}")),
                "{e}"
            );
        }
        assert!(!ckpt.join("job/step-20").exists());
        assert_eq!(
            std::fs::read(ckpt.join("job/step-12/optimizer.safetensors")).unwrap(),
            before
        );
        assert_eq!(
            std::fs::read_to_string(ckpt.join(format!("job/{LATEST}"))).unwrap(),
            "step-12\n"
        );
        // Nor can it start again over the new attempt's history.
        let e = attempt(&ckpt, 1).claim().unwrap_err().to_string();
        assert!(e.contains("may not start"), "{e}");
        // The new attempt goes on.
        save(&new, &mut r, 14).unwrap();
        assert_eq!(new.latest().unwrap().unwrap().1.step, 14);
    }

    #[test]
    fn resume_takes_the_newest_attempts_history_even_where_an_older_one_got_further() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let ckpt = tmp.path().join("ckpt");
        let old = attempt(&ckpt, 1);
        old.claim().unwrap();
        save(&old, &mut r, 10).unwrap();
        save(&old, &mut r, 20).unwrap();
        // Attempt 2 resumed from step 10 (step 20's save of attempt 1 raced its start)
        // and saved step 15.
        let new = attempt(&ckpt, 2);
        new.claim().unwrap();
        save(&new, &mut r, 15).unwrap();
        let (_, found) = attempt(&ckpt, 3).latest().unwrap().unwrap();
        assert_eq!(found.step, 15);
    }

    #[test]
    fn another_owner_taking_the_history_over_fences_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let ckpt = tmp.path().join("ckpt");
        let a = attempt(&ckpt, 3);
        a.claim().unwrap();
        save(&a, &mut r, 10).unwrap();
        // A job of the same name created again (resumeFrom this history): attempt 0 of
        // another owner claims it; the first job's pod may no longer publish.
        let b = CheckpointDir::new(&ckpt.display().to_string(), "job", Duration::from_secs(5))
            .unwrap()
            .fenced(Some(Writer {
                owner: Some("uid-b".into()),
                attempt: 0,
            }));
        b.claim().unwrap();
        save(&b, &mut r, 8).unwrap();
        let e = save(&a, &mut r, 14).unwrap_err().to_string();
        assert!(e.contains("attempt 0 of owner uid-b"), "{e}");
        // The second owner's history is the newer one although its attempt number is
        // lower and the first owner's step is higher: resume takes its step 8.
        assert_eq!(b.latest().unwrap().unwrap().1.step, 8);
        // Runs outside the operator are not fenced, and write into the current epoch.
        let local =
            CheckpointDir::new(&ckpt.display().to_string(), "job", Duration::from_secs(5)).unwrap();
        local.claim().unwrap();
        save(&local, &mut r, 16).unwrap();
        assert_eq!(b.latest().unwrap().unwrap().1.step, 16);
    }
}

#[cfg(test)]
mod background_tests {
    use super::background::{Background, Finished};
    use super::tests_support::*;
    use super::*;

    fn start(bg: &mut Background, r: &mut Run, step: u64) -> Result<Option<Finished>> {
        bg.start(
            &r.trainer.vs,
            &r.config,
            &r.tokenizer,
            &r.trainer.opt,
            r.trainer.comm.as_mut(),
            &state(step),
        )
    }

    /// Every file below `dir`, relative path and bytes, sorted.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, std::fs::read(&e).unwrap()));
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    fn zero_weights(r: &Run) {
        tch::no_grad(|| {
            for (_, mut t) in r.trainer.vs.variables() {
                let _ = t.zero_();
            }
        });
    }

    #[test]
    fn a_background_save_writes_the_files_a_save_of_the_same_state_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let sync = attempt(&tmp.path().join("sync"), 1);
        sync.claim().unwrap();
        save(&sync, &mut r, 10).unwrap();

        let background = attempt(&tmp.path().join("async"), 1);
        background.claim().unwrap();
        let mut bg = Background::new(&background, 0);
        assert_eq!(start(&mut bg, &mut r, 10).unwrap(), None);
        // The step loop goes on at once and changes the weights in place: the save
        // writes the state of its step, copied before.
        zero_weights(&r);
        let done = bg.wait().unwrap().expect("a save was in flight");
        assert_eq!(done.step, 10);
        assert_eq!(done.url, background.step_url(10));
        let (a, b) = (
            files(&tmp.path().join("sync/job")),
            files(&tmp.path().join("async/job")),
        );
        assert_eq!(
            a.iter().map(|f| &f.0).collect::<Vec<_>>(),
            b.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                x == y,
                "{name} differs between the save and the background save"
            );
        }
        // Later saves reuse the host buffers (one per tensor file: the optimizer
        // state and the weights) and resume from the newest.
        let allocated = bg.buffers().allocations();
        assert_eq!(allocated, 2);
        for step in [12, 14] {
            start(&mut bg, &mut r, step).unwrap();
        }
        assert_eq!(bg.wait().unwrap().unwrap().step, 14);
        assert_eq!(bg.buffers().allocations(), allocated);
        assert_eq!(background.latest().unwrap().unwrap().1.step, 14);
    }

    #[test]
    fn a_failed_background_save_fails_the_next_save_and_the_end_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let ckpt = tmp.path().join("ckpt");
        let good = attempt(&ckpt, 1);
        good.claim().unwrap();
        save(&good, &mut r, 8).unwrap();
        let mut failing = attempt(&ckpt, 1);
        failing.fail_file = Some("model.safetensors".into());
        let mut bg = Background::new(&failing, 0);
        start(&mut bg, &mut r, 10).unwrap();
        // The next save returns the error instead of starting.
        let e = start(&mut bg, &mut r, 12).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("step-10/model.safetensors")
                && text.contains("injected fault")
                && text.contains("checkpoint of step 10 (written in the background)"),
            "{text}"
        );
        assert_eq!(e.exit_code(), janus_crds::exit_code::RETRYABLE);
        assert!(
            bg.running().is_none(),
            "step 12 was started after a failure"
        );
        assert_eq!(
            std::fs::read_to_string(ckpt.join(format!("job/{LATEST}"))).unwrap(),
            "step-8\n"
        );
        // At the end of a run: the wait for the last save returns it (also when a
        // poll saw it first).
        start(&mut bg, &mut r, 14).unwrap();
        while bg.running().is_some() && bg.poll().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = bg.wait().unwrap_err().to_string();
        assert!(e.contains("step-14/model.safetensors"), "{e}");
        assert_eq!(good.latest().unwrap().unwrap().1.step, 8);
    }

    #[test]
    fn a_background_save_of_a_fenced_out_attempt_publishes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = run(tmp.path());
        let ckpt = tmp.path().join("ckpt");
        let old = attempt(&ckpt, 1);
        old.claim().unwrap();
        save(&old, &mut r, 10).unwrap();
        let mut bg = Background::new(&old, 0);
        attempt(&ckpt, 2).claim().unwrap();
        start(&mut bg, &mut r, 12).unwrap();
        let e = bg.wait().unwrap_err().to_string();
        assert!(
            e.contains("attempt 2 of owner uid-a") && e.contains("may not save step 12"),
            "{e}"
        );
        assert!(!ckpt.join("job/step-12").exists());
    }
}
