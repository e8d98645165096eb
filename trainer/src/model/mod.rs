//! Decoder-only transformer covering the Mistral and Llama families.
//!
//! Variable paths mirror Hugging Face tensor names
//! (`model.layers.{i}.self_attn.q_proj.weight`), so safetensors load and save with
//! no renaming table.

mod config;
mod kv_cache;
mod segments;
mod transformer;
mod varlen;
mod weights;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use segments::Segments;
pub use transformer::{masks_built, AttentionLayout, LayerContext, Transformer};
pub use varlen::{attention_kernel, fallback_calls, flash_varlen, AttentionKernel};
pub use weights::{
    load_model_dir, load_reward_init, model_files, safetensors_header, save_model, save_model_dir,
    tensors_to_safetensors, ModelFiles, SafetensorsFile, SafetensorsWriter, TensorSpec,
    SHARD_INDEX,
};
