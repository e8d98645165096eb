//! The trainer config: the one definition lives in `janus_crds::config` (shared with
//! the operator, which renders it); this adds what only the trainer needs (libtorch
//! kinds) and maps its errors to the trainer's.

pub use janus_crds::config::*;

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Config(e.0)
    }
}

/// The libtorch kind of a config dtype.
pub fn kind(d: Dtype) -> tch::Kind {
    match d {
        Dtype::Float32 => tch::Kind::Float,
        Dtype::Bfloat16 => tch::Kind::BFloat16,
    }
}
