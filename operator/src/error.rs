//! The crate's one error type. Variant names are the `error` label of
//! `janus_operator_reconcile_errors_total`.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("rendering the trainer config of {job}: {message}")]
    ConfigRender { job: String, message: String },
    #[error("the pod template override of {job} is invalid: {message}")]
    TemplateOverride { job: String, message: String },
    #[error("the eval config of {job} is invalid: {message}")]
    EvalConfig { job: String, message: String },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("Kueue {object}: {message}")]
    Kueue { object: String, message: String },
    /// An object holds a child's name and the job does not control it.
    #[error("{object} exists and {holder}, not this job: it is left alone (delete or rename it for the job to start)")]
    ChildConflict { object: String, holder: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every value of [`Error::metric_label`]: the error counter starts with each at 0,
    /// so `rate()` over it has a series (0 while nothing fails) from the first scrape.
    pub const METRIC_LABELS: [&'static str; 7] = [
        "Kube",
        "ConfigRender",
        "TemplateOverride",
        "EvalConfig",
        "MissingField",
        "Kueue",
        "ChildConflict",
    ];

    /// Metric label: the variant name.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "Kube",
            Error::ConfigRender { .. } => "ConfigRender",
            Error::TemplateOverride { .. } => "TemplateOverride",
            Error::EvalConfig { .. } => "EvalConfig",
            Error::MissingField(_) => "MissingField",
            Error::Kueue { .. } => "Kueue",
            Error::ChildConflict { .. } => "ChildConflict",
        }
    }
}

/// True for an API error with this HTTP status code.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_label_is_listed() {
        for e in [
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::ConfigRender {
                job: "j".into(),
                message: "m".into(),
            },
            Error::TemplateOverride {
                job: "j".into(),
                message: "m".into(),
            },
            Error::EvalConfig {
                job: "j".into(),
                message: "m".into(),
            },
            Error::MissingField("f"),
            Error::Kueue {
                object: "o".into(),
                message: "m".into(),
            },
            Error::ChildConflict {
                object: "o".into(),
                holder: "h".into(),
            },
        ] {
            assert!(Error::METRIC_LABELS.contains(&e.metric_label()), "{e}");
        }
    }
}
