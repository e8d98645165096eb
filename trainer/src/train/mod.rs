//! The training loop: data units in a seeded per-epoch order, gradient accumulation,
//! clipping, AdamW on the cosine schedule, checkpoints and exact resume.
//!
//! A run goes through its phases in order ([`run`]): fetch the model (`model_dir`),
//! open the data (`feed`), join the world (`world`), resume or initialise (`resume`),
//! choose the objective (`objective`, with DPO's `reference`), then the step loop
//! (`run_loop`, one optimizer step in `step`) and the final model (`publish`).

use std::sync::Arc;
use std::time::Duration;

mod backprop;
mod feed;
mod head;
mod objective;
mod publish;
mod record;
pub mod reference;
mod resume;
mod run_loop;
mod step;
mod stop;
mod world;
pub use crate::loss::LOSS_CHUNK_TOKENS;
pub use backprop::{BodyPass, Stage};
pub use feed::{epoch_order, Counts, Feed, Mixture, Share, SourceCounts, StepData};
pub use head::{rewards, sequence_logps};
pub use objective::{Batching, Objective};
pub use record::{RunOptions, Summary};
pub use step::{PhaseTimes, StepResult, Trainer, DEFAULT_BUCKET_BYTES};
pub use stop::{Decision, StopRequest, Stopper};

use crate::checkpoint::background::Background;
use crate::checkpoint::{CheckpointDir, Writer};
use crate::config::{Method, ReduceDtype, TrainConfig};
use crate::dist::fabric;
use crate::error::Result;
use crate::metrics::{Labels, TrainMetrics};
use crate::model::ModelConfig;
use crate::model_dir::ModelDir;
use crate::optim::AdamWConfig;
use crate::report::Reporter;
use janus_crds::progress::Fabric;
use run_loop::RunLoop;

/// Run a training job to completion (or to `stop_after_steps`).
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    let h = &cfg.hyperparameters;
    let (rank, world, local_rank) = opts
        .world
        .as_ref()
        .map(|w| (w.rank, w.world_size, w.local_rank))
        .unwrap_or((0, 1, 0));
    let device = crate::device::select(cfg.model.device, local_rank)?;
    tch::manual_seed(h.seed as i64);
    let retry = Duration::from_secs(cfg.checkpoint.retry_timeout_seconds);
    let ckpt = open_checkpoints(cfg, opts, retry)?;
    // The model (or tokenizer) given by URL is downloaded once; the copy lives as long
    // as the run (checkpoints and the published model copy its tokenizer).
    let tokenizer = cfg.model.tokenizer.as_ref().map(|t| t.to_string_lossy());
    let files = ModelDir::fetch(
        &cfg.model.path.to_string_lossy(),
        tokenizer.as_deref(),
        retry,
    )?;
    let (base_config, tok) = files.open()?;
    let model_config = Objective::model_config(cfg.method, &base_config, tok.reward_pad_id());
    // The checkpoint to resume from comes first: its global batch decides how many
    // micro-batches each of this run's ranks accumulates.
    let resume = resume::find(cfg, &ckpt, retry)?;
    // Claimed once the history is known to be this job's (find refuses another
    // owner's), so a refused run leaves the other owner's fence alone.
    if rank == 0 {
        ckpt.claim()?;
    }
    let accumulation = resume::accumulation_steps(cfg, world, resume.as_ref())?;
    // Each rank takes `per_rank` units of every step.
    let share = Share {
        rank,
        world,
        per_rank: h.micro_batch_size * accumulation,
    };
    let feed = Feed::open(cfg, &tok, share)?;
    resume::check_streamed_world(resume.as_ref(), &feed, world)?;
    let total_steps = feed.total_steps(h, share);
    crate::plan::check_before_training(cfg, &model_config, world, accumulation, device)?;
    let mut trainer = new_trainer(cfg, &model_config, device);
    log_attention_kernel(cfg, &model_config, device);
    let metrics = train_metrics(
        cfg,
        (rank, world, local_rank),
        &model_config,
        &trainer,
        device,
    );
    let config_hash = cfg.trajectory_hash();
    world::join(
        cfg,
        opts.world.as_ref(),
        &mut trainer,
        &metrics,
        &config_hash,
        device,
    )?;
    let fresh = resume::fresh_state(cfg, total_steps, config_hash, &tok.identity, share);
    let (state, record) = resume::resume_or_init(
        cfg,
        resume,
        fresh,
        &mut trainer,
        &files.dir,
        &model_config,
        &base_config,
    )?;
    let resumed = record.resumed_from.is_some();
    let objective = objective(
        cfg,
        &ckpt,
        &feed,
        &mut trainer,
        &files.dir,
        tok.pad_id,
        resumed,
        device,
        retry,
    )?;
    let reporter = Reporter::for_pod(rank, Duration::from_secs(10));
    let fabric = fabric_check(
        cfg,
        &mut trainer,
        &metrics,
        reporter.as_ref(),
        &state,
        &record,
        device,
    )?;
    RunLoop {
        cfg,
        opts,
        ckpt: &ckpt,
        trainer,
        feed,
        objective,
        batching: Batching {
            micro: h.micro_batch_size,
            pad: tok.pad_id,
            device,
        },
        share,
        model_config: &model_config,
        tokenizer: &files.tokenizer,
        metrics: &metrics,
        state,
        run: record,
        reporter,
        fabric,
        background: (share.rank == 0 && cfg.checkpoint.asynchronous)
            .then(|| Background::new(&ckpt, cfg.checkpoint.keep)),
    }
    .run()
}

