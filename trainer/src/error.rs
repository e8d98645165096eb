//! The trainer's error type. Every variant says whether retrying can help, which
//! decides the process exit code the operator acts on (docs/design.md).

use janus_crds::exit_code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job's config is invalid: the message names the file and key.
    #[error("invalid config: {0}")]
    Config(String),
    /// A data file or record is malformed: the message names the file and line/row.
    #[error("bad data: {0}")]
    Data(String),
    /// A model directory is unusable (config.json, safetensors, tokenizer).
    #[error("bad model: {0}")]
    Model(String),
    /// A checkpoint cannot be used to resume this job.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Stopped by SIGTERM/SIGINT at a step boundary (with or without a checkpoint, as
    /// the message says).
    #[error("terminated: {0}")]
    Terminated(String),
    /// The fabric check before the first step found the collective below the job's
    /// threshold (`distributed.fabric_check`, action `fail`).
    #[error("fabric check failed: {0}")]
    Fabric(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this is an object or file that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Process exit code for this error: bad input is final, the rest is retryable.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Data(_) | Error::Model(_) => exit_code::BAD_INPUT,
            Error::Checkpoint(_) | Error::Io { .. } | Error::Torch(_) => exit_code::RETRYABLE,
            Error::Terminated(_) => exit_code::TERMINATED,
            Error::Fabric(_) => exit_code::FABRIC_CHECK_FAILED,
        }
    }
}

/// Attach a path to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
