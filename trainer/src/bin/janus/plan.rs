//! `janus plan`: the memory plan of a training config, per rank, against a device size.

use std::path::PathBuf;

use clap::Args;
use janus::config::{ByteSize, DeviceChoice, TrainConfig};
use janus::model::ModelConfig;
use janus::plan::{device_limit, micro_batch_tokens, Plan, Target};
use janus::{Error, Result};

use crate::make::{arch_config, Arch};

#[derive(Args)]
pub struct PlanArgs {
    /// Config file (as for `train`).
    #[arg(long, env = "JANUS_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    preset: Option<String>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Ranks per node (GPUs per pod).
    #[arg(long, default_value_t = 1)]
    nproc: usize,
    /// Nodes (worker pods).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// Memory of one device (`80GiB`); default: memory.limit, else this machine's.
    #[arg(long, value_parser = ByteSize::parse)]
    gpu_memory: Option<ByteSize>,
    /// An HF config.json to plan for instead of `model.path`'s.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Architecture to plan for when `model.path` has no config.json.
    #[arg(long, value_enum, default_value = "mistral7b")]
    arch: Arch,
}

pub fn run(a: PlanArgs) -> Result<()> {
    let cfg = TrainConfig::resolve(a.preset.as_deref(), a.config.as_deref(), &a.overrides)?;
    let own = cfg.model.path.join("config.json");
    let model = match &a.model_config {
        Some(p) => ModelConfig::from_file(p)?,
        None if own.exists() => ModelConfig::from_file(&own)?,
        None => {
            eprintln!(
                "note: {} not found; planning for the `--arch {}` architecture (--model-config or --arch to change)",
                own.display(),
                format!("{:?}", a.arch).to_lowercase()
            );
            arch_config(a.arch)
        }
    };
    let ranks = a.nproc * a.nnodes;
    let target = match cfg.model.device {
        DeviceChoice::Cpu => Target::Cpu,
        _ => Target::Cuda,
    };
    let plan = Plan::new(&cfg, &model, ranks, target);
    let limit = a.gpu_memory.map(|b| b.0).or_else(|| {
        let device = match target {
            Target::Cuda if tch::Cuda::is_available() => tch::Device::Cuda(0),
            Target::Cuda => return cfg.memory.limit.map(|b| b.0),
            Target::Cpu => tch::Device::Cpu,
        };
        device_limit(&cfg, device)
    });
    println!(
        "memory plan of job {}: {} ({:.2}B parameters, {} layers), {ranks} rank(s), {}{}{}, micro batch {} tokens{}, {}",
        cfg.job,
        model.architectures.first().map(String::as_str).unwrap_or(&model.model_type),
        plan.parameters as f64 / 1e9,
        model.num_hidden_layers,
        cfg.model.dtype.as_str(),
        if cfg.uses_master_weights() { " with fp32 master weights" } else { "" },
        if cfg.shards_optimizer(ranks) { ", ZeRO-1" } else { "" },
        micro_batch_tokens(&cfg),
        if cfg.data.packing { " (packed)" } else { "" },
        match target {
            Target::Cuda => "CUDA",
            Target::Cpu => "CPU",
        }
    );
    print!("{}", plan.render(limit));
    match limit {
        Some(l) if plan.total() > l => Err(Error::Config(format!(
            "the plan needs {} per rank, more than {}",
            ByteSize(plan.total()),
            ByteSize(l)
        ))),
        _ => Ok(()),
    }
}