/// The job's checkpoint directory, fenced for this attempt and checked for access.
fn open_checkpoints(
    cfg: &TrainConfig,
    opts: &RunOptions,
    retry: Duration,
) -> Result<CheckpointDir> {
    // Under the operator every gang attempt has a number: a rank 0 that outlived a
    // restart (its node NotReady, its kubelet still running it) is fenced off the
    // history the new attempt writes.
    let writer = opts.attempt.map(|attempt| Writer {
        owner: cfg.checkpoint.owner.clone(),
        attempt,
    });
    let ckpt = CheckpointDir::new(&cfg.checkpoint.dir, &cfg.job, retry)?.fenced(writer);
    // Wrong credentials or an unreachable endpoint fail here, before any other work.
    ckpt.check_access()?;
    Ok(ckpt)
}

/// The fabric check before the first step (`distributed.fabric_check`, with more than
/// one rank): the figure for the metrics and rank 0's reports; below a `fail`
/// threshold, rank 0 reports the figure and every rank stops with exit code 65.
fn fabric_check(
    cfg: &TrainConfig,
    trainer: &mut Trainer,
    metrics: &TrainMetrics,
    reporter: Option<&Reporter>,
    state: &crate::checkpoint::TrainerState,
    record: &record::RunRecord,
    device: tch::Device,
) -> Result<Option<Fabric>> {
    let Some(check) = &cfg.distributed.fabric_check else {
        return Ok(None);
    };
    if trainer.comm.world_size() < 2 {
        tracing::info!("fabric check skipped: a job of one rank has no fabric to measure");
        return Ok(None);
    }
    let backend = if world::uses_nccl(cfg, device) {
        "nccl"
    } else {
        "ring"
    };
    let (f, verdict) = fabric::check(trainer.comm.as_mut(), check, device, backend)?;
    metrics.fabric(f.bus_bandwidth_gbps);
    if let fabric::Verdict::Fail(message) = verdict {
        if let Some(r) = reporter {
            r.report(run_loop::progress_of(state, record, Some(f)));
        }
        return Err(fabric::failed(message));
    }
    Ok(Some(f))
}

/// The model of `model_config` (random weights until loaded) with its optimizer, as
/// the config sets them up.
/// The objective, chosen once; DPO's reference may be the model just loaded.
#[allow(clippy::too_many_arguments)]
fn objective(
    cfg: &TrainConfig,
    ckpt: &CheckpointDir,
    feed: &Feed,
    trainer: &mut Trainer,
    model_path: &std::path::Path,
    pad: i64,
    resumed: bool,
    device: tch::Device,
    retry: Duration,
) -> Result<Objective> {
    let reference = match cfg.method {
        Method::Dpo => Some(reference::for_run(
            cfg,
            ckpt,
            feed.pairs(),
            &trainer.model,
            trainer.comm.as_mut(),
            model_path,
            pad,
            resumed,
            device,
            retry,
        )?),
        _ => None,
    };
    Objective::new(cfg, reference)
}

/// This process's metrics (issue 11; see crate::metrics), served on /metrics.
fn train_metrics(
    cfg: &TrainConfig,
    (rank, world, local_rank): (usize, usize, usize),
    model_config: &ModelConfig,
    trainer: &Trainer,
    device: tch::Device,
) -> Arc<TrainMetrics> {
    let metrics = Arc::new(TrainMetrics::new(
        &Labels::from_env(&cfg.job, rank),
        world,
        model_config,
        &trainer.vs.trainable_variables(),
        cfg.data.max_seq_len,
        device,
        crate::config::kind(cfg.model.dtype),
    ));
    metrics.serve_from_env(local_rank);
    metrics
}

fn new_trainer(cfg: &TrainConfig, model_config: &ModelConfig, device: tch::Device) -> Trainer {
    let h = &cfg.hyperparameters;
    let adam = AdamWConfig {
        beta1: h.adam_beta1,
        beta2: h.adam_beta2,
        eps: h.adam_epsilon,
        weight_decay: h.weight_decay,
    };
    let mut trainer = Trainer::with_master_weights(
        model_config,
        crate::config::kind(cfg.model.dtype),
        device,
        adam,
        h.max_grad_norm,
        cfg.optimizer.master_weights,
    );
    trainer.checkpointing = cfg.model.gradient_checkpointing;
    trainer.reduce_kind = match cfg.distributed.reduce_dtype {
        ReduceDtype::Float32 => tch::Kind::Float,
        ReduceDtype::Bfloat16 => tch::Kind::BFloat16,
    };
    trainer.bucket_bytes = cfg.distributed.bucket_mib << 20;
    trainer.overlap = cfg.distributed.overlap;
    trainer
}

/// Name the attention kernel the run's batches take, probed on the model's head shape:
/// a warning on CUDA when packed rows would attend segment by segment instead of
/// through the varlen kernel.
fn log_attention_kernel(cfg: &TrainConfig, model_config: &ModelConfig, device: tch::Device) {
    let kernel = crate::model::attention_kernel(
        model_config,
        crate::config::kind(cfg.model.dtype),
        device,
        cfg.data.packing,
    );
    match &kernel {
        crate::model::AttentionKernel::Segmentwise { .. } if device.is_cuda() => {
            tracing::warn!(kernel = kernel.name(), "attention: {kernel}")
        }
        _ => tracing::info!(kernel = kernel.name(), "attention: {kernel}"),
    }
}
