//! Benchmarks run by `bench/*.py`: training steps, the ring all-reduce, checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use janus::config::DeviceChoice;
use janus::data::{Batch, Example};
use janus::dist::env::{Role, WorldInfo};
use janus::dist::nccl::{self, Nccl};
use janus::dist::{rendezvous, Collective};
use janus::model::ModelConfig;
use janus::optim::AdamWConfig;
use janus::plan::{Plan, Target};
use janus::train::Trainer;
use janus::{Error, Result};

use crate::args::{DeviceArg, DtypeArg};

#[derive(Args)]
pub struct BenchTrainArgs {
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 688)]
    intermediate: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_enum, default_value = "float32")]
    dtype: DtypeArg,
    /// Use a real NCCL communicator even alone (CUDA; checks the NCCL path end to end).
    #[arg(long)]
    nccl: bool,
    /// Peak dense bf16 TFLOP/s of the GPU, for MFU (H100/H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Recompute each layer in the backward pass.
    #[arg(long)]
    checkpointing: bool,
    /// Update bf16 weights in place (no fp32 master weights): the old behaviour.
    #[arg(long)]
    no_master_weights: bool,
    /// ZeRO-1 across the ranks of `janus launch`.
    #[arg(long)]
    zero: bool,
    /// Pack each row with this many sequences (exercises the varlen attention path).
    #[arg(long, default_value_t = 1)]
    packed: usize,
    /// Where to run (auto: CUDA when available).
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Synchronise the device at every phase boundary, so that phase_seconds are the
    /// device's time and not the time to enqueue (CUDA; costs host/device overlap).
    #[arg(long)]
    sync_phases: bool,
    /// Overlap the gradient reduction with the backward pass and ZeRO-1's all-gather
    /// with the update (`distributed.overlap`).
    #[arg(long)]
    overlap: bool,
}

#[derive(Args)]
pub struct BenchAllreduceArgs {
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    sizes_mib: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// NCCL on CUDA tensors (one GPU per rank; a world of one checks the calls).
    #[arg(long)]
    nccl: bool,
}

#[derive(Args)]
pub struct BenchCheckpointArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    dir: String,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also time the raw transfer of the same files with the same client in each
    /// repetition, alternating with the checkpoint: parallel multipart uploads and
    /// parallel ranged downloads, no hashing or checks (the peer of a remote save/load).
    #[arg(long)]
    raw: bool,
    /// Instead: how long a save holds the step loop, synchronous against
    /// `checkpoint.async`, for the same state (and how fast the loop's compute runs
    /// while the background save is in flight).
    #[arg(long)]
    stall: bool,
}

pub fn train(a: BenchTrainArgs) -> Result<()> {
    let cfg = ModelConfig::small(
        "mistral",
        a.vocab,
        a.hidden,
        a.intermediate,
        a.layers,
        a.heads,
        a.kv_heads,
    );
    // Under `janus launch` every rank trains its own batch, data-parallel, on the GPU
    // of its local rank.
    let world = match Role::from_env()? {
        Role::Rank(info) => Some(info),
        Role::Launcher { .. } => None,
    };
    let device = janus::device::select(
        a.device.choice(),
        world.as_ref().map(|w| w.local_rank).unwrap_or(0),
    )?;
    if a.packed == 0 || !a.seq.is_multiple_of(a.packed) {
        return Err(Error::Config(format!(
            "--packed {} must divide --seq {}",
            a.packed, a.seq
        )));
    }
    let opts = BenchTrainOpts {
        seq: a.seq,
        batch: a.batch,
        steps: a.steps,
        warmup: a.warmup,
        dtype: a.dtype,
        nccl: a.nccl,
        peak_tflops: a.peak_tflops,
        checkpointing: a.checkpointing,
        master_weights: !a.no_master_weights,
        zero: a.zero,
        packed: a.packed,
        device,
        world,
        sync_phases: a.sync_phases,
        overlap: a.overlap,
    };
    bench_train(&cfg, &opts)
}

pub fn allreduce(a: BenchAllreduceArgs) -> Result<()> {
    bench_allreduce(&a.sizes_mib, a.iters, a.warmup, a.nccl)
}

