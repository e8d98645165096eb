//! The step loop: each step's data from the feed, the objective's step on the cosine
//! schedule, metrics, progress and the pod's progress report, checkpoints every
//! `checkpoint.every_steps` (and at the end), and the ways a run stops early (a stop
//! request on SIGTERM, `--stop-after-steps`); then the final model.

use std::path::Path;
use std::time::Instant;

use super::feed::{Feed, Share};
use super::objective::{Batching, Objective};
use super::publish::publish;
use super::record::{RunOptions, RunRecord, Summary};
use super::step::Trainer;
use super::stop::{self, Decision, Stopper};
use crate::checkpoint::background::{Background, Finished};
use crate::checkpoint::{CheckpointDir, TrainerState};
use crate::config::TrainConfig;
use crate::dist::all_reduce_f64;
use crate::error::{Error, Result};
use crate::metrics::TrainMetrics;
use crate::model::ModelConfig;
use crate::optim::cosine_lr;
use crate::progress::Progress;
use crate::report::Reporter;

/// A run ready for its first step (or the step after its checkpoint).
pub struct RunLoop<'a> {
    pub cfg: &'a TrainConfig,
    pub opts: &'a RunOptions,
    pub ckpt: &'a CheckpointDir,
    pub trainer: Trainer,
    pub feed: Feed<'a>,
    pub objective: Objective,
    pub batching: Batching,
    pub share: Share,
    pub model_config: &'a ModelConfig,
    /// The `tokenizer.json` checkpoints and the final model carry.
    pub tokenizer: &'a Path,
    pub metrics: &'a TrainMetrics,
    pub state: TrainerState,
    pub run: RunRecord,
    /// Rank 0's reports to the operator (in a pod).
    pub reporter: Option<Reporter>,
    /// The fabric check of this run, carried by every report.
    pub fabric: Option<janus_crds::progress::Fabric>,
    /// Rank 0's checkpoints written in the background (`checkpoint.async`).
    pub background: Option<Background>,
}

