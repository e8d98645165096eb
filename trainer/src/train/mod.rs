//! The training loop: data units in a seeded per-epoch order, gradient accumulation,
//! clipping, AdamW on the cosine schedule, checkpoints and exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::nn::VarStore;
use tch::Device;

mod backprop;
mod feed;
mod head;
mod optimizer;
pub mod reference;
mod step;
mod stop;
pub use backprop::BodyPass;
pub use feed::{epoch_order, Counts, Feed, Mixture, Share, SourceCounts, StepData};
pub use head::{rewards, sequence_logps, LOSS_CHUNK_TOKENS};
pub use optimizer::{Layout, Optimizer};
pub use step::{PhaseTimes, StepResult, Trainer, DEFAULT_BUCKET_BYTES};
pub use stop::{Decision, StopRequest, Stopper};

use crate::checkpoint::{restore, CheckpointDir, DataCursor, TrainerState};
use crate::config::{Backend, DeviceChoice, DpoReference, Method, ReduceDtype, TrainConfig};
use crate::data::{Batch, Example, PreferenceBatch, RewardBatch, TokenizeStats};
use crate::dist::nccl::{self, Nccl};
use crate::dist::{rendezvous, WorldInfo};
use crate::error::{Error, IoContext, Result};
use crate::loss::DpoParams;
use crate::model::{load_model_dir, load_reward_init, save_model_dir, ModelConfig};
use crate::optim::{cosine_lr, AdamWConfig};
use crate::progress::Progress;
use crate::storage::{self, Store};
use crate::tokenizer::Tokenizer;

pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::Config(
            "`model.device` is `cuda` but no CUDA device is available".into(),
        )),
    }
}

/// Options of a run that are not part of the job's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (as if interrupted) right after the checkpoint of this step is saved.
    pub stop_after_steps: Option<u64>,
    /// Draw a progress bar (a terminal); otherwise log lines.
    pub progress_bar: bool,
    /// This process's place in a data-parallel job (None: a job of one).
    pub world: Option<WorldInfo>,
    /// Stop at the next step boundary once set (SIGTERM), with a checkpoint when one
    /// fits in the grace period.
    pub stop: Option<StopRequest>,
}

/// What a run did, printed at the end and written as `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: String,
    pub method: Method,
    pub resumed_from_step: Option<u64>,
    pub steps_completed: u64,
    pub total_steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens_per_second: f64,
    pub records: usize,
    pub skipped_records: usize,
    pub tokenize: TokenizeStats,
    /// Per source of a weighted mixture: records, units and units drawn by this rank.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceCounts>,
    pub last_checkpoint: Option<String>,
    /// The final HF model directory (None when the run stopped early).
    pub output_dir: Option<String>,
    pub finished: bool,
}

