//! `janus bench-checkpoint --stall`: how long a checkpoint holds the step loop, a
//! synchronous save against a background one (`checkpoint.async`) of the same state,
//! and how fast the loop's own compute runs while the background save is in flight.

use std::path::Path;
use std::time::{Duration, Instant};

use janus::checkpoint::background::Background;
use janus::checkpoint::{restore, CheckpointDir, DataCursor, TrainerState};
use janus::model::ModelConfig;
use janus::optim::AdamWConfig;
use janus::train::Trainer;
use janus::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A checkpoint's trainer state for a bench: only the step matters to a save.
pub(crate) fn bench_state(step: u64, total_steps: u64) -> TrainerState {
    TrainerState {
        step,
        total_steps,
        cursor: DataCursor {
            epoch: 0,
            position: 0,
            seed: 0,
        },
        learning_rate: 0.0,
        config_hash: "bench".into(),
        tokenizer: "bench".into(),
        world_size: 1,
        global_batch: None,
        tokens_seen: 0,
        losses: vec![],
        owner: None,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Matrix products per second, the stand-in for the step loop's compute, for `d`.
fn compute_rate(work: &Tensor, d: Duration) -> f64 {
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < d {
        let _ = work.matmul(work);
        n += 1;
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

/// One repetition's figures.
struct Rep {
    sync: f64,
    stall: f64,
    total: f64,
    /// Compute rate while the background save runs, over the rate alone.
    compute: f64,
}

struct Bench<'a> {
    trainer: Trainer,
    cfg: ModelConfig,
    tokenizer: &'a Path,
    sync: CheckpointDir,
    background: Background,
    work: Tensor,
}

impl Bench<'_> {
    fn rep(&mut self, step: u64) -> Result<Rep> {
        let st = bench_state(step, 1000);
        let t = Instant::now();
        self.sync.save(
            &self.trainer.vs,
            &self.cfg,
            self.tokenizer,
            &self.trainer.opt,
            self.trainer.comm.as_mut(),
            &st,
            1,
        )?;
        let sync = t.elapsed().as_secs_f64();
        let alone = compute_rate(&self.work, Duration::from_secs(1));
        let t = Instant::now();
        self.background.start(
            &self.trainer.vs,
            &self.cfg,
            self.tokenizer,
            &self.trainer.opt,
            self.trainer.comm.as_mut(),
            &st,
        )?;
        let stall = t.elapsed().as_secs_f64();
        // The step loop goes on: compute until the background save has completed.
        let t = Instant::now();
        let mut n = 0u32;
        let mut done = None;
        while self.background.running().is_some() {
            if let Some(d) = self.background.poll() {
                done = Some(d);
                break;
            }
            let _ = self.work.matmul(&self.work);
            n += 1;
        }
        let during = f64::from(n) / t.elapsed().as_secs_f64();
        let done = match done {
            Some(d) => d,
            None => self
                .background
                .wait()?
                .ok_or_else(|| Error::Checkpoint("no background save completed".into()))?,
        };
        Ok(Rep {
            sync,
            stall,
            total: done.seconds,
            compute: during / alone,
        })
    }
}

pub fn run(model: &Path, dir: &str, reps: usize) -> Result<()> {
    let cfg = ModelConfig::from_file(&model.join("config.json"))?;
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut trainer = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, 1.0);
    janus::model::load_model_dir(model, &trainer.vs, &cfg)?;
    let retry = Duration::from_secs(60);
    let sync = CheckpointDir::new(dir, "stall-sync", retry)?;
    sync.check_access()?;
    let tokenizer = model.join("tokenizer.json");
    // One save and restore first, so that the optimizer holds its moments as in
    // training instead of building fresh ones on the fly.
    sync.save(
        &trainer.vs,
        &cfg,
        &tokenizer,
        &trainer.opt,
        trainer.comm.as_mut(),
        &bench_state(0, 1000),
        1,
    )?;
    let (local, found) = sync
        .latest()?
        .ok_or_else(|| Error::Checkpoint("the checkpoint just saved was not found".into()))?;
    restore(&local, &trainer.vs, &cfg, &mut trainer.opt, &found)?;
    let background = Background::new(&CheckpointDir::new(dir, "stall-async", retry)?, 1);
    let bytes: usize = trainer
        .vs
        .variables()
        .values()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum::<usize>()
        + trainer
            .opt
            .state_specs()
            .iter()
            .map(|s| s.bytes())
            .sum::<usize>();
    let mut b = Bench {
        trainer,
        cfg,
        tokenizer: &tokenizer,
        sync,
        background,
        work: Tensor::randn([512, 512], (Kind::Float, Device::Cpu)),
    };
    // The first background save allocates the host buffers: reported apart.
    let first = b.rep(1)?;
    let mut runs = Vec::with_capacity(reps);
    for rep in 0..reps {
        runs.push(b.rep(rep as u64 + 2)?);
    }
    let col = |f: fn(&Rep) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let (sync_s, stall_s) = (col(|r| r.sync), col(|r| r.stall));
    let out = serde_json::json!({
        "dir": dir, "params": b.cfg.num_parameters(), "checkpoint_bytes": bytes,
        "sync_save_seconds": median(&sync_s), "async_stall_seconds": median(&stall_s),
        "async_total_seconds": median(&col(|r| r.total)),
        "stall_over_sync": median(&stall_s) / median(&sync_s),
        "compute_rate_during_background": median(&col(|r| r.compute)),
        "first_async_stall_seconds": first.stall,
        "host_buffer_allocations": b.background.buffers().allocations(),
        "sync_runs": sync_s, "stall_runs": stall_s,
    });
    println!("{out}");
    Ok(())
}
