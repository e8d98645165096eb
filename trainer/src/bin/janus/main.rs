//! `janus`: train, make models and data, benchmark. `main` only dispatches; each
//! command lives in its own module.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod checkpoint_stall;
mod data;
mod demo;
mod eval;
mod launch;
mod make;
mod plan;
mod serve;
mod synthesize;
mod train;

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
    Train(train::TrainArgs),
    /// The memory plan of a training config per rank, against a device size
    /// (`janus plan --preset janus-7b-sft --nproc 4 --gpu-memory 80GiB`).
    Plan(plan::PlanArgs),
    /// Shard a dataset for streaming; stream a rank's share of one; inspect how a
    /// config tokenises its examples.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Start N local ranks of a janus command (one per GPU, or CPU processes):
    /// `janus launch --nproc 2 -- train --config job.yaml`.
    Launch(launch::LaunchArgs),
    /// Write a random model and its tokenizer as a Hugging Face directory.
    InitModel(make::InitModelArgs),
    /// Write small synthetic SFT, preference and bench data (JSONL and Parquet).
    SampleData(make::SampleDataArgs),
    /// Everything on a fresh machine: sample data, tiny model, SFT then ORPO, summary.
    Demo(demo::DemoArgs),
    /// Time training steps of a model on random tokens; prints one JSON line.
    BenchTrain(bench::BenchTrainArgs),
    /// All-reduce bandwidth of the CPU ring (run under `janus launch`); rank 0 prints
    /// one JSON line per size.
    BenchAllreduce(bench::BenchAllreduceArgs),
    /// An OpenAI-compatible HTTP server (chat completions, completions, models,
    /// health, metrics) on a model directory.
    Serve(serve::ServeArgs),
    /// The Multifaceted Bench protocol: generate answers, grade them with a judge,
    /// score them (each stage resumable).
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Seconds to save and to find + load a checkpoint (model and AdamW state) of the
    /// model in --model, to --dir (a path or URL); prints one JSON line.
    BenchCheckpoint(bench::BenchCheckpointArgs),
}

fn main() {
    let cli = Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    janus::progress::init_logging(terminal);
    if let Err(e) = run(cli.command, terminal) {
        tracing::error!(error = %e, exit_code = e.exit_code(), "janus failed");
        eprintln!("error: {e}");
        janus::report::write_termination_message(&e.to_string());
        std::process::exit(e.exit_code());
    }
}

fn run(cmd: Command, terminal: bool) -> janus::Result<()> {
    match cmd {
        Command::Train(a) => train::run(a, terminal),
        Command::Plan(a) => plan::run(a),
        Command::Data { command } => data::run(command, terminal),
        Command::Launch(a) => launch::run(a),
        Command::InitModel(a) => make::init_model(a),
        Command::SampleData(a) => make::sample_data(a),
        Command::Demo(a) => demo::run(&a.dir, terminal),
        Command::BenchTrain(a) => bench::train(a),
        Command::BenchAllreduce(a) => bench::allreduce(a),
        Command::BenchCheckpoint(a) => bench::checkpoint(a),
        Command::Serve(a) => serve::run(a),
        Command::Eval { command } => eval::run(command, terminal),
    }
}