/// Run a training job to completion (or to `stop_after_steps`).
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    let h = &cfg.hyperparameters;
    let (rank, world) = opts
        .world
        .as_ref()
        .map(|w| (w.rank, w.world_size))
        .unwrap_or((0, 1));
    let device = match select_device(cfg.model.device)? {
        Device::Cuda(_) => Device::Cuda(opts.world.as_ref().map(|w| w.local_rank).unwrap_or(0)),
        d => d,
    };
    tch::manual_seed(h.seed as i64);
    let retry = std::time::Duration::from_secs(cfg.checkpoint.retry_timeout_seconds);
    let ckpt = CheckpointDir::new(&cfg.checkpoint.dir, &cfg.job, retry)?;
    // Wrong credentials or an unreachable endpoint fail here, before any other work.
    ckpt.check_access()?;
    // A model (or tokenizer) given by URL is downloaded once; the copy lives as long
    // as the run (checkpoints and the published model copy its tokenizer).
    let model_src = ModelSource::fetch(&cfg.model.path, cfg.model.tokenizer.as_deref(), retry)?;
    let model_path = model_src.dir.clone();
    let base_config = ModelConfig::from_file(&model_path.join("config.json"))?;
    let tokenizer_path = model_src.tokenizer.clone();
    let tok = Tokenizer::from_file(&tokenizer_path)?;
    // A reward model starts from a causal LM (the SFT model): same body, a value head.
    let model_config = if cfg.method == Method::Reward && !base_config.is_sequence_classifier() {
        base_config.as_reward_model(tok.reward_pad_id())
    } else {
        base_config.clone()
    };
    if tok.vocab_size() > model_config.vocab_size {
        return Err(Error::Model(format!(
            "{}: tokenizer has {} tokens, the model's vocab_size is {}",
            tokenizer_path.display(),
            tok.vocab_size(),
            model_config.vocab_size
        )));
    }
    // The checkpoint to resume from comes first: its global batch decides how many
    // micro-batches each of this run's ranks accumulates.
    let resume = resume_point(cfg, &ckpt, retry)?;
    let accumulation = accumulation_steps(cfg, world, resume.as_ref())?;
    // Each rank takes `per_rank` units of every step.
    let share = Share {
        rank,
        world,
        per_rank: h.micro_batch_size * accumulation,
    };
    let mut feed = Feed::open(cfg, &tok, share)?;
    if let (
        Some(ResumePoint {
            state: saved, url, ..
        }),
        Feed::Stream(_),
    ) = (&resume, &feed)
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
    let total_steps = feed.total_steps(h, share);
    let adam = AdamWConfig {
        beta1: h.adam_beta1,
        beta2: h.adam_beta2,
        eps: h.adam_epsilon,
        weight_decay: h.weight_decay,
    };
    crate::plan::check_before_training(cfg, &model_config, world, accumulation, device)?;
    let mut trainer = Trainer::with_master_weights(
        &model_config,
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
    // metrics (issue 11): /metrics of this process, see crate::metrics.
    let metrics = std::sync::Arc::new(crate::metrics::TrainMetrics::new(
        &crate::metrics::Labels::from_env(&cfg.job, rank),
        world,
        &model_config,
        &trainer.vs.trainable_variables(),
        cfg.data.max_seq_len,
        device,
        crate::config::kind(cfg.model.dtype),
    ));
    metrics.serve_from_env(opts.world.as_ref().map(|w| w.local_rank).unwrap_or(0));
    let config_hash = cfg.trajectory_hash();
    if let Some(info) = opts.world.as_ref().filter(|w| w.world_size > 1) {
        let timeout = std::time::Duration::from_secs(cfg.distributed.timeout_seconds);
        let use_nccl = match cfg.distributed.backend {
            Backend::Nccl => true,
            Backend::Ring => false,
            Backend::Auto => device.is_cuda(),
        };
        let id = if use_nccl && rank == 0 {
            Some(nccl::unique_id()?)
        } else {
            None
        };
        let peers = rendezvous(info, &config_hash, timeout, id)?;
        if use_nccl {
            let id = peers.blob.ok_or_else(|| {
                Error::Config("rank 0 sent no NCCL id (does it run the same config?)".into())
            })?;
            trainer.set_collective(metrics.timed(Box::new(Nccl::new(
                rank,
                world,
                info.local_rank,
                &id,
            )?)));
        } else {
            trainer.set_collective(metrics.timed(Box::new(peers.ring)));
        }
        tracing::info!(rank, world_size = world, nccl = use_nccl, "joined the job");
    }
    if cfg.shards_optimizer(world) {
        trainer.shard_optimizer();
        let l = trainer.opt.layout().expect("sharded");
        tracing::info!(
            buckets = l.buckets.len(),
            shard_elements = l.shard_len(),
            master_weights = trainer.opt.has_master_weights(),
            "optimizer state sharded across the ranks (ZeRO-1)"
        );
    }

    let mut state = TrainerState {
        step: 0,
        total_steps,
        cursor: DataCursor {
            epoch: 0,
            position: 0,
            seed: h.seed,
        },
        learning_rate: 0.0,
        config_hash: config_hash.clone(),
        tokenizer: tok.identity.clone(),
        world_size: world,
        global_batch: Some(share.per_step()),
        tokens_seen: 0,
        losses: vec![],
        owner: cfg.checkpoint.owner.clone(),
    };
    let mut run = RunRecord::default();
    match resume {
        Some(ResumePoint {
            dir,
            state: saved,
            url,
            from: _from,
        }) => {
            if saved.config_hash != config_hash
                || saved.tokenizer != tok.identity
                || saved.total_steps != total_steps
            {
                // Retrying cannot help: the job's config no longer matches its history.
                return Err(Error::Config(format!(
                    "{} was written by a run with a different config, tokenizer or data size (config {} vs {}, total steps {} vs {}); \
                     use a new job name or checkpoint.resume=false",
                    url, saved.config_hash, config_hash, saved.total_steps, total_steps
                )));
            }
            restore(&dir, &trainer.vs, &model_config, &mut trainer.opt, &saved)?;
            tracing::info!(checkpoint = %url, step = saved.step, "resumed");
            run.resumed_from = Some(saved.step);
            state = TrainerState {
                world_size: world,
                global_batch: Some(share.per_step()),
                // A history taken over (`resume_from`) continues as this job's own.
                owner: cfg.checkpoint.owner.clone(),
                ..saved
            };
            run.last_checkpoint = Some(url);
            // Every rank loaded the same files; broadcasting makes identity a guarantee.
            trainer.broadcast_weights()?;
        }
        None => {
            if model_config.is_sequence_classifier() && !base_config.is_sequence_classifier() {
                load_reward_init(&model_path, &trainer.vs, &model_config, h.seed)?;
            } else {
                load_model_dir(&model_path, &trainer.vs, &model_config)?;
            }
            trainer.broadcast_weights()?;
            trainer.opt.sync_master_from_params();
        }
    }
    let dpo_reference = if cfg.method == Method::Dpo {
        Some(dpo_reference(
            cfg,
            &ckpt,
            &feed,
            &mut trainer,
            &model_path,
            tok.pad_id,
            run.resumed_from.is_some(),
            device,
            retry,
        )?)
    } else {
        None
    };

    let progress = Progress::new(opts.progress_bar, rank == 0, total_steps, state.step);
    let reporter = crate::report::Reporter::for_pod(rank, std::time::Duration::from_secs(10));
    let report = |state: &TrainerState, run: &RunRecord| {
        if let Some(r) = &reporter {
            r.report(janus_crds::Progress {
                step: state.step,
                total_steps,
                loss: state.losses.last().copied(),
                tokens_per_second: (run.tokens > 0).then(|| run.tokens_per_second()),
                last_checkpoint: run.last_checkpoint.clone(),
                updated_at: crate::report::now_rfc3339(),
            });
        }
    };
    report(&state, &run);
    let mut stopper = opts.stop.clone().map(|r| {
        let bytes = checkpoint_bytes(&trainer);
        let s = Stopper::new(r, bytes);
        if rank == 0 && !s.fits_grace() {
            tracing::warn!(
                checkpoint_bytes = bytes,
                expected_seconds = s.save_seconds(),
                grace_seconds = ?s.grace().map(|g| g.as_secs()),
                "a checkpoint on SIGTERM is not expected to fit in the pod's grace period; \
                 raise spec.workers.terminationGracePeriodSeconds"
            );
        }
        s
    });
    let _armed = opts.stop.as_ref().map(stop::Armed::new);
    metrics.start_at(state.step); // metrics
    let started = Instant::now();
    while state.step < total_steps {
        let waited = Instant::now(); // metrics
        let data = feed.next_step(&mut state.cursor, share)?;
        metrics.data_wait(waited.elapsed()); // metrics
        let lr = cosine_lr(
            state.step,
            total_steps,
            h.warmup_steps_of(total_steps),
            h.learning_rate,
            h.min_lr_ratio,
        );
        let t0 = Instant::now();
        let r = step_on(
            &mut trainer,
            data,
            cfg,
            dpo_reference.as_ref(),
            tok.pad_id,
            device,
            lr,
        )?;
        run.compute_secs += t0.elapsed().as_secs_f64();
        state.step += 1;
        state.learning_rate = lr;
        state.tokens_seen += r.tokens as u64;
        state.losses.push(r.loss);
        run.tokens += r.tokens;
        let tps = run.tokens_per_second();
        metrics.step(state.step, r.loss, r.grad_norm, lr, tps); // metrics
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
            state.step.is_multiple_of(cfg.log_every_steps.max(1)) || state.step == total_steps,
        );

        let every = cfg.checkpoint.every_steps;
        let stop_here = opts.stop_after_steps == Some(state.step);
        let due = (every > 0 && state.step.is_multiple_of(every))
            || state.step == total_steps
            || stop_here;
        let save = |trainer: &mut Trainer, state: &TrainerState, run: &mut RunRecord| {
            let held = Instant::now(); // metrics
            save_checkpoint(
                &ckpt,
                trainer,
                &model_config,
                &tokenizer_path,
                state,
                cfg,
                rank,
            )?;
            metrics.checkpoint(held.elapsed()); // metrics
            run.last_checkpoint = Some(ckpt.step_url(state.step));
            Ok::<f64, Error>(held.elapsed().as_secs_f64())
        };
        if due {
            let seconds = save(&mut trainer, &state, &mut run)?;
            if let Some(s) = &mut stopper {
                s.saved(seconds);
            }
        }
        if let Some(s) = &mut stopper {
            if let Decision::Stop { save: first, why } =
                s.check(trainer.comm.as_mut(), rank, due)?
            {
                if first {
                    save(&mut trainer, &state, &mut run)?;
                }
                report(&state, &run);
                progress.finish();
                tracing::warn!(step = state.step, checkpoint = ?run.last_checkpoint, "{why}");
                return Err(Error::Terminated(format!("{why} (step {})", state.step)));
            }
        }
        report(&state, &run);
        if stop_here && state.step < total_steps {
            progress.finish();
            tracing::warn!(
                step = state.step,
                "stopping early as asked (--stop-after-steps)"
            );
            return Ok(summary(cfg, feed.counts(), &state, &run, None, false));
        }
    }
    drop(_armed);
    progress.finish();
    if rank != 0 {
        return Ok(summary(cfg, feed.counts(), &state, &run, None, true));
    }
    let output = cfg.output_dir.to_string_lossy().to_string();
    let s = summary(cfg, feed.counts(), &state, &run, Some(output), true);
    publish(cfg, &trainer.vs, &model_config, &tokenizer_path, &s)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "training finished"
    );
    Ok(s)
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

