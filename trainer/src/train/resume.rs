//! Where a run starts: this job's newest complete checkpoint (or the newest of the
//! history `checkpoint.resume_from` names), the accumulation that keeps its global
//! batch on this run's ranks, and the trainer restored from it; else the model's own
//! weights and a fresh state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::feed::{Feed, Share};
use super::record::RunRecord;
use super::step::Trainer;
use crate::checkpoint::{restore, CheckpointDir, DataCursor, TrainerState};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::{load_model_dir, load_reward_init, ModelConfig};

/// The checkpoint a run continues from.
pub struct ResumePoint {
    /// Its files, staged locally.
    pub dir: PathBuf,
    pub state: TrainerState,
    pub url: String,
    /// The history it came from when not this job's own (`checkpoint.resume_from`);
    /// it owns the staged files.
    pub from: Option<CheckpointDir>,
}

/// This job's newest complete checkpoint, else the newest of the history
/// `checkpoint.resume_from` names. A checkpoint of this job's history written by
/// another owner (a job of the same name deleted and created again, or two jobs on one
/// URL) is refused naming both, unless `resume_from` names this history.
pub fn find(
    cfg: &TrainConfig,
    ckpt: &CheckpointDir,
    retry: Duration,
) -> Result<Option<ResumePoint>> {
    let c = &cfg.checkpoint;
    if !c.resume {
        return Ok(None);
    }
    let same_history = |url: &str| url.trim_end_matches('/') == ckpt.url().trim_end_matches('/');
    if let Some((dir, state)) = ckpt.latest()? {
        let url = ckpt.step_url(state.step);
        if let (Some(theirs), Some(ours)) = (&state.owner, &c.owner) {
            if theirs != ours && !c.resume_from.as_deref().is_some_and(same_history) {
                return Err(Error::Config(format!(
                    "{url} was written by another owner ({theirs}), this job is {ours}: two jobs would share one \
                     checkpoint history. To continue from it set checkpoint.resumeFrom: {} \
                     (checkpoint.resume_from), else use another job name or checkpoint URL",
                    ckpt.url()
                )));
            }
        }
        return Ok(Some(ResumePoint {
            dir,
            state,
            url,
            from: None,
        }));
    }
    let Some(from) = c.resume_from.as_deref().filter(|u| !same_history(u)) else {
        return Ok(None);
    };
    let other = CheckpointDir::at(from, retry)?;
    let Some((dir, state)) = other.latest()? else {
        return Err(Error::Config(format!(
            "checkpoint.resume_from: {from} holds no complete checkpoint"
        )));
    };
    tracing::info!(from = %other.url(), step = state.step, "continuing another job's checkpoint history");
    Ok(Some(ResumePoint {
        dir,
        url: other.step_url(state.step),
        state,
        from: Some(other),
    }))
}

/// Micro-batches per rank per step. A fresh run takes the config's; a resumed one
/// keeps the checkpoint's global batch, so on another number of ranks the
/// accumulation follows the rank count (and the step boundaries, the data order and
/// the schedule stay those of the run that wrote it).
pub fn accumulation_steps(
    cfg: &TrainConfig,
    world: usize,
    saved: Option<&ResumePoint>,
) -> Result<usize> {
    let h = &cfg.hyperparameters;
    let Some(ResumePoint { state: s, url, .. }) = saved else {
        return Ok(h.gradient_accumulation_steps);
    };
    let ours = h.micro_batch_size * h.gradient_accumulation_steps * world;
    match s.global_batch {
        None if s.world_size != world => Err(Error::Config(format!(
            "{url} was written by {} ranks, this run has {world}, and it predates recorded global batches: \
             resume with {} ranks, or start a new job from its model files",
            s.world_size, s.world_size
        ))),
        None => Ok(h.gradient_accumulation_steps),
        Some(g) if s.world_size == world && g != ours => Err(Error::Config(format!(
            "{url} was written with a global batch of {g} (micro batch x accumulation x {world} ranks), \
             this config makes {ours}: use a new job name or checkpoint.resume=false"
        ))),
        Some(_) if s.world_size == world => Ok(h.gradient_accumulation_steps),
        Some(g) => {
            let per = h.micro_batch_size * world;
            if g % per != 0 {
                return Err(Error::Config(format!(
                    "{url} was written by {} ranks with a global batch of {g}; {world} ranks x micro batch {} = {per} \
                     does not divide it, so no accumulation keeps the step boundaries: pick a rank count or \
                     hyperparameters.micro_batch_size whose product divides {g}",
                    s.world_size, h.micro_batch_size
                )));
            }
            tracing::info!(
                checkpoint = %url,
                from_ranks = s.world_size,
                to_ranks = world,
                global_batch = g,
                gradient_accumulation_steps = g / per,
                "resuming on another number of ranks: the accumulation follows the rank count"
            );
            Ok(g / per)
        }
    }
}

