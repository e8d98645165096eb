//! Checkpoints off the step loop (`checkpoint.async`): the loop stops only to copy the
//! state into host buffers (`snapshot`); a thread of its own then hashes, writes and
//! uploads those bytes and publishes the manifest last, exactly as a synchronous save
//! does (same files, same fence checks). One save is in flight at a time: the next one
//! waits for it first, and its outcome (an error above all) is returned then, or by
//! `wait` at the end of the run; a failed save is never dropped silently.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tch::nn::VarStore;

use super::snapshot::{self, HostBuffers, Snapshot};
use super::{CheckpointDir, TrainerState};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::optim::Optimizer;

/// A background save that completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub step: u64,
    /// Where it lives (URL or path).
    pub url: String,
    /// From the start of the snapshot to `latest` naming it.
    pub seconds: f64,
}

struct InFlight {
    step: u64,
    started: Instant,
    /// The step loop's part: the copy into the host buffers.
    snapshot_seconds: f64,
    /// The buffers back, the outcome, and the seconds of the write.
    thread: JoinHandle<(Vec<Vec<u8>>, Result<String>, f64)>,
}

/// Rank 0's background saves of one history.
pub struct Background {
    ckpt: CheckpointDir,
    keep: usize,
    buffers: HostBuffers,
    in_flight: Option<InFlight>,
    /// A save that failed, seen by `poll`: `wait` returns it.
    failed: Option<Error>,
}

/// The same error, saying it came from the background save of `step` (its kind, and so
/// the exit code, unchanged).
fn from_background(step: u64, e: Error) -> Error {
    let say = |m: String| format!("checkpoint of step {step} (written in the background): {m}");
    match e {
        Error::Io { context, source } => Error::io(say(context), source),
        Error::Checkpoint(m) => Error::Checkpoint(say(m)),
        Error::Model(m) => Error::Model(say(m)),
        other => other,
    }
}

impl Background {
    /// Saves into `ckpt`, keeping the newest `keep` (as `CheckpointDir::save`).
    pub fn new(ckpt: &CheckpointDir, keep: usize) -> Self {
        Self {
            ckpt: ckpt.clone(),
            keep,
            buffers: HostBuffers::default(),
            in_flight: None,
            failed: None,
        }
    }

    /// The host buffers (how often they were allocated).
    pub fn buffers(&self) -> &HostBuffers {
        &self.buffers
    }

    /// The step of the save in flight and how long it has run, if any.
    pub fn running(&self) -> Option<(u64, f64)> {
        self.in_flight
            .as_ref()
            .map(|f| (f.step, f.started.elapsed().as_secs_f64()))
    }

    /// The save in flight if it has completed (without waiting for it); a failure is
    /// kept for `wait` to return, where every rank learns of it together.
    pub fn poll(&mut self) -> Option<Finished> {
        if !self.in_flight.as_ref()?.thread.is_finished() {
            return None;
        }
        match self.wait() {
            Ok(done) => done,
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }

    /// Wait for the save in flight, if any: its outcome.
    pub fn wait(&mut self) -> Result<Option<Finished>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let Some(f) = self.in_flight.take() else {
            return Ok(None);
        };
        let (buffers, outcome, written) = f.thread.join().unwrap_or_else(|_| {
            let e = Error::Checkpoint("the checkpoint thread panicked".into());
            (Vec::new(), Err(e), 0.0)
        });
        self.buffers.give_back(buffers);
        let url = outcome.map_err(|e| from_background(f.step, e))?;
        Ok(Some(Finished {
            step: f.step,
            url,
            seconds: f.snapshot_seconds + written,
        }))
    }

    /// Copy the checkpoint of `state.step` into the host buffers and start writing it;
    /// returns once the copy is made (the step loop's stall). A save still in flight is
    /// waited for first, and its error returned instead of starting this one. With a
    /// sharded optimizer the other ranks call `Optimizer::gather_state` meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        vs: &VarStore,
        model_config: &ModelConfig,
        tokenizer_json: &Path,
        optimizer: &Optimizer,
        comm: &mut dyn Collective,
        state: &TrainerState,
    ) -> Result<Option<Finished>> {
        let before = self.wait()?;
        let started = Instant::now();
        let snap = snapshot::take(
            &mut self.buffers,
            vs,
            model_config,
            tokenizer_json,
            optimizer,
            comm,
            state,
        )?;
        let snapshot_seconds = started.elapsed().as_secs_f64();
        let (ckpt, keep, step) = (self.ckpt.clone(), self.keep, snap.step);
        let thread = std::thread::Builder::new()
            .name("janus-checkpoint".into())
            .spawn(move || write(&ckpt, snap, keep))
            .map_err(|e| Error::io("starting the checkpoint thread", e))?;
        self.in_flight = Some(InFlight {
            step,
            started,
            snapshot_seconds,
            thread,
        });
        Ok(before)
    }
}

impl Drop for Background {
    /// A run that ends on another error still completes the checkpoint it started (it is
    /// of an earlier, good step).
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!(error = %e, "background checkpoint failed");
        }
    }
}

/// On the checkpoint thread: write the snapshot's files, publish it, hand its buffers
/// back.
fn write(ckpt: &CheckpointDir, snap: Snapshot, keep: usize) -> (Vec<Vec<u8>>, Result<String>, f64) {
    let started = Instant::now();
    let outcome = write_files(ckpt, &snap, keep);
    let seconds = started.elapsed().as_secs_f64();
    match &outcome {
        Ok(url) => tracing::info!(
            checkpoint = %url,
            step = snap.step,
            seconds,
            background = true,
            "checkpoint saved"
        ),
        Err(e) => tracing::error!(step = snap.step, error = %e, "background checkpoint failed"),
    }
    // Every writer and upload is done with the bytes by now; a buffer still shared
    // (never expected) is left to its holder and allocated again next time.
    let buffers = snap
        .files
        .into_iter()
        .filter(|f| f.pooled)
        .map(|f| Arc::try_unwrap(f.bytes).unwrap_or_default())
        .collect();
    (buffers, outcome, seconds)
}

/// Shares a snapshot file's buffer with the writers (a file's `write`, an upload's
/// parts, the hash thread) without copying it.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn write_files(ckpt: &CheckpointDir, snap: &Snapshot, keep: usize) -> Result<String> {
    let step = ckpt.begin_step(snap.step)?;
    let mut files = Vec::with_capacity(snap.files.len());
    for f in &snap.files {
        #[cfg(test)]
        if ckpt.fail_file.as_deref() == Some(f.path.as_str()) {
            return Err(Error::io(
                format!("{}/{}: upload", step.url(), f.path),
                std::io::Error::other("injected fault"),
            ));
        }
        let mut w = step.writer(&f.path)?;
        w.write_shared(bytes::Bytes::from_owner(Shared(f.bytes.clone())))?;
        files.push((f.path.clone(), w.finish()?));
    }
    ckpt.publish_step(snap.step, files, keep)
}