#[allow(clippy::too_many_arguments)]
fn step_on(
    trainer: &mut Trainer,
    data: StepData,
    cfg: &TrainConfig,
    reference: Option<&reference::Reference>,
    pad: i64,
    device: Device,
    lr: f64,
) -> Result<StepResult> {
    let mb = cfg.hyperparameters.micro_batch_size;
    match data {
        StepData::Examples(ex) => {
            let micro: Vec<Batch> = ex
                .chunks(mb)
                .map(|c| Batch::unpacked(&c.iter().collect::<Vec<_>>(), pad, device))
                .collect();
            trainer.sft_step(&micro, lr)
        }
        StepData::Rows(rows) => {
            let micro: Vec<Batch> = rows
                .chunks(mb)
                .map(|c| {
                    let rs: Vec<Vec<&Example>> = c.iter().map(|r| r.iter().collect()).collect();
                    Batch::packed(&rs, pad, device)
                })
                .collect();
            trainer.sft_step(&micro, lr)
        }
        StepData::Pairs(pairs) if cfg.method == Method::Reward => {
            let micro: Vec<RewardBatch> = pairs
                .chunks(mb)
                .map(|c| RewardBatch::new(&c.iter().collect::<Vec<_>>(), pad, device))
                .collect();
            trainer.reward_step(&micro, cfg.reward.center_rewards_coefficient, lr)
        }
        StepData::Pairs(pairs) => {
            // The NLL over the prompt is ORPO's option; DPO reads the responses only.
            let on_prompt = cfg.method == Method::Orpo && cfg.hyperparameters.orpo_nll_on_prompt;
            let micro: Vec<PreferenceBatch> = pairs
                .chunks(mb)
                .map(|c| {
                    PreferenceBatch::new(&c.iter().collect::<Vec<_>>(), pad, on_prompt, device)
                })
                .collect();
            match (cfg.method, reference) {
                (Method::Dpo, Some(r)) => {
                    let p = DpoParams {
                        beta: cfg.dpo.beta,
                        loss_type: cfg.dpo.loss_type,
                        label_smoothing: cfg.dpo.label_smoothing,
                    };
                    trainer.dpo_step(&micro, r, &p, lr)
                }
                _ => trainer.orpo_step(&micro, cfg.hyperparameters.orpo_lambda, lr),
            }
        }
    }
}

