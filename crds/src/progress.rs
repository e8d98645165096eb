//! The progress report rank 0 publishes, through the operator ([`publish`]), as the
//! `janus.dev/progress` annotation on its own pod. The operator mirrors it into
//! `status.progress` of the job.

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
    /// The fabric check of this run (every report after it carries it, so a report the
    /// operator missed costs nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<Fabric>,
}

/// The all-reduce bus bandwidth the whole gang measured before its first step, over
/// the collective training uses (nccl-tests' `busbw`: algorithm bandwidth, bytes over
/// the median time, times 2(n-1)/n).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Fabric {
    /// Bus bandwidth in GB/s (10^9 bytes per second): what each rank's links carried,
    /// comparable across rank counts and with nccl-tests' `busbw`.
    #[serde(rename = "busBandwidthGBps")]
    pub bus_bandwidth_gbps: f64,
    /// Algorithm bandwidth in GB/s: bytes all-reduced over the median time.
    #[serde(rename = "algorithmBandwidthGBps")]
    pub algorithm_bandwidth_gbps: f64,
    /// Bytes each rank all-reduced per iteration.
    pub size_bytes: u64,
    /// Ranks in the all-reduce.
    pub ranks: u32,
    /// The collective: `nccl` or `ring`.
    pub backend: String,
    /// Median seconds of one all-reduce over the timed iterations (the mean over ranks).
    pub seconds: f64,
    /// When the measurement ended (RFC 3339, UTC).
    pub measured_at: String,
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

/// How a pod hands a report to the operator. Pods hold no Kubernetes API permission:
/// the operator checks who sent a report and writes it as the annotation on the
/// sender's own pod. `POST $JANUS_REPORT_URL` (the operator's Service, path [`PATH`])
/// with `Authorization: Bearer <token>` and a JSON [`Report`]. The token is the pod's
/// projected ServiceAccount token at [`TOKEN_FILE`]: audience [`AUDIENCE`], bound to
/// the pod, so the operator learns the pod's name and UID from its TokenReview. The
/// operator answers 204, or 4xx/5xx with the reason as text; 429 (with `Retry-After`)
/// when it is busy or the pod reports more often than [`MIN_REPORT_INTERVAL_SECONDS`].
pub mod publish {
    use serde::{Deserialize, Serialize};

    /// Audience of the projected token: the API server itself refuses it, so a stolen
    /// report token opens nothing else.
    pub const AUDIENCE: &str = "janus.dev/operator";
    /// Where the operator mounts the projected token in every pod it creates.
    pub const TOKEN_DIR: &str = "/var/run/secrets/janus.dev/report";
    /// The token's file name in [`TOKEN_DIR`] (the projection's `path`).
    pub const TOKEN_NAME: &str = "token";
    /// [`TOKEN_DIR`]/[`TOKEN_NAME`] (re-read for each report: the kubelet rotates it).
    pub const TOKEN_FILE: &str = "/var/run/secrets/janus.dev/report/token";
    /// Lifetime the operator asks for (the kubelet renews it at 80%).
    pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
    /// Path of the operator's report endpoint.
    pub const PATH: &str = "/v1/report";
    /// The largest report body the operator reads.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    /// The largest report value the operator stores, as it re-serialises it (only the
    /// typed document's fields): a progress report is under 300 bytes, an evaluation's
    /// scores with a dozen rubrics under 1 KiB.
    pub const MAX_VALUE_BYTES: usize = 4 * 1024;
    /// The least time between two reports of one pod the operator writes; one sooner
    /// is answered 429 with `Retry-After` (the trainer sends the newest report at most
    /// once per interval, and retries with the next).
    pub const MIN_REPORT_INTERVAL_SECONDS: u64 = 1;

    /// Body of a report: set `annotation` (one of [`crate::annotations`]) to `value` on
    /// the sender's pod.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Report {
        pub annotation: String,
        pub value: String,
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
            fabric: None,
        };
        let s = p.to_annotation();
        assert!(s.contains("\"totalSteps\":3004") && s.contains("\"lastCheckpoint\""));
        assert!(s.contains("\"tokensPerSecond\"") && s.contains("\"updatedAt\""));
        assert_eq!(Progress::from_annotation(&s), Some(p));
    }

    #[test]
    fn the_token_file_is_its_name_in_its_directory() {
        assert_eq!(
            publish::TOKEN_FILE,
            format!("{}/{}", publish::TOKEN_DIR, publish::TOKEN_NAME)
        );
    }

    #[test]
    fn a_report_is_the_annotation_and_its_value() {
        let r = publish::Report {
            annotation: crate::annotations::PROGRESS.into(),
            value: "{}".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"annotation":"janus.dev/progress","value":"{}"}"#);
        assert_eq!(serde_json::from_str::<publish::Report>(&s).unwrap(), r);
    }

    #[test]
    fn the_fabric_figure_rides_with_progress_in_gbps() {
        let mut p =
            Progress::from_annotation(r#"{"step":0,"totalSteps":2,"updatedAt":"t"}"#).unwrap();
        assert_eq!(p.fabric, None);
        p.fabric = Some(Fabric {
            bus_bandwidth_gbps: 1.5,
            algorithm_bandwidth_gbps: 1.0,
            size_bytes: 64 << 20,
            ranks: 4,
            backend: "ring".into(),
            seconds: 0.067,
            measured_at: "t".into(),
        });
        let s = p.to_annotation();
        assert!(
            s.contains(r#""busBandwidthGBps":1.5"#)
                && s.contains(r#""algorithmBandwidthGBps":1.0"#),
            "{s}"
        );
        assert!(s.contains(r#""sizeBytes":67108864"#) && s.contains(r#""measuredAt":"t""#));
        assert_eq!(Progress::from_annotation(&s), Some(p));
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
/// `parse_failures` and `scores` into `status.progress` and `status.scores`. Each pod
/// sends it through the operator as [`publish`] describes, with this annotation key.
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
    pub scores: Option<EvalScores>,
    pub updated_at: String,
}

/// An evaluation's scores (1-5 scale): what `janus eval score` writes as
/// `summary.json`, the judge pod reports, and the operator mirrors into
/// `status.scores` unchanged (one type from the scorer to the job's status).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct EvalScores {
    /// Mean over items of the per-item mean over rubrics, averaged over judge runs.
    pub mean: f64,
    /// Standard deviation of that mean over the judge runs.
    #[serde(default)]
    pub std: f64,
    /// Mean per preference dimension (style, background_knowledge, ...).
    #[serde(default)]
    pub per_dimension: std::collections::BTreeMap<String, f64>,
    /// Against the baseline: fraction of items won, tied, lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_baseline: Option<HeadToHead>,
}

/// Head-to-head result against the baseline (fractions of the items both scored).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeadToHead {
    /// Fraction of items scored above the baseline.
    pub win: f64,
    /// Fraction of items scored equal to the baseline.
    pub tie: f64,
    /// Fraction of items scored below the baseline.
    pub lose: f64,
    /// `win + tie`, the rate the Janus paper reports.
    pub win_plus_tie: f64,
}

impl HeadToHead {
    /// The fractions of `wins`, `ties` and `losses` among their sum (all 0 for none).
    pub fn from_counts(wins: usize, ties: usize, losses: usize) -> Self {
        let n = wins + ties + losses;
        let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        HeadToHead {
            win: frac(wins),
            tie: frac(ties),
            lose: frac(losses),
            win_plus_tie: frac(wins + ties),
        }
    }
}

impl EvalReport {
    pub fn from_annotation(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }
}