impl RunLoop<'_> {
    /// Train to the last step (publishing the model from rank 0), to
    /// `--stop-after-steps`, or to a stop request (an error: `Error::Terminated`).
    pub fn run(mut self) -> Result<Summary> {
        let (rank, total_steps) = (self.share.rank, self.state.total_steps);
        let progress = Progress::new(
            self.opts.progress_bar,
            rank == 0,
            total_steps,
            self.state.step,
        );
        let reporter = self.reporter.take();
        self.report(reporter.as_ref());
        let mut stopper = self.stopper();
        let _armed = self.opts.stop.as_ref().map(stop::Armed::new);
        self.metrics.start_at(self.state.step); // metrics
        let started = Instant::now();
        while self.state.step < total_steps {
            self.step(&progress)?;
            let every = self.cfg.checkpoint.every_steps;
            let stop_here = self.opts.stop_after_steps == Some(self.state.step);
            let due = (every > 0 && self.state.step.is_multiple_of(every))
                || self.state.step == total_steps
                || stop_here;
            let mut saved = if due { self.save()? } else { self.poll_saves() };
            // The final checkpoint, and one asked for before stopping, are complete
            // before the run says it is done.
            if due && (stop_here || self.state.step == total_steps) {
                saved = self.finish_saves()?.or(saved);
            }
            if let (Some(s), Some(seconds)) = (&mut stopper, saved) {
                s.saved(seconds);
            }
            if let Some(s) = &mut stopper {
                let in_flight = self.background.as_ref().and_then(Background::running);
                if let Decision::Stop { save: first, why } = s.check(
                    self.trainer.comm.as_mut(),
                    rank,
                    due,
                    in_flight.map(|(_, secs)| secs),
                )? {
                    if first {
                        self.save()?;
                    }
                    // Within the grace period: the save in flight (or just started)
                    // completes, and no rank exits before (the launcher would stop
                    // rank 0); a kill meanwhile leaves the previous one as `latest`.
                    self.finish_saves()?;
                    if self.cfg.checkpoint.asynchronous {
                        self.trainer.comm.barrier()?;
                    }
                    self.report(reporter.as_ref());
                    progress.finish();
                    tracing::warn!(step = self.state.step, checkpoint = ?self.run.last_checkpoint, "{why}");
                    return Err(Error::Terminated(format!(
                        "{why} (step {})",
                        self.state.step
                    )));
                }
            }
            self.report(reporter.as_ref());
            if stop_here && self.state.step < total_steps {
                progress.finish();
                tracing::warn!(
                    step = self.state.step,
                    "stopping early as asked (--stop-after-steps)"
                );
                return Ok(self.summary(None, false));
            }
        }
        drop(_armed);
        progress.finish();
        if rank != 0 {
            return Ok(self.summary(None, true));
        }
        let output = self.cfg.output_dir.to_string_lossy().to_string();
        let s = self.summary(Some(output), true);
        publish(
            self.cfg,
            &self.trainer.vs,
            self.model_config,
            self.tokenizer,
            &s,
        )?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "training finished"
        );
        Ok(s)
    }

    /// One optimizer step on the next data, with its metrics and progress line.
    fn step(&mut self, progress: &Progress) -> Result<()> {
        let h = &self.cfg.hyperparameters;
        let state = &mut self.state;
        let waited = Instant::now(); // metrics
        let data = self.feed.next_step(&mut state.cursor, self.share)?;
        self.metrics.data_wait(waited.elapsed()); // metrics
        let lr = cosine_lr(
            state.step,
            state.total_steps,
            h.warmup_steps_of(state.total_steps),
            h.learning_rate,
            h.min_lr_ratio,
        );
        let t0 = Instant::now();
        let r = self
            .objective
            .step(&mut self.trainer, data, self.batching, lr)?;
        self.run.compute_secs += t0.elapsed().as_secs_f64();
        state.step += 1;
        state.learning_rate = lr;
        state.tokens_seen += r.tokens as u64;
        state.losses.push(r.loss);
        self.run.tokens += r.tokens;
        let tps = self.run.tokens_per_second();
        self.metrics.sequences(r.attention.0, r.attention.1); // metrics
        self.metrics.step(state.step, r.loss, r.grad_norm, lr, tps); // metrics
        self.metrics.drawn(self.feed.counts().drawn()); // metrics
        let mut fields: Vec<(&str, f64)> = vec![
            ("loss", r.loss),
            ("grad_norm", r.grad_norm),
            ("learning_rate", lr),
            ("tokens_per_second", tps),
        ];
        fields.extend(r.metrics.iter().copied());
        progress.step(
            state.step,
            &fields,
            state.step.is_multiple_of(self.cfg.log_every_steps.max(1))
                || state.step == state.total_steps,
        );
        Ok(())
    }

    /// Save the checkpoint of this step, or with `checkpoint.async` start saving it in
    /// the background. The seconds of a save known complete now (this one, or the
    /// background save before it), for the estimate of a save on SIGTERM.
    fn save(&mut self) -> Result<Option<f64>> {
        let held = Instant::now(); // metrics
        let done = if self.cfg.checkpoint.asynchronous {
            self.start_save()?
        } else {
            save_checkpoint(
                self.ckpt,
                &mut self.trainer,
                self.model_config,
                self.tokenizer,
                &self.state,
                self.cfg,
                self.share.rank,
            )?;
            Some(Finished {
                step: self.state.step,
                url: self.ckpt.step_url(self.state.step),
                seconds: held.elapsed().as_secs_f64(),
            })
        };
        // With `checkpoint.async`, only the snapshot (and any wait for the save before).
        self.metrics.checkpoint(held.elapsed()); // metrics
        Ok(self.completed(done))
    }

    /// With `checkpoint.async`: wait for the save in flight (rank 0), agree on every
    /// rank whether it failed (all stop together, before any gather), then copy this
    /// step's state to host memory (the other ranks help gather a sharded optimizer
    /// state) and let rank 0's thread write it.
    fn start_save(&mut self) -> Result<Option<Finished>> {
        let waited = self.background.as_mut().map_or(Ok(None), Background::wait);
        let comm = self.trainer.comm.as_mut();
        let failed = all_reduce_f64(comm, &[f64::from(u8::from(waited.is_err()))])?;
        let before = waited?;
        if failed[0] > 0.0 {
            return Err(Error::Checkpoint(
                "rank 0's background checkpoint failed (its log says why)".into(),
            ));
        }
        let t = Instant::now();
        if let Some(bg) = &mut self.background {
            bg.start(
                &self.trainer.vs,
                self.model_config,
                self.tokenizer,
                &self.trainer.opt,
                self.trainer.comm.as_mut(),
                &self.state,
            )?;
            tracing::info!(
                step = self.state.step,
                seconds = t.elapsed().as_secs_f64(),
                "checkpoint snapshot taken; writing it in the background"
            );
        } else if self.trainer.opt.is_sharded() {
            let opt = &self.trainer.opt;
            opt.gather_state(self.trainer.comm.as_mut(), &mut |_, _| Ok(()))?;
        }
        Ok(before)
    }

    /// The background save in flight, if it has completed: its seconds.
    fn poll_saves(&mut self) -> Option<f64> {
        let done = self.background.as_mut().and_then(Background::poll);
        self.completed(done)
    }

    /// Wait for the background save in flight (rank 0): its seconds; its error fails
    /// the run.
    fn finish_saves(&mut self) -> Result<Option<f64>> {
        let done = self
            .background
            .as_mut()
            .map_or(Ok(None), Background::wait)?;
        Ok(self.completed(done))
    }

    /// A checkpoint is complete: the reports name it from now on.
    fn completed(&mut self, done: Option<Finished>) -> Option<f64> {
        let done = done?;
        self.run.last_checkpoint = Some(done.url);
        Some(done.seconds)
    }

    /// Publish where the run stands for the operator (rank 0 in a pod).
    fn report(&self, reporter: Option<&Reporter>) {
        if let Some(r) = reporter {
            r.report(progress_of(&self.state, &self.run, self.fabric.clone()));
        }
    }

    /// What decides, on a stop request, whether a checkpoint still fits in the grace
    /// period.
    fn stopper(&self) -> Option<Stopper> {
        self.opts.stop.clone().map(|r| {
            let bytes = checkpoint_bytes(&self.trainer);
            let s = Stopper::new(r, bytes);
            if self.share.rank == 0 && !s.fits_grace() {
                tracing::warn!(
                    checkpoint_bytes = bytes,
                    expected_seconds = s.save_seconds(),
                    grace_seconds = ?s.grace().map(|g| g.as_secs()),
                    "a checkpoint on SIGTERM is not expected to fit in the pod's grace period; \
                     raise spec.workers.terminationGracePeriodSeconds"
                );
            }
            s
        })
    }

    fn summary(&self, output_dir: Option<String>, finished: bool) -> Summary {
        Summary::of(
            self.cfg,
            self.feed.counts(),
            &self.state,
            &self.run,
            output_dir,
            finished,
        )
    }
}

