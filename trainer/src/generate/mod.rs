//! Generation: an explicit KV cache (in `model`), batched prefill and decode with
//! ragged (left-padded) prompts, Hugging Face's logits processors, seeded sampling,
//! stop strings and EOS; the engine that keeps a batch running as sequences come and
//! go. `janus serve` and `janus eval generate` are built on it.

pub mod chat;
mod engine;
mod loaded;
pub mod sampling;
mod text;

pub use engine::{Completion, Engine, EngineOptions, Event, FinishReason, Request, SeqId};
pub use loaded::LoadedModel;
pub use sampling::SamplingParams;
pub use text::{TextTracker, TextUpdate};
