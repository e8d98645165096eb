//! The `janus` trainer: Mistral/Llama SFT and ORPO on libtorch.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod generate;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod model_dir;
pub mod openai;
pub mod openai_batch;
pub mod optim;
pub mod plan;
pub mod progress;
pub mod report;
pub mod sample;
pub mod scratch;
pub mod serve;
pub mod stage_log;
pub mod storage;
pub mod synth;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