/// DPO's reference: a frozen model in memory, or log-probabilities precomputed once
/// (loaded from beside the checkpoints when they were computed from the same data
/// and reference model). A fresh run computes them with the model it just loaded
/// (the reference, before any update) unless another reference model is named; a
/// resumed run that lacks them loads the reference model apart.
#[allow(clippy::too_many_arguments)]
fn dpo_reference(
    cfg: &TrainConfig,
    ckpt: &CheckpointDir,
    feed: &Feed,
    trainer: &mut Trainer,
    model_path: &Path,
    pad: i64,
    resumed: bool,
    device: Device,
    retry: std::time::Duration,
) -> Result<reference::Reference> {
    let kind = crate::config::kind(cfg.model.dtype);
    let named = cfg
        .dpo
        .reference_model
        .as_ref()
        .map(|p| ModelSource::fetch(p, None, retry).map(|s| (s.dir.clone(), s)));
    let named = named.transpose()?;
    let ref_dir = named
        .as_ref()
        .map(|(d, _)| d.clone())
        .unwrap_or_else(|| model_path.to_path_buf());
    let ref_config = ModelConfig::from_file(&ref_dir.join("config.json"))?;
    if cfg.dpo.reference == DpoReference::Model {
        tracing::info!(reference = %ref_dir.display(), "DPO reference model kept in memory");
        return Ok(reference::Reference::Model(Box::new(
            reference::Frozen::load(&ref_dir, &ref_config, kind, device)?,
        )));
    }
    let pairs = feed.pairs().ok_or_else(|| {
        Error::Config(
            "`dpo.reference: precompute` needs the pairs in memory; a streamed dataset takes `dpo.reference: model`".into(),
        )
    })?;
    let t = Instant::now();
    let (data_key, model_key) = (reference::data_key(pairs), reference::model_key(&ref_dir)?);
    if let Some(v) = reference::load(ckpt, &data_key, &model_key)? {
        if v.len() == pairs.len() {
            tracing::info!(pairs = v.len(), file = %format!("{}/{}", ckpt.url(), reference::FILE), "reference log-probs loaded");
            return Ok(reference::Reference::Precomputed(v));
        }
    }
    let micro = cfg.hyperparameters.micro_batch_size;
    let logps = if named.is_none() && !resumed {
        reference::precompute(
            &trainer.model,
            pairs,
            micro,
            pad,
            device,
            trainer.comm.as_mut(),
        )?
    } else {
        let frozen = reference::Frozen::load(&ref_dir, &ref_config, kind, device)?;
        reference::precompute(
            frozen.model(),
            pairs,
            micro,
            pad,
            device,
            trainer.comm.as_mut(),
        )?
    };
    if trainer.comm.rank() == 0 {
        reference::store(ckpt, &data_key, &model_key, &logps)?;
    }
    trainer.comm.barrier()?;
    tracing::info!(
        pairs = logps.len(),
        seconds = t.elapsed().as_secs_f64(),
        "reference log-probs computed"
    );
    Ok(reference::Reference::Precomputed(logps))
}

