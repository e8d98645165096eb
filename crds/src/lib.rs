//! API types shared by the operator and the trainer.
//!
//! Always available (no Kubernetes dependencies, so the trainer can use them): the
//! operator <-> trainer contract from `docs/design.md` (environment variable names,
//! exit codes, labels, the progress annotation and its JSON document), the trainer
//! config document with its presets (`config`), which the trainer parses and the
//! operator renders, and the storage URL schemes both accept (`url`).
//!
//! With the `k8s` feature: the `JanusTrainingJob` / `JanusEvalJob` custom resources
//! (kube `CustomResource`, schemars schemas with CEL validation rules).

pub mod config;
mod contract;
pub mod progress;

#[cfg(feature = "k8s")]
pub mod config_reference;
#[cfg(feature = "k8s")]
pub mod crd_yaml;
#[cfg(feature = "k8s")]
pub mod eval;
#[cfg(feature = "k8s")]
pub mod pods;
#[cfg(feature = "k8s")]
pub mod training;
pub mod url;

pub use contract::{
    annotations, defaults, env, exit_code, labels, GROUP, MAX_JSON_INTEGER, MAX_SECONDS, VERSION,
};
pub use progress::Progress;

#[cfg(feature = "k8s")]
pub use eval::{JanusEvalJob, JanusEvalJobSpec, JanusEvalJobStatus};
#[cfg(feature = "k8s")]
pub use training::{JanusTrainingJob, JanusTrainingJobSpec, JanusTrainingJobStatus};
pub use url::StorageUrl;