pub fn checkpoint(a: BenchCheckpointArgs) -> Result<()> {
    if a.stall {
        return crate::checkpoint_stall::run(&a.model, &a.dir, a.reps);
    }
    bench_checkpoint(&a.model, &a.dir, a.reps, a.raw)
}

struct BenchTrainOpts {
    seq: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    dtype: DtypeArg,
    nccl: bool,
    peak_tflops: f64,
    checkpointing: bool,
    master_weights: bool,
    zero: bool,
    packed: usize,
    device: tch::Device,
    /// This process's place in a `janus launch` job.
    world: Option<WorldInfo>,
    sync_phases: bool,
    overlap: bool,
}

/// Resident set size of this process now and at its peak, from /proc (bytes).
fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Peak resident set size of this process, MiB.
pub fn peak_rss_mib() -> f64 {
    rss_bytes().1 as f64 / (1u64 << 20) as f64
}

/// The trainer config a benchmark run corresponds to, for its memory plan.
fn plan_config(o: &BenchTrainOpts) -> Result<janus::config::TrainConfig> {
    let set = [
        format!("model.dtype={}", o.dtype.dtype().as_str()),
        format!("model.gradient_checkpointing={}", o.checkpointing),
        format!("optimizer.master_weights={}", o.master_weights),
        format!("distributed.shard_optimizer={}", o.zero),
        format!("hyperparameters.micro_batch_size={}", o.batch),
        format!("data.max_seq_len={}", o.seq),
        format!("data.packing={}", o.packed > 1),
        format!(
            "model.device={}",
            if o.device.is_cuda() { "cuda" } else { "cpu" }
        ),
    ];
    Ok(janus::config::TrainConfig::resolve(
        Some("tiny"),
        None,
        &set,
    )?)
}