/// The report of a run at `state`.
pub fn progress_of(
    state: &TrainerState,
    run: &RunRecord,
    fabric: Option<janus_crds::progress::Fabric>,
) -> janus_crds::Progress {
    janus_crds::Progress {
        step: state.step,
        total_steps: state.total_steps,
        loss: state.losses.last().copied(),
        tokens_per_second: (run.tokens > 0).then(|| run.tokens_per_second()),
        last_checkpoint: run.last_checkpoint.clone(),
        updated_at: crate::report::now_rfc3339(),
        fabric,
    }
}

/// Write the checkpoint of `state.step`: rank 0 writes (the weights are the same
/// everywhere), the others help gather a sharded optimizer state, and all wait, so that
/// no rank runs ahead of a checkpoint that may fail.
fn save_checkpoint(
    ckpt: &CheckpointDir,
    trainer: &mut Trainer,
    model_config: &ModelConfig,
    tokenizer_path: &Path,
    state: &TrainerState,
    cfg: &TrainConfig,
    rank: usize,
) -> Result<()> {
    if rank == 0 {
        let t = Instant::now();
        let dir = ckpt.save(
            &trainer.vs,
            model_config,
            tokenizer_path,
            &trainer.opt,
            trainer.comm.as_mut(),
            state,
            cfg.checkpoint.keep,
        )?;
        tracing::info!(checkpoint = %dir, step = state.step, seconds = t.elapsed().as_secs_f64(), "checkpoint saved");
    } else if trainer.opt.is_sharded() {
        trainer
            .opt
            .gather_state(trainer.comm.as_mut(), &mut |_, _| Ok(()))?;
    }
    trainer.comm.barrier()
}

/// Bytes of one checkpoint: the weights and the optimizer state.
fn checkpoint_bytes(trainer: &Trainer) -> u64 {
    let weights: usize = trainer
        .vs
        .variables()
        .values()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum();
    let state: usize = trainer.opt.state_specs().iter().map(|s| s.bytes()).sum();
    (weights + state) as u64
}
