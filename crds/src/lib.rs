//! API types shared by the operator and the trainer.
//!
//! For now this holds the operator <-> trainer contract from `shared/DESIGN.md`
//! (environment variable names and exit codes), so both sides name them once.
//! The `JanusTrainingJob` / `JanusEvalJob` custom resources land here next.

/// API group of the custom resources.
pub const GROUP: &str = "janus.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";

/// Environment variables the operator sets on every worker pod.
pub mod env {
    pub const JOB: &str = "JANUS_JOB";
    pub const NODE_RANK: &str = "JANUS_NODE_RANK";
    pub const NNODES: &str = "JANUS_NNODES";
    pub const NPROC_PER_NODE: &str = "JANUS_NPROC_PER_NODE";
    pub const MASTER_ADDR: &str = "JANUS_MASTER_ADDR";
    pub const MASTER_PORT: &str = "JANUS_MASTER_PORT";
    pub const ATTEMPT: &str = "JANUS_ATTEMPT";
    pub const CONFIG: &str = "JANUS_CONFIG";
}

/// Process exit codes of the `janus` trainer.
pub mod exit_code {
    /// Training finished.
    pub const SUCCESS: i32 = 0;
    /// Bad input (invalid config, malformed data, missing model files): retrying cannot
    /// help, so the operator fails the job at once instead of counting a retry.
    pub const BAD_INPUT: i32 = 64;
    /// Anything else (I/O, a lost peer, an out-of-memory kill) is retryable; the trainer
    /// uses this code for errors it recognises as transient.
    pub const RETRYABLE: i32 = 75;
}
