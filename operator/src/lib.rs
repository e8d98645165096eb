//! The Janus operator: the JanusTrainingJob controller (`training/`: gang restarts,
//! status, events) and the JanusEvalJob controller (`eval/`: generation shards, the
//! judge, scores), their HTTP endpoints, metrics and leader election.

pub mod error;
pub mod eval;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod report;
pub mod security;
pub mod telemetry;
pub mod training;
pub mod watch;

/// What both controllers run with, besides their clients and metrics.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// This replica's name (Events' reporting instance).
    pub identity: String,
    /// Watch only this namespace (None: all).
    pub namespace: Option<String>,
    /// The operator's report endpoint as pods reach it (`JANUS_REPORT_URL`); None: pods
    /// do not report progress.
    pub report_url: Option<String>,
    /// Reconciles in flight at once, per controller (None: each controller's default).
    pub concurrency: Option<u16>,
}

/// Select rustls's crypto provider before any client is built. kube's TLS brings
/// rustls with `ring`; in a workspace build the trainer's object_store/reqwest add
/// `aws-lc-rs`, and rustls with two providers and no default panics on first use.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
