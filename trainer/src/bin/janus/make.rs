//! `janus init-model` and `janus sample-data`: random HF models and synthetic data for
//! tests, the demo and benchmarks.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use janus::model::ModelConfig;
use janus::sample::{self, TokenizerSource};
use janus::{Error, Result};

use crate::args::DtypeArg;

#[derive(Args)]
pub struct InitModelArgs {
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
}

#[derive(Args)]
pub struct SampleDataArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 96)]
    instructions: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Arch {
    TinyMistral,
    TinyLlama,
    Mistral7b,
}

pub fn init_model(a: InitModelArgs) -> Result<()> {
    let model_config = match a.config {
        Some(p) => ModelConfig::from_file(&p)?,
        None => arch_config(a.arch),
    };
    let source = match a.tokenizer {
        Some(p) => TokenizerSource::File(p),
        None if a.train_tokenizer_on.is_empty() => {
            return Err(Error::Config(
                "init-model needs --tokenizer or --train-tokenizer-on <data files>".into(),
            ))
        }
        None => TokenizerSource::Train {
            corpus: corpus_of(&a.train_tokenizer_on)?,
            vocab_size: a.vocab_size,
        },
    };
    let c = sample::init_model(&a.out, model_config, source, a.dtype.kind(), a.seed)?;
    println!(
        "{}: {} parameters, vocab {}",
        a.out.display(),
        c.num_parameters(),
        c.vocab_size
    );
    Ok(())
}

pub fn sample_data(a: SampleDataArgs) -> Result<()> {
    for f in sample::write_sample_data(&a.out, a.instructions, a.seed)? {
        println!("{}", f.display());
    }
    Ok(())
}

pub fn arch_config(arch: Arch) -> ModelConfig {
    match arch {
        Arch::TinyMistral => ModelConfig::small("mistral", 1024, 128, 344, 2, 4, 2),
        Arch::TinyLlama => ModelConfig::small("llama", 1024, 128, 344, 2, 4, 2),
        Arch::Mistral7b => ModelConfig::mistral_7b_v02(),
    }
}

pub fn corpus_of(files: &[PathBuf]) -> Result<Vec<String>> {
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
