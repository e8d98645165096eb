//! The progress report rank 0 publishes as the `janus.dev/progress` annotation on its
//! own pod (a per-job Role allows `get`/`patch` on exactly that pod). The operator
//! mirrors it into `status.progress` of the job.

use serde::{Deserialize, Serialize};

/// JSON value of the [`crate::annotations::PROGRESS`] annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Optimizer steps completed.
    pub step: u64,
    /// Optimizer steps the schedule is sized for.
    pub total_steps: u64,
    /// Loss of the latest logged step (absent before the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Training throughput over all ranks, tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// URL of the newest complete checkpoint (`<ckpt-url>/<job>/step-<N>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<String>,
    /// When the trainer wrote this report (RFC 3339, UTC).
    pub updated_at: String,
}

impl Progress {
    /// Parse the annotation value; `None` for a malformed one (the operator keeps the
    /// last good progress rather than failing a reconcile on a trainer's typo).
    pub fn from_annotation(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("progress serializes")
    }
}

/// How rank 0 publishes a report with its pod's ServiceAccount (no Kubernetes client
/// library needed): `PATCH https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT<path>`
/// with `Content-Type: application/merge-patch+json`, `Authorization: Bearer <token>`
/// (token and CA from [`SERVICE_ACCOUNT_DIR`]), the pod and namespace from
/// `JANUS_POD_NAME` / `JANUS_POD_NAMESPACE`.
pub mod publish {
    use super::Progress;

    /// Mounted ServiceAccount credentials: `token` and `ca.crt` in this directory.
    pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    /// Content type of the patch.
    pub const CONTENT_TYPE: &str = "application/merge-patch+json";

    /// API path of the pod.
    pub fn path(namespace: &str, pod: &str) -> String {
        format!("/api/v1/namespaces/{namespace}/pods/{pod}")
    }

    /// JSON merge patch that sets the progress annotation.
    pub fn body(p: &Progress) -> String {
        serde_json::json!({
            "metadata": {"annotations": {crate::annotations::PROGRESS: p.to_annotation()}}
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_annotation_round_trips_with_camel_case_keys() {
        let p = Progress {
            step: 120,
            total_steps: 3004,
            loss: Some(1.25),
            tokens_per_second: Some(10500.0),
            last_checkpoint: Some("s3://ckpt/j/step-100".into()),
            updated_at: "2026-01-01T00:00:00Z".into(),
        };
        let s = p.to_annotation();
        assert!(s.contains("\"totalSteps\":3004") && s.contains("\"lastCheckpoint\""));
        assert!(s.contains("\"tokensPerSecond\"") && s.contains("\"updatedAt\""));
        assert_eq!(Progress::from_annotation(&s), Some(p));
    }

    #[test]
    fn publish_patch_sets_the_annotation_on_the_pod() {
        let p = Progress {
            step: 1,
            total_steps: 2,
            loss: None,
            tokens_per_second: None,
            last_checkpoint: None,
            updated_at: "t".into(),
        };
        assert_eq!(
            publish::path("ns", "j-worker-0"),
            "/api/v1/namespaces/ns/pods/j-worker-0"
        );
        let v: serde_json::Value = serde_json::from_str(&publish::body(&p)).unwrap();
        let ann = v["metadata"]["annotations"]["janus.dev/progress"]
            .as_str()
            .unwrap();
        assert_eq!(Progress::from_annotation(ann), Some(p));
    }

    #[test]
    fn malformed_progress_is_ignored() {
        assert_eq!(Progress::from_annotation("{\"step\": \"x\"}"), None);
        let minimal =
            Progress::from_annotation(r#"{"step":1,"totalSteps":2,"updatedAt":"t"}"#).unwrap();
        assert_eq!(minimal.loss, None);
    }
}

/// JSON value of the [`crate::annotations::EVAL_PROGRESS`] annotation, written by each
/// pod of a `JanusEvalJob` on itself (generation workers, the judge); the operator
/// mirrors it into the job's status: a generation pod's `items_*` into
/// `status.shards[i]` (summed into `status.progress`), the judge pod's `calls_*`,
/// `parse_failures` and `scores` into `status.progress` and `status.scores`. The
/// writer needs only `get`/`patch` of its own pod (the per-job Role `<job>-eval`), as
/// [`publish`] describes for the training progress, with this annotation key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    /// `generate`, `judge` or `score`.
    pub stage: String,
    /// Items this pod has finished (generated, or fully graded) and has to do.
    pub items_done: u64,
    pub items_total: u64,
    /// Judge calls answered (with a score or counted as failures) and to make.
    #[serde(default)]
    pub calls_done: u64,
    #[serde(default)]
    pub calls_total: u64,
    /// Judge answers without a parsable 1-5 score after the retries.
    #[serde(default)]
    pub parse_failures: u64,
    /// Set by the judge pod once scores are computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<ScoreSummary>,
    pub updated_at: String,
}

/// The headline numbers of `summary.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScoreSummary {
    /// Mean over items of the per-item mean over rubrics (1-5), averaged over runs.
    pub mean: f64,
    /// Standard deviation of the mean over judge runs.
    #[serde(default)]
    pub std: f64,
    #[serde(default)]
    pub per_dimension: std::collections::BTreeMap<String, f64>,
    /// Against the baseline: fractions of items won, tied and lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lose: Option<f64>,
}

impl EvalReport {
    pub fn from_annotation(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }
}