/// A streamed dataset deals its blocks to the ranks, so its order depends on their
/// number: a resume of one keeps the rank count of the run that wrote the checkpoint.
pub fn check_streamed_world(saved: Option<&ResumePoint>, feed: &Feed, world: usize) -> Result<()> {
    if let (
        Some(ResumePoint {
            state: saved, url, ..
        }),
        Feed::Stream(_),
    ) = (saved, feed)
    {
        if saved.world_size != world {
            return Err(Error::Config(format!(
                "{url} was written by {} ranks, this run has {world}: a streamed dataset deals its blocks to the ranks, \
                 so the data order depends on their number; resume with {} ranks",
                saved.world_size,
                saved.world_size
            )));
        }
    }
    Ok(())
}

/// The state of a run that starts at step 0 on this run's ranks.
pub fn fresh_state(
    cfg: &TrainConfig,
    total_steps: u64,
    config_hash: String,
    tokenizer: &str,
    share: Share,
) -> TrainerState {
    TrainerState {
        step: 0,
        total_steps,
        cursor: DataCursor {
            epoch: 0,
            position: 0,
            seed: cfg.hyperparameters.seed,
        },
        learning_rate: 0.0,
        config_hash,
        tokenizer: tokenizer.to_string(),
        world_size: share.world,
        global_batch: Some(share.per_step()),
        tokens_seen: 0,
        losses: vec![],
        owner: cfg.checkpoint.owner.clone(),
    }
}

/// Restore `resume` into `trainer` and continue its state (this run's ranks, global
/// batch and owner from `fresh`), or load the model at `model_path` (a reward model
/// from a causal LM gets a new value head) and start from `fresh`. Every rank ends
/// with rank 0's weights.
pub fn resume_or_init(
    cfg: &TrainConfig,
    resume: Option<ResumePoint>,
    fresh: TrainerState,
    trainer: &mut Trainer,
    model_path: &Path,
    model_config: &ModelConfig,
    base_config: &ModelConfig,
) -> Result<(TrainerState, RunRecord)> {
    let mut run = RunRecord::default();
    let Some(ResumePoint {
        dir,
        state: saved,
        url,
        from: _from,
    }) = resume
    else {
        if model_config.is_sequence_classifier() && !base_config.is_sequence_classifier() {
            load_reward_init(
                model_path,
                &trainer.vs,
                model_config,
                cfg.hyperparameters.seed,
            )?;
        } else {
            load_model_dir(model_path, &trainer.vs, model_config)?;
        }
        trainer.broadcast_weights()?;
        trainer.opt.sync_master_from_params();
        return Ok((fresh, run));
    };
    if saved.config_hash != fresh.config_hash
        || saved.tokenizer != fresh.tokenizer
        || saved.total_steps != fresh.total_steps
    {
        // Retrying cannot help: the job's config no longer matches its history.
        return Err(Error::Config(format!(
            "{} was written by a run with a different config, tokenizer or data size (config {} vs {}, total steps {} vs {}); \
             use a new job name or checkpoint.resume=false",
            url, saved.config_hash, fresh.config_hash, saved.total_steps, fresh.total_steps
        )));
    }
    restore(&dir, &trainer.vs, model_config, &mut trainer.opt, &saved)?;
    tracing::info!(checkpoint = %url, step = saved.step, "resumed");
    run.resumed_from = Some(saved.step);
    let state = TrainerState {
        world_size: fresh.world_size,
        global_batch: fresh.global_batch,
        // A history taken over (`resume_from`) continues as this job's own.
        owner: fresh.owner,
        ..saved
    };
    run.last_checkpoint = Some(url);
    // Every rank loaded the same files; broadcasting makes identity a guarantee.
    trainer.broadcast_weights()?;
    Ok((state, run))
}