fn bench_train(cfg: &ModelConfig, o: &BenchTrainOpts) -> Result<()> {
    let kind = o.dtype.kind();
    tch::manual_seed(0);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let examples = random_examples(cfg, o);
    let kernel = janus::model::attention_kernel(cfg, kind, o.device, o.packed > 1);
    tracing::info!(kernel = kernel.name(), "attention: {kernel}");
    let fallbacks_before = janus::model::fallback_calls();
    let (rss_before, _) = rss_bytes();
    let mut trainer =
        Trainer::with_master_weights(cfg, kind, o.device, adam, 1.0, o.master_weights);
    trainer.checkpointing = o.checkpointing;
    trainer.overlap = o.overlap;
    if o.sync_phases {
        trainer.sync_phases(o.device);
    }
    let rank = join(&mut trainer, o)?;
    let world = trainer.comm.world_size();
    // A real communicator shards even alone (one segment), so a one-GPU check runs
    // NCCL's reduce-scatter and all-gather.
    let zero = o.zero && !trainer.comm.is_noop();
    if zero {
        trainer.shard_optimizer();
    }
    let plan = Plan::new(
        &plan_config(o)?,
        cfg,
        world,
        if o.device.is_cuda() {
            Target::Cuda
        } else {
            Target::Cpu
        },
    );
    let timed = time_steps(&mut trainer, &examples, o)?;
    let (_, peak) = rss_bytes();
    let mean = timed.times.iter().sum::<f64>() / timed.times.len().max(1) as f64;
    let tokens_per_second = (o.seq * o.batch * world) as f64 / mean;
    // The metrics' formula, on what a row holds: `packed` sequences of `seg` tokens.
    let seg = o.seq / o.packed;
    let flops_per_token = janus::metrics::ModelFlops::new(cfg, &trainer.vs.trainable_variables())
        .per_token(std::iter::repeat_n(seg, o.packed));
    let device = o.device;
    let mfu = device
        .is_cuda()
        .then(|| flops_per_token * tokens_per_second / world as f64 / (o.peak_tflops * 1e12));
    let out = serde_json::json!({
        "impl": "janus", "params": cfg.num_parameters(), "seq": o.seq, "batch": o.batch, "ranks": world,
        "packed": o.packed, "checkpointing": o.checkpointing, "master_weights": o.master_weights,
        "zero": zero, "overlap": o.overlap, "sync_phases": o.sync_phases,
        "device": format!("{device:?}"), "dtype": format!("{kind:?}"), "nccl": o.nccl,
        "threads": tch::get_num_threads(), "step_seconds": timed.times,
        "phase_seconds": timed.phases.iter().map(|(n, s)| (n.to_string(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
        "tokens_per_second": tokens_per_second, "flops_per_token": flops_per_token, "mfu": mfu,
        "attention_kernel": kernel.name(),
        "attention_fallback_calls": janus::model::fallback_calls() - fallbacks_before,
        "peak_rss_mib": peak as f64 / (1u64 << 20) as f64,
        "peak_rss_increase_bytes": peak.saturating_sub(rss_before),
        "cuda_used_bytes": device.is_cuda().then_some(timed.cuda_used),
        "plan_bytes": plan.total(),
    });
    if rank == 0 {
        println!("{out}");
    }
    Ok(())
}

/// `batch x packed` random sequences of `seq / packed` tokens (+1 for the targets).
fn random_examples(cfg: &ModelConfig, o: &BenchTrainOpts) -> Vec<Example> {
    let seg = o.seq / o.packed;
    (0..o.batch * o.packed)
        .map(|_| {
            let t = tch::Tensor::randint(
                cfg.vocab_size as i64,
                [seg as i64 + 1],
                (tch::Kind::Int64, tch::Device::Cpu),
            );
            Example {
                tokens: Vec::<i64>::try_from(t).expect("int64 tokens"),
                prompt_len: 1,
            }
        })
        .collect()
}

/// Join the ranks of `janus launch` (or NCCL alone with `--nccl`); this rank.
fn join(trainer: &mut Trainer, o: &BenchTrainOpts) -> Result<usize> {
    let Some(info) = o.world.as_ref().filter(|w| w.world_size > 1 || o.nccl) else {
        return Ok(0);
    };
    let id = if o.nccl && info.rank == 0 {
        Some(nccl::unique_id()?)
    } else {
        None
    };
    let peers = rendezvous(info, "bench", std::time::Duration::from_secs(120), id)?;
    if o.nccl {
        let id = peers.blob.unwrap_or_default();
        trainer.set_collective(Box::new(Nccl::new(
            info.rank,
            info.world_size,
            info.local_rank,
            &id,
        )?));
    } else if o.overlap {
        // The ring is synchronous: a thread of its own runs the started collectives.
        trainer.set_collective(Box::new(janus::dist::Background::new(Box::new(peers.ring))));
    } else {
        trainer.set_collective(Box::new(peers.ring));
    }
    Ok(info.rank)
}

/// What the timed steps measured.
struct Timed {
    /// Seconds of each step after the warmup.
    times: Vec<f64>,
    /// Mean seconds per step of each phase.
    phases: Vec<(&'static str, f64)>,
    /// The most CUDA memory in use after a step.
    cuda_used: u64,
}

fn time_steps(trainer: &mut Trainer, examples: &[Example], o: &BenchTrainOpts) -> Result<Timed> {
    let refs: Vec<&Example> = examples.iter().collect();
    let device = o.device;
    let mut timed = Timed {
        times: Vec::new(),
        phases: Vec::new(),
        cuda_used: 0,
    };
    for i in 0..o.warmup + o.steps {
        let b = if o.packed > 1 {
            let rows: Vec<Vec<&Example>> = refs.chunks(o.packed).map(|c| c.to_vec()).collect();
            Batch::packed(&rows, 2, device)
        } else {
            Batch::unpacked(&refs, 2, device)
        };
        let t = Instant::now();
        let r = trainer.sft_step(std::slice::from_ref(&b), 1e-4)?;
        if let tch::Device::Cuda(ordinal) = device {
            tch::Cuda::synchronize(ordinal as i64);
            timed.cuda_used = timed.cuda_used.max(cuda_used_bytes(ordinal));
        }
        let step_phases = trainer.phases.take();
        if i >= o.warmup {
            timed.times.push(t.elapsed().as_secs_f64());
            if timed.phases.is_empty() {
                timed.phases = step_phases.iter().map(|(n, _)| (*n, 0.0)).collect();
            }
            for (acc, (_, s)) in timed.phases.iter_mut().zip(&step_phases) {
                acc.1 += s / o.steps as f64;
            }
        }
        if !r.loss.is_finite() {
            return Err(Error::Data(format!(
                "non-finite loss {} at bench step {i}",
                r.loss
            )));
        }
    }
    Ok(timed)
}

/// Device memory in use (total - free) on CUDA device `ordinal`.
fn cuda_used_bytes(ordinal: usize) -> u64 {
    janus::plan::cuda_memory(ordinal)
        .map(|(free, total)| total - free)
        .unwrap_or(0)
}

/// Time the ring all-reduce at several sizes (f32). Bus bandwidth as NCCL reports it:
/// bytes * 2 (n - 1) / n / seconds.
/// Check reduce-scatter and all-gather against their definitions (the ZeRO-1 path):
/// rank r contributes r + 1 everywhere, so segment r sums to world (world + 1) / 2.
fn check_collectives(comm: &mut dyn Collective, device: tch::Device) -> Result<()> {
    let (w, r) = (comm.world_size(), comm.rank());
    let seg = 1000i64;
    let n = seg * w as i64;
    let mut t = tch::Tensor::full([n], (r + 1) as f64, (tch::Kind::Float, device));
    comm.reduce_scatter_sum(&mut t)?;
    let want = (w * (w + 1) / 2) as f64;
    let got = t.narrow(0, r as i64 * seg, seg).to_device(tch::Device::Cpu);
    if got.ne(want).any().int64_value(&[]) != 0 {
        return Err(Error::Data(format!(
            "reduce-scatter: rank {r}'s segment is not {want}"
        )));
    }
    let mut g = tch::Tensor::zeros([n], (tch::Kind::BFloat16, device));
    let _ = g.narrow(0, r as i64 * seg, seg).fill_((r + 1) as f64);
    comm.all_gather(&mut g)?;
    let want = tch::Tensor::arange(w as i64, (tch::Kind::Float, tch::Device::Cpu))
        .repeat_interleave_self_int(seg, 0, None)
        + 1.0;
    if !g
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .equal(&want)
    {
        return Err(Error::Data(
            "all-gather: segments differ from the ranks' contributions".into(),
        ));
    }
    Ok(())
}

fn bench_allreduce(sizes_mib: &[usize], iters: usize, warmup: usize, use_nccl: bool) -> Result<()> {
    let Role::Rank(info) = Role::from_env()? else {
        return Err(Error::Config(
            "bench-allreduce runs as one rank: start it with `janus launch --nproc N --`".into(),
        ));
    };
    let id = if use_nccl && info.rank == 0 {
        Some(nccl::unique_id()?)
    } else {
        None
    };
    let peers = rendezvous(&info, "bench", std::time::Duration::from_secs(60), id)?;
    let (mut comm, device, name): (Box<dyn Collective>, _, _) = if use_nccl {
        let id = peers.blob.unwrap_or_default();
        let c = Nccl::new(info.rank, info.world_size, info.local_rank, &id)?;
        let device = janus::device::select(DeviceChoice::Cuda, info.local_rank)?;
        (Box::new(c), device, "janus-nccl")
    } else {
        (Box::new(peers.ring), tch::Device::Cpu, "janus-ring")
    };
    check_collectives(comm.as_mut(), device)?;
    let n = info.world_size as f64;
    for &mib in sizes_mib {
        let elems = (mib << 20) / 4;
        let mut t = tch::Tensor::ones([elems as i64], (tch::Kind::Float, device));
        let mut times = Vec::new();
        for i in 0..warmup + iters {
            comm.barrier()?;
            if device.is_cuda() {
                tch::Cuda::synchronize(info.local_rank as i64);
            }
            let start = Instant::now();
            comm.all_reduce_sum(&mut t)?;
            if device.is_cuda() {
                tch::Cuda::synchronize(info.local_rank as i64);
            }
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        // After warmup + iters sums of ones the value is world^(warmup + iters).
        let expect = n.powi((warmup + iters) as i32);
        let got = t.double_value(&[0]);
        if (got - expect).abs() > 1e-3 * expect {
            return Err(Error::Data(format!(
                "all-reduce gave {got}, expected {expect}"
            )));
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let bytes = (elems * 4) as f64;
        if info.rank == 0 {
            // NCCL's "algorithm bandwidth" too, which is what a world of one can show.
            let out = serde_json::json!({
                "impl": name, "world_size": info.world_size, "mib": mib, "median_seconds": median,
                "bus_gb_per_s": bytes * 2.0 * (n - 1.0) / n / median / 1e9,
                "alg_gb_per_s": bytes / median / 1e9,
                "collectives_checked": true,
            });
            println!("{out}");
        }
    }
    Ok(())
}

fn bench_checkpoint(model: &Path, dir: &str, reps: usize, raw: bool) -> Result<()> {
    use janus::checkpoint::{restore, CheckpointDir};
    let cfg = ModelConfig::from_file(&model.join("config.json"))?;
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut trainer = Trainer::new(&cfg, tch::Kind::Float, tch::Device::Cpu, adam, 1.0);
    janus::model::load_model_dir(model, &trainer.vs, &cfg)?;
    let ckpt = CheckpointDir::new(dir, "bench", std::time::Duration::from_secs(60))?;
    ckpt.check_access()?;
    let (mut save, mut load) = (Vec::new(), Vec::new());
    let (mut raw_save, mut raw_load) = (Vec::new(), Vec::new());
    let store = janus::storage::Store::open(dir, std::time::Duration::from_secs(60))?;
    let mut bytes = 0u64;
    for rep in 0..reps {
        let state = super::checkpoint_stall::bench_state(rep as u64 + 1, reps as u64);
        let t = Instant::now();
        ckpt.save(
            &trainer.vs,
            &cfg,
            &model.join("tokenizer.json"),
            &trainer.opt,
            trainer.comm.as_mut(),
            &state,
            1,
        )?;
        save.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (local, found) = ckpt
            .latest()?
            .ok_or_else(|| Error::Checkpoint("the checkpoint just saved was not found".into()))?;
        restore(&local, &trainer.vs, &cfg, &mut trainer.opt, &found)?;
        load.push(t.elapsed().as_secs_f64());
        bytes = walk_bytes(&local);
        if raw {
            let (up, down) = raw_transfer(&store, &local, rep)?;
            raw_save.push(up);
            raw_load.push(down);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut out = serde_json::json!({
        "dir": dir, "params": cfg.num_parameters(), "checkpoint_bytes": bytes,
        "save_seconds": median(&mut save), "load_seconds": median(&mut load),
        "save_runs": save, "load_runs": load,
    });
    if raw {
        out["raw_save_seconds"] = median(&mut raw_save).into();
        out["raw_load_seconds"] = median(&mut raw_load).into();
        out["raw_save_runs"] = raw_save.into();
        out["raw_load_runs"] = raw_load.into();
    }
    println!("{out}");
    Ok(())
}

/// Upload the files of `local` to `raw-<rep>/` of `store` (in parallel, multipart),
/// then download them back (parallel 16 MiB ranges, written in order), unchecked;
/// returns the seconds of each.
fn raw_transfer(store: &janus::storage::Store, local: &Path, rep: usize) -> Result<(f64, f64)> {
    use std::io::Write;
    let prefix = format!("raw-{rep}");
    let files: Vec<(String, PathBuf)> = std::fs::read_dir(local)
        .map_err(|e| Error::io(local.display().to_string(), e))?
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                format!("{prefix}/{}", e.file_name().to_string_lossy()),
                e.path(),
            )
        })
        .collect();
    let t = Instant::now();
    store.put_files(&files)?;
    let up = t.elapsed().as_secs_f64();
    let scratch = janus::checkpoint::staging_dir("janus-raw-")?;
    let t = Instant::now();
    const PART: u64 = 16 << 20;
    for (rel, src) in &files {
        let size = std::fs::metadata(src)
            .map_err(|e| Error::io(src.display().to_string(), e))?
            .len();
        let parts: Vec<(String, std::ops::Range<u64>)> = (0..size.div_ceil(PART))
            .map(|i| (rel.clone(), i * PART..((i + 1) * PART).min(size)))
            .collect();
        let dst = scratch.path().join(rel.replace('/', "_"));
        let mut f =
            std::fs::File::create(&dst).map_err(|e| Error::io(dst.display().to_string(), e))?;
        for chunk in parts.chunks(8) {
            for b in store.get_ranges(chunk, 8)? {
                f.write_all(&b)
                    .map_err(|e| Error::io(dst.display().to_string(), e))?;
            }
        }
    }
    let down = t.elapsed().as_secs_f64();
    store.delete_prefix(&prefix)?;
    Ok((up, down))
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}
