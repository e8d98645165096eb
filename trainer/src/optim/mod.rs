//! Optimisation: AdamW on plain tensors and the cosine schedule (`adamw`), and the
//! optimizer of a run over a model's parameters, replicated or sharded across the ranks
//! (`optimizer`). Below both the training loop and the checkpoints, which save and
//! restore its state.

mod adamw;
mod optimizer;

pub use adamw::{adamw_update, adamw_update_scaled, clip_grad_norm, cosine_lr, AdamWConfig};
pub use optimizer::{Bucket, Layout, Optimizer, Reduction};