/// Write the final model (HF format, with tokenizer) to `output_dir`.
/// A URL `output_dir` gets the same files, written locally first and then uploaded.
fn publish(
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

/// The model directory and tokenizer of a run, downloaded first when given by URL.
struct ModelSource {
    dir: PathBuf,
    tokenizer: PathBuf,
    _staging: Option<tempfile::TempDir>,
}

/// Files of an HF model directory the trainer reads.
fn is_model_file(name: &str) -> bool {
    name == "config.json"
        || name == "tokenizer.json"
        || name == "model.safetensors.index.json"
        || name.ends_with(".safetensors")
}

impl ModelSource {
    fn fetch(path: &Path, tokenizer: Option<&Path>, retry: std::time::Duration) -> Result<Self> {
        let path_s = path.to_string_lossy();
        let staging = (storage::is_url(&path_s)
            || tokenizer.is_some_and(|t| storage::is_url(&t.to_string_lossy())))
        .then(|| crate::checkpoint::staging_dir("janus-model-"))
        .transpose()?;
        let dir = if storage::is_url(&path_s) {
            let local = staging.as_ref().expect("staged").path().join("model");
            let store = Store::open(&path_s, retry)?;
            let files: Vec<(String, u64)> = store
                .list_objects("")?
                .into_iter()
                .filter(|(n, _)| is_model_file(n))
                .collect();
            let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
            if !names.iter().any(|n| n == "config.json") {
                return Err(Error::Model(format!(
                    "{path_s}: no config.json there (expected a Hugging Face model directory)"
                )));
            }
            crate::scratch::ensure_room_per_rank(
                staging.as_ref().expect("staged").path(),
                files.iter().map(|(_, b)| b).sum(),
                &format!("the model download ({path_s})"),
            )?;
            for n in &names {
                store.get_file(n, &local.join(n))?;
            }
            tracing::info!(url = %path_s, files = names.len(), "downloaded the model");
            local
        } else {
            path.to_path_buf()
        };
        let tokenizer = match tokenizer {
            Some(t) if storage::is_url(&t.to_string_lossy()) => {
                let t = t.to_string_lossy();
                let (parent, name) = t
                    .rsplit_once('/')
                    .ok_or_else(|| Error::Config(format!("tokenizer URL `{t}` names no object")))?;
                let local = staging
                    .as_ref()
                    .expect("staged")
                    .path()
                    .join("tokenizer.json");
                Store::open(parent, retry)?.get_file(name, &local)?;
                local
            }
            Some(t) => t.to_path_buf(),
            None => dir.join("tokenizer.json"),
        };
        Ok(Self {
            dir,
            tokenizer,
            _staging: staging,
        })
    }
}

/// The checkpoint a run continues from.
struct ResumePoint {
    /// Its files, staged locally.
    dir: PathBuf,
    state: TrainerState,
    url: String,
    /// The history it came from when not this job's own (`checkpoint.resume_from`);
    /// it owns the staged files.
    from: Option<CheckpointDir>,
}

/// This job's newest complete checkpoint, else the newest of the history
/// `checkpoint.resume_from` names. A checkpoint of this job's history written by
/// another owner (a job of the same name deleted and created again, or two jobs on one
/// URL) is refused naming both, unless `resume_from` names this history.
fn resume_point(
    cfg: &TrainConfig,
    ckpt: &CheckpointDir,
    retry: std::time::Duration,
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
fn accumulation_steps(
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

/// What this process has done so far, beyond the checkpointed trainer state.
#[derive(Default)]
struct RunRecord {
    resumed_from: Option<u64>,
    last_checkpoint: Option<String>,
    /// Tokens processed by all ranks in this run (not before a resume).
    tokens: i64,
    /// Seconds spent in training steps (not data preparation or checkpoints).
    compute_secs: f64,
}

impl RunRecord {
    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.compute_secs.max(1e-9)
    }
}

fn summary(
    cfg: &TrainConfig,
    c: &Counts,
    state: &TrainerState,
    run: &RunRecord,
    output_dir: Option<String>,
    finished: bool,
) -> Summary {
    Summary {
        job: cfg.job.clone(),
        method: cfg.method,
        resumed_from_step: run.resumed_from,
        steps_completed: state.step,
        total_steps: state.total_steps,
        first_loss: state.losses.first().copied(),
        last_loss: state.losses.last().copied(),
        tokens_per_second: run.tokens_per_second(),
        records: c.records,
        skipped_records: c.skipped,
        tokenize: c.stats.clone(),
        sources: c.sources.clone(),
        last_checkpoint: run.last_checkpoint.clone(),
        finished,
        output_dir,
    }
}
