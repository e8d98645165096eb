//! `janus`: train, make models and data, benchmark.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use janus::config::{Dtype, TrainConfig};
use janus::data::{Batch, Example};
use janus::dist::env::Role;
use janus::dist::launch::{free_port, launch, LaunchSpec};
use janus::dist::nccl::{self, Nccl};
use janus::dist::{rendezvous, Collective};
use janus::model::ModelConfig;
use janus::optim::AdamWConfig;
use janus::sample::{self, TokenizerSource};
use janus::train::{self, RunOptions, Summary, Trainer};
use janus::{Error, Result};

#[path = "../cli/data.rs"]
mod data_cmd;

#[derive(Parser)]
#[command(
    name = "janus",
    version,
    about = "Train and evaluate Janus-style models (SFT, ORPO) on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train: a preset, optionally a config file (YAML/JSON), and key=value overrides.
    Train {
        /// Config file; `JANUS_CONFIG` (set by the operator) when omitted.
        #[arg(long, env = "JANUS_CONFIG")]
        config: Option<PathBuf>,
        /// Preset to start from (tiny, janus-7b-sft, janus-7b-orpo); overrides the file's `preset:`.
        #[arg(long)]
        preset: Option<String>,
        /// Override a key, e.g. `--set hyperparameters.learning_rate=1e-5` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Stop right after the checkpoint of this step, as an interruption would.
        #[arg(long)]
        stop_after_steps: Option<u64>,
        /// Print the resolved config and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Shard a dataset for streaming; stream a rank's share of one.
    Data {
        #[command(subcommand)]
        command: data_cmd::DataCommand,
    },
    /// Start N local ranks of a janus command (one per GPU, or CPU processes):
    /// `janus launch --nproc 2 -- train --config job.yaml`.
    Launch {
        #[arg(long)]
        nproc: usize,
        /// The command every rank runs.
        #[arg(last = true, required = true)]
        args: Vec<OsString>,
    },
    /// Seconds to save and to find + load a checkpoint (model and AdamW state) of the
    /// model in --model, to --dir (a path or URL); prints one JSON line.
    BenchCheckpoint {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// All-reduce bandwidth of the CPU ring (run under `janus launch`); rank 0 prints
    /// one JSON line per size.
    BenchAllreduce {
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
        sizes_mib: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Write a random model and its tokenizer as a Hugging Face directory.
    InitModel {
        #[arg(long)]
        out: PathBuf,
        /// Architecture preset; ignored when --config is given.
        #[arg(long, value_enum, default_value = "tiny-mistral")]
        arch: Arch,
        /// An HF config.json to use instead of a preset.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A tokenizer.json to copy; otherwise a BPE is trained on --train-tokenizer-on.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Data files (JSONL/Parquet) whose text trains the tokenizer.
        #[arg(long, num_args = 1..)]
        train_tokenizer_on: Vec<PathBuf>,
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
        #[arg(long, value_enum, default_value = "float32")]
        dtype: DtypeArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write small synthetic SFT, preference and bench data (JSONL and Parquet).
    SampleData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 96)]
        instructions: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Everything on a fresh machine: sample data, tiny model, SFT then ORPO, summary.
    Demo {
        #[arg(long, default_value = "target/janus-demo")]
        dir: PathBuf,
    },
    /// Time training steps of a model on random tokens; prints one JSON line.
    BenchTrain {
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    TinyMistral,
    TinyLlama,
    Mistral7b,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    Float32,
    Bfloat16,
}

impl DtypeArg {
    fn kind(self) -> tch::Kind {
        match self {
            DtypeArg::Float32 => Dtype::Float32.kind(),
            DtypeArg::Bfloat16 => Dtype::Bfloat16.kind(),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    janus::progress::init_logging(terminal);
    if let Err(e) = run(cli.command, terminal) {
        tracing::error!(error = %e, exit_code = e.exit_code(), "janus failed");
        eprintln!("error: {e}");
        janus::report::write_termination_message(&e.to_string()); // issue 11
        std::process::exit(e.exit_code());
    }
}

fn run(cmd: Command, terminal: bool) -> Result<()> {
    match cmd {
        Command::Train {
            config,
            preset,
            overrides,
            stop_after_steps,
            print_config,
        } => {
            let cfg = TrainConfig::resolve(preset.as_deref(), config.as_deref(), &overrides)?;
            if print_config {
                println!(
                    "{}",
                    serde_yaml::to_string(&cfg).expect("config serializes")
                );
                return Ok(());
            }
            let world = match Role::from_env()? {
                // A pod with several GPUs: start one rank per GPU, as `janus launch` does.
                Role::Launcher {
                    nproc,
                    node_rank,
                    nnodes,
                    master_addr,
                    master_port,
                } => {
                    let args = std::env::args_os().skip(1).collect();
                    let spec = LaunchSpec {
                        nproc,
                        node_rank,
                        nnodes,
                        master_addr,
                        master_port,
                        args,
                    };
                    std::process::exit(launch(&spec)?);
                }
                Role::Rank(info) => info,
            };
            let opts = RunOptions {
                stop_after_steps,
                progress_bar: terminal,
                world: Some(world.clone()),
            };
            let s = train::run(&cfg, &opts)?;
            if world.rank == 0 {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("summary serializes")
                );
            }
            Ok(())
        }
        Command::Data { command } => data_cmd::run(command, terminal),
        Command::Launch { nproc, args } => {
            if nproc == 0 {
                return Err(Error::Config("--nproc must be >= 1".into()));
            }
            let spec = LaunchSpec {
                nproc,
                node_rank: 0,
                nnodes: 1,
                master_addr: "127.0.0.1".into(),
                master_port: free_port()?,
                args,
            };
            std::process::exit(launch(&spec)?);
        }
        Command::BenchCheckpoint { model, dir, reps } => bench_checkpoint(&model, &dir, reps),
        Command::BenchAllreduce {
            sizes_mib,
            iters,
            warmup,
        } => bench_allreduce(&sizes_mib, iters, warmup),
        Command::InitModel {
            out,
            arch,
            config,
            tokenizer,
            train_tokenizer_on,
            vocab_size,
            dtype,
            seed,
        } => {
            let model_config = match config {
                Some(p) => ModelConfig::from_file(&p)?,
                None => arch_config(arch),
            };
            let source = match tokenizer {
                Some(p) => TokenizerSource::File(p),
                None if train_tokenizer_on.is_empty() => {
                    return Err(Error::Config(
                        "init-model needs --tokenizer or --train-tokenizer-on <data files>".into(),
                    ))
                }
                None => TokenizerSource::Train {
                    corpus: corpus_of(&train_tokenizer_on)?,
                    vocab_size,
                },
            };
            let c = sample::init_model(&out, model_config, source, dtype.kind(), seed)?;
            println!(
                "{}: {} parameters, vocab {}",
                out.display(),
                c.num_parameters(),
                c.vocab_size
            );
            Ok(())
        }
        Command::SampleData {
            out,
            instructions,
            seed,
        } => {
            for f in sample::write_sample_data(&out, instructions, seed)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Demo { dir } => demo(&dir, terminal),
        Command::BenchTrain {
            layers,
            hidden,
            intermediate,
            heads,
            kv_heads,
            vocab,
            seq,
            batch,
            steps,
            warmup,
            dtype,
            nccl,
            peak_tflops,
        } => {
            let cfg = ModelConfig::small(
                "mistral",
                vocab,
                hidden,
                intermediate,
                layers,
                heads,
                kv_heads,
            );
            let opts = BenchTrainOpts {
                seq,
                batch,
                steps,
                warmup,
                kind: dtype.kind(),
                nccl,
                peak_tflops,
            };
            bench_train(&cfg, &opts)
        }
    }
}

fn arch_config(arch: Arch) -> ModelConfig {
    match arch {
        Arch::TinyMistral => ModelConfig::small("mistral", 1024, 128, 344, 2, 4, 2),
        Arch::TinyLlama => ModelConfig::small("llama", 1024, 128, 344, 2, 4, 2),
        Arch::Mistral7b => ModelConfig::mistral_7b_v02(),
    }
}

fn corpus_of(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut values = Vec::new();
    for f in files {
        for row in janus::data::read_rows(f)? {
            values.push(
                row.value
                    .map_err(|e| Error::Data(format!("{}: {e}", row.location)))?,
            );
        }
    }
    Ok(sample::tokenizer_corpus(&values))
}

/// The README's first command: data, model, SFT, then ORPO from the SFT model.
fn demo(dir: &Path, terminal: bool) -> Result<()> {
    let data = dir.join("data");
    sample::write_sample_data(&data, 96, 0)?;
    let model = dir.join("tiny-model");
    if !model.join("config.json").exists() {
        let corpus = corpus_of(&[data.join("sft.jsonl")])?;
        sample::init_model(
            &model,
            arch_config(Arch::TinyMistral),
            TokenizerSource::Train {
                corpus,
                vocab_size: 1024,
            },
            tch::Kind::Float,
            0,
        )?;
    }
    let d = dir.display();
    let sft = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            "job=demo-sft".into(),
            format!("model.path={d}/tiny-model"),
            format!("data.train=[{d}/data/sft.parquet]"),
            format!("checkpoint.dir={d}/checkpoints"),
            format!("output_dir={d}/sft-model"),
            // A demo run always starts from scratch.
            "checkpoint.resume=false".into(),
        ],
    )?;
    let opts = RunOptions {
        stop_after_steps: None,
        progress_bar: terminal,
        world: None,
    };
    let s1 = train::run(&sft, &opts)?;
    let orpo = TrainConfig::resolve(
        Some("tiny"),
        None,
        &[
            "job=demo-orpo".into(),
            "method=orpo".into(),
            "data.packing=false".into(),
            "data.prompt_format=chatml".into(),
            "hyperparameters.learning_rate=5e-4".into(),
            "hyperparameters.max_steps=24".into(),
            format!("model.path={d}/sft-model"),
            format!("data.train=[{d}/data/preference.parquet]"),
            format!("checkpoint.dir={d}/checkpoints"),
            format!("output_dir={d}/orpo-model"),
            "checkpoint.resume=false".into(),
        ],
    )?;
    let s2 = train::run(&orpo, &opts)?;
    println!(
        "\njanus demo: tiny Mistral-style model on {} sample records, CPU",
        s1.records
    );
    for s in [&s1, &s2] {
        print_summary(s);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    println!(
        "  {:<5} {:>3} steps  loss {:.4} -> {:.4}  {:>8.0} tokens/s  checkpoint {}  model {}",
        format!("{:?}", s.method).to_uppercase(),
        s.steps_completed,
        s.first_loss.unwrap_or(f64::NAN),
        s.last_loss.unwrap_or(f64::NAN),
        s.tokens_per_second,
        s.last_checkpoint.clone().unwrap_or_default(),
        s.output_dir.clone().unwrap_or_default(),
    );
}

/// Peak resident set size of this process, from /proc.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct BenchTrainOpts {
    seq: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    kind: tch::Kind,
    nccl: bool,
    peak_tflops: f64,
}

fn bench_train(cfg: &ModelConfig, o: &BenchTrainOpts) -> Result<()> {
    let BenchTrainOpts {
        seq,
        batch,
        steps,
        warmup,
        kind,
        ..
    } = *o;
    tch::manual_seed(0);
    let device = tch::Device::cuda_if_available();
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut trainer = Trainer::new(cfg, kind, device, adam, 1.0);
    // Under `janus launch` every rank trains its own batch, data-parallel.
    let rank = match Role::from_env()? {
        Role::Rank(info) if info.world_size > 1 || o.nccl => {
            let id = if o.nccl && info.rank == 0 {
                Some(nccl::unique_id()?)
            } else {
                None
            };
            let peers = rendezvous(&info, "bench", std::time::Duration::from_secs(120), id)?;
            if o.nccl {
                let id = peers.blob.unwrap_or_default();
                trainer.set_collective(Box::new(Nccl::new(
                    info.rank,
                    info.world_size,
                    info.local_rank,
                    &id,
                )?));
            } else {
                trainer.set_collective(Box::new(peers.ring));
            }
            info.rank
        }
        _ => 0,
    };
    let examples: Vec<Example> = (0..batch)
        .map(|_| {
            let t = tch::Tensor::randint(
                cfg.vocab_size as i64,
                [seq as i64 + 1],
                (tch::Kind::Int64, tch::Device::Cpu),
            );
            Example {
                tokens: Vec::<i64>::try_from(t).expect("int64 tokens"),
                prompt_len: 1,
            }
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let b = Batch::unpacked(&refs, 2, device);
        let t = Instant::now();
        let r = trainer.sft_step(std::slice::from_ref(&b), 1e-4)?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        if !r.loss.is_finite() {
            return Err(Error::Data(format!(
                "non-finite loss {} at bench step {i}",
                r.loss
            )));
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let world = trainer.comm.world_size();
    let tokens_per_second = (seq * batch * world) as f64 / mean;
    // Model FLOPs utilisation as the issue defines it: 6 x params x tokens / peak.
    let mfu = device.is_cuda().then(|| {
        6.0 * cfg.num_parameters() as f64 * tokens_per_second
            / world as f64
            / (o.peak_tflops * 1e12)
    });
    let out = serde_json::json!({
        "impl": "janus", "params": cfg.num_parameters(), "seq": seq, "batch": batch, "ranks": world,
        "device": format!("{device:?}"), "dtype": format!("{kind:?}"), "nccl": o.nccl,
        "threads": tch::get_num_threads(), "step_seconds": times,
        "tokens_per_second": tokens_per_second, "mfu": mfu, "peak_rss_mib": peak_rss_mib(),
    });
    if rank == 0 {
        println!("{out}");
    }
    Ok(())
}

/// Time the ring all-reduce at several sizes (f32). Bus bandwidth as NCCL reports it:
/// bytes * 2 (n - 1) / n / seconds.
fn bench_allreduce(sizes_mib: &[usize], iters: usize, warmup: usize) -> Result<()> {
    let Role::Rank(info) = Role::from_env()? else {
        return Err(Error::Config(
            "bench-allreduce runs as one rank: start it with `janus launch --nproc N --`".into(),
        ));
    };
    let mut ring = rendezvous(&info, "bench", std::time::Duration::from_secs(60), None)?.ring;
    let n = info.world_size as f64;
    for &mib in sizes_mib {
        let elems = (mib << 20) / 4;
        let mut t = tch::Tensor::ones([elems as i64], (tch::Kind::Float, tch::Device::Cpu));
        let mut times = Vec::new();
        for i in 0..warmup + iters {
            ring.barrier()?;
            let start = Instant::now();
            ring.all_reduce_sum(&mut t)?;
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
            let out = serde_json::json!({
                "impl": "janus-ring", "world_size": info.world_size, "mib": mib, "median_seconds": median,
                "bus_gb_per_s": bytes * 2.0 * (n - 1.0) / n / median / 1e9,
            });
            println!("{out}");
        }
    }
    Ok(())
}

fn bench_checkpoint(model: &Path, dir: &str, reps: usize) -> Result<()> {
    use janus::checkpoint::{restore, CheckpointDir, DataCursor, TrainerState};
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
    let mut bytes = 0u64;
    for rep in 0..reps {
        let state = TrainerState {
            step: rep as u64 + 1,
            total_steps: reps as u64,
            cursor: DataCursor {
                epoch: 0,
                position: 0,
                seed: 0,
            },
            learning_rate: 0.0,
            config_hash: "bench".into(),
            tokenizer: "bench".into(),
            world_size: 1,
            tokens_seen: 0,
            losses: vec![],
        };
        let t = Instant::now();
        ckpt.save(
            &trainer.vs,
            &cfg,
            &model.join("tokenizer.json"),
            &trainer.opt,
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
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let out = serde_json::json!({
        "dir": dir, "params": cfg.num_parameters(), "checkpoint_bytes": bytes,
        "save_seconds": median(&mut save), "load_seconds": median(&mut load),
    });
    println!("{out}");
    Ok(())
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
