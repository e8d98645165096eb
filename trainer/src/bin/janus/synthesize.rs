//! `janus data synthesize`: Multifaceted-Collection-style data from instructions,
//! through any OpenAI-compatible endpoint, over the output directory of one synthesis
//! config (`--config`, or the file `JANUS_CONFIG` names) with `key=value` overrides.
//! Every stage resumes: a rerun asks only what has no record.

use std::path::PathBuf;

use clap::Args;
use janus::config::SynthConfig;
use janus::synth::progress::SynthProgress;
use janus::synth::stages;
use janus::Result;
use janus_crds::env;

#[derive(Args)]
pub struct SynthesizeArgs {
    /// Synthesis config (YAML or JSON); default: the file `JANUS_CONFIG` names, if set.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Instructions (JSONL or Parquet, a path or URL): shortcut for `input.path=...`.
    #[arg(long)]
    input: Option<String>,
    /// Output directory (a path or URL): shortcut for `output_dir=...`.
    #[arg(long)]
    output: Option<String>,
    /// Base URL of the OpenAI-compatible API (`llm.url`).
    #[arg(long)]
    llm_url: Option<String>,
    /// Model name sent to it (`llm.model`).
    #[arg(long)]
    llm_model: Option<String>,
    /// Run only these stages (repeatable; `synthesis.stages`): preferences, system,
    /// answers, rubrics, pairs.
    #[arg(long = "stage")]
    stages: Vec<String>,
    /// `key=value` overrides of the config (`llm.concurrency=16`, `input.limit=100`).
    overrides: Vec<String>,
}

fn config(a: &SynthesizeArgs) -> Result<SynthConfig> {
    let file = a
        .config
        .clone()
        .or_else(|| std::env::var_os(env::CONFIG).map(PathBuf::from));
    let mut overrides = a.overrides.clone();
    for (key, v) in [
        ("input.path", &a.input),
        ("output_dir", &a.output),
        ("llm.url", &a.llm_url),
        ("llm.model", &a.llm_model),
    ] {
        if let Some(v) = v {
            overrides.push(format!("{key}={v}"));
        }
    }
    if !a.stages.is_empty() {
        overrides.push(format!("synthesis.stages=[{}]", a.stages.join(", ")));
    }
    Ok(SynthConfig::resolve(file.as_deref(), &overrides)?)
}

pub fn run(a: SynthesizeArgs, terminal: bool) -> Result<()> {
    let cfg = config(&a)?;
    let mut progress = SynthProgress::new(terminal);
    let s = stages::run(&cfg, &mut progress)?;
    println!("{}", serde_json::to_string(&s).expect("summary serializes"));
    Ok(())
}
