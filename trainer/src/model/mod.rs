//! Decoder-only transformer covering the Mistral and Llama families.
//!
//! Variable paths mirror Hugging Face tensor names
//! (`model.layers.{i}.self_attn.q_proj.weight`), so safetensors load and save with
//! no renaming table.

mod config;
mod transformer;
mod weights;

pub use config::ModelConfig;
pub use transformer::{AttentionMask, Transformer};
pub use weights::{load_model_dir, save_model_dir, tensors_to_safetensors, SHARD_INDEX};
