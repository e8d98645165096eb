//! `janus demo`: the README's first command on a fresh machine.

use std::path::{Path, PathBuf};

use clap::Args;
use janus::config::TrainConfig;
use janus::sample::{self, TokenizerSource};
use janus::train::{self, RunOptions, Summary};
use janus::Result;

use crate::make::{arch_config, corpus_of, Arch};

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "target/janus-demo")]
    pub dir: PathBuf,
}

/// The README's first command: data, model, SFT, then ORPO from the SFT model.
pub fn run(dir: &Path, terminal: bool) -> Result<()> {
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
