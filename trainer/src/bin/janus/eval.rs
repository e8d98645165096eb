//! `janus eval generate|judge|score`: the Multifaceted Bench protocol, one resumable
//! stage per command, over the output directory of one eval config (`--config`, or
//! the file `JANUS_CONFIG` names in a pod) with `key=value` overrides.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use janus::config::EvalConfig;
use janus::eval::generation::{self, Shard};
use janus::eval::progress::StageProgress;
use janus::eval::{judge, report, score};
use janus::{Error, Result};
use janus_crds::env;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Generate answers for this shard's bench items (`answers/shard-<i>.jsonl`).
    Generate(GenerateArgs),
    /// Grade every answer by every rubric with the judge (`grades.jsonl`).
    Judge(JudgeArgs),
    /// Scores, win rates and the report (`results.json`, `summary.json`, `report.md`).
    Score(ScoreArgs),
}

#[derive(Args)]
pub struct Common {
    /// Eval config (YAML or JSON); default: the file `JANUS_CONFIG` names, if set.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory (a path or URL): shortcut for `output_dir=...`.
    #[arg(long)]
    output: Option<String>,
    /// `key=value` overrides of the config (`judge.runs=1`, `bench.limit=10`).
    overrides: Vec<String>,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    common: Common,
    /// This worker's shard (default: `JANUS_NODE_RANK`, else 0).
    #[arg(long)]
    shard: Option<usize>,
    /// Number of shards (default: `JANUS_NNODES`, else 1).
    #[arg(long)]
    num_shards: Option<usize>,
    /// Samples per item; the reward model keeps the best (`generation.best_of`).
    #[arg(long)]
    best_of: Option<usize>,
    /// Reward model directory that ranks best-of-N samples (`generation.reward_model`).
    #[arg(long)]
    reward_model: Option<String>,
}

#[derive(Args)]
pub struct JudgeArgs {
    #[command(flatten)]
    common: Common,
    /// Base URL of the OpenAI-compatible judge API (`judge.url`).
    #[arg(long)]
    judge_url: Option<String>,
    /// Model name sent to the judge (`judge.model`).
    #[arg(long)]
    judge_model: Option<String>,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    common: Common,
    /// Another evaluation's `results.json` to compare with (`baseline`).
    #[arg(long)]
    baseline: Option<String>,
}

fn config(c: &Common, extra: Vec<String>) -> Result<EvalConfig> {
    let file = c
        .config
        .clone()
        .or_else(|| std::env::var_os(env::CONFIG).map(PathBuf::from));
    let mut overrides = c.overrides.clone();
    if let Some(o) = &c.output {
        overrides.push(format!("output_dir={o}"));
    }
    overrides.extend(extra);
    Ok(EvalConfig::resolve(file.as_deref(), &overrides)?)
}

fn env_number(var: &str) -> Result<Option<usize>> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|_| {
            Error::Config(format!("environment variable {var}=`{v}` is not a number"))
        }),
        _ => Ok(None),
    }
}

fn shard(a: &GenerateArgs) -> Result<Shard> {
    let index = match a.shard {
        Some(i) => i,
        None => env_number(env::NODE_RANK)?.unwrap_or(0),
    };
    let count = match a.num_shards {
        Some(n) => n,
        None => env_number(env::NNODES)?.unwrap_or(1),
    };
    if count == 0 || index >= count {
        return Err(Error::Config(format!(
            "shard {index} of {count}: the shard must be below the number of shards"
        )));
    }
    Ok(Shard { index, count })
}

pub fn run(cmd: EvalCommand, terminal: bool) -> Result<()> {
    match cmd {
        EvalCommand::Generate(a) => generate(a, terminal),
        EvalCommand::Judge(a) => judge_stage(a, terminal),
        EvalCommand::Score(a) => score_stage(a, terminal),
    }
}

fn generate(a: GenerateArgs, terminal: bool) -> Result<()> {
    let mut extra = vec![];
    if let Some(n) = a.best_of {
        extra.push(format!("generation.best_of={n}"));
    }
    if let Some(m) = &a.reward_model {
        extra.push(format!("generation.reward_model={m}"));
    }
    let cfg = config(&a.common, extra)?;
    let shard = shard(&a)?;
    let reranker = match &cfg.generation.reward_model {
        Some(path) if cfg.generation.best_of > 1 => Some(generation::reward_model(path, &cfg)?),
        _ => None,
    };
    let mut progress = StageProgress::new("generate", terminal);
    let s = generation::run(&cfg, shard, reranker, &mut progress)?;
    println!("{}", serde_json::to_string(&s).expect("summary serializes"));
    Ok(())
}

fn judge_stage(a: JudgeArgs, terminal: bool) -> Result<()> {
    let mut extra = vec![];
    if let Some(u) = &a.judge_url {
        extra.push(format!("judge.url={u}"));
    }
    if let Some(m) = &a.judge_model {
        extra.push(format!("judge.model={m}"));
    }
    let cfg = config(&a.common, extra)?;
    let mut progress = StageProgress::new("judge", terminal);
    let s = judge::run(&cfg, &mut progress)?;
    progress.finish();
    println!("{}", serde_json::to_string(&s).expect("summary serializes"));
    Ok(())
}

fn score_stage(a: ScoreArgs, terminal: bool) -> Result<()> {
    let extra = a.baseline.iter().map(|b| format!("baseline={b}")).collect();
    let cfg = config(&a.common, extra)?;
    let mut progress = StageProgress::new("score", terminal);
    let r = score::run(&cfg, &mut progress)?;
    print!("{}", report::table(&r));
    println!(
        "results: {}",
        janus_crds::config::eval::output_path(&cfg.output_dir, janus::eval::RESULTS)
    );
    Ok(())
}
