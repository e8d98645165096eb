//! The Janus operator: one controller layer (`controller/`: the run loop, server-side
//! apply, expectations, conditions and Events, the lifecycle, stuck states) under each
//! kind, the JanusTrainingJob (`training/`: gang restarts) and the JanusEvalJob
//! (`eval/`: generation shards, the judge, scores); their HTTP endpoints, metrics and
//! leader election.

pub mod controller;
pub mod error;
pub mod eval;
pub mod events;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod report;
pub mod security;
pub mod telemetry;
pub mod training;
pub mod watch;

pub use controller::Settings;

/// Select rustls's crypto provider before any client is built. kube's TLS brings
/// rustls with `ring`; in a workspace build the trainer's object_store/reqwest add
/// `aws-lc-rs`, and rustls with two providers and no default panics on first use.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What holds across kinds is tested here, above them: neither kind imports the other.
#[cfg(test)]
mod across_kinds {
    use crate::{eval, training};

    #[test]
    fn no_child_name_of_an_evaluation_is_a_training_jobs() {
        // A training job `e-eval` and an evaluation `e` once shared ConfigMap
        // `e-eval-config`, each overwriting the other's config.
        for e in ["e", "e-eval", "sft", "a-b"] {
            for t in [
                format!("{e}-eval"),
                format!("{e}-eval-settings"),
                e.to_string(),
            ] {
                assert_ne!(
                    eval::children::config_map_name(e),
                    training::children::config_map_name(&t),
                    "{e} {t}"
                );
                assert_ne!(
                    eval::children::rbac_name(e),
                    training::children::rbac_name(&t),
                    "{e} {t}"
                );
            }
        }
    }
}
