//! `POST /v1/report`: pods report progress to the operator instead of annotating
//! themselves, so they hold no Kubernetes API permission at all. A report carries the
//! pod's projected ServiceAccount token (audience
//! [`janus_crds::progress::publish::AUDIENCE`], bound to the pod); a TokenReview tells
//! which pod sent it, and only rank 0 of a training job, or a generation or judge pod
//! of an evaluation, may report, only its own annotation, and only on itself. The
//! operator then writes the annotation on that pod (UID-checked), where the
//! controllers' pod caches see it as before. Every replica serves this, the leader or
//! not: it is a pod patch, not a status write, so no hand-off is needed.
//!
//! Any pod in the cluster can reach this port, so what a caller can cost is bounded:
//! at most [`crate::http::MAX_CONNECTIONS`] connections are served at once (the rest
//! wait in the kernel's accept queue), at most [`IN_FLIGHT`] requests are past the
//! door (the rest are answered 429 before their body is read), a TokenReview slot is
//! waited for [`REVIEW_WAIT`] at most (then 429 with `Retry-After`), a refused token is
//! answered 401 from memory for [`REFUSED_TTL`], a body is read only once its token is
//! accepted, one pod's reports are written at most once
//! per [`publish::MIN_REPORT_INTERVAL_SECONDS`], and only the typed document is
//! stored, re-serialised (unknown fields dropped) and at most
//! [`publish::MAX_VALUE_BYTES`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use janus_crds::progress::publish::{self, Report};
use janus_crds::progress::EvalReport;
use janus_crds::{annotations, Progress};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::metrics::Metrics;

/// How long a reviewed token is trusted without asking again (kube-rbac-proxy and the
/// API server's own webhook token cache do the same). A deleted pod's token may pass
/// for this long, but the UID-checked patch then finds no such pod.
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// Reviewed tokens kept at most (one per reporting pod is the usual need).
const REVIEW_CACHE_MAX: usize = 4096;

/// Requests past the door at once: reading a body, waiting for a review, writing. Each
/// holds at most [`publish::MAX_BODY_BYTES`]; the rest are answered 429 unread.
pub const IN_FLIGHT: usize = 64;
/// The longest a request waits for a TokenReview slot before it is answered 429.
pub const REVIEW_WAIT: Duration = Duration::from_millis(200);
/// The longest a body may take to arrive (a slow sender holds a place at the door).
const BODY_WAIT: Duration = Duration::from_secs(5);
/// How long a token the API server refused is refused from memory.
pub const REFUSED_TTL: Duration = Duration::from_secs(30);
/// Refused tokens remembered at most (by a keyed hash: 8 bytes and an instant each).
const REFUSED_MAX: usize = 65_536;
/// The `Retry-After` of a 429, seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who sent a report, as the API server vouches for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no bearer token: send the pod's projected token ({file})", file = publish::TOKEN_FILE)]
    NoToken,
    #[error("the token was not accepted for audience {aud}: {0}", aud = publish::AUDIENCE)]
    Unauthenticated(String),
    #[error("the token is not bound to a pod: {0}")]
    NotAPod(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("malformed report: {0}")]
    Malformed(String),
    #[error("pod {0} is gone or was replaced")]
    PodGone(String),
    #[error("the API server: {0}")]
    Api(#[source] kube::Error),
    #[error("busy: {0}; retry after {RETRY_AFTER_SECONDS} s")]
    Busy(&'static str),
    #[error("pod {0} reported less than {s} s ago; retry after {s} s", s = publish::MIN_REPORT_INTERVAL_SECONDS)]
    TooFrequent(String),
}

impl ReportError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoToken | Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::NotAPod(_) | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::PodGone(_) => StatusCode::CONFLICT,
            Self::Api(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy(_) | Self::TooFrequent(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `Retry-After` of the answer, seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Busy(_) => Some(RETRY_AFTER_SECONDS),
            Self::TooFrequent(_) => Some(publish::MIN_REPORT_INTERVAL_SECONDS),
            _ => None,
        }
    }

    /// The `result` label of `janus_operator_reports_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoToken | Self::Unauthenticated(_) => "unauthenticated",
            Self::NotAPod(_) | Self::Forbidden(_) => "forbidden",
            Self::Malformed(_) => "malformed",
            Self::PodGone(_) => "pod_gone",
            Self::Api(_) => "api_error",
            Self::Busy(_) => "busy",
            Self::TooFrequent(_) => "throttled",
        }
    }

    pub const LABELS: [&'static str; 8] = crate::metrics::REPORT_RESULTS;
}

/// Which pods may report, and what: the training job's rank 0 its progress, an
/// evaluation's generation and judge pods their reports. The ServiceAccount names the
/// job (each job's pods run as its own, which a template may not change).
pub fn authorize(sender: &Sender, report: &Report) -> Result<(), ReportError> {
    use crate::{eval, training};
    let Sender {
        service_account: sa,
        pod,
        ..
    } = sender;
    let (allowed, well_formed) = if let Some(job) = training::children::job_of_service_account(sa) {
        if *pod != training::children::worker_name(job, 0) {
            return Err(ReportError::Forbidden(format!(
                "pod {pod} may not report: only rank 0 ({}) of training job {job} does",
                training::children::worker_name(job, 0)
            )));
        }
        (
            annotations::PROGRESS,
            Progress::from_annotation(&report.value).is_some(),
        )
    } else if let Some(job) = eval::children::job_of_service_account(sa) {
        if !eval::children::is_pod_name(job, pod) {
            return Err(ReportError::Forbidden(format!(
                "pod {pod} is not a generation or judge pod of evaluation {job}"
            )));
        }
        (
            annotations::EVAL_PROGRESS,
            EvalReport::from_annotation(&report.value).is_some(),
        )
    } else {
        return Err(ReportError::Forbidden(format!(
            "ServiceAccount {sa} is not a Janus job's: only the operator's workers report"
        )));
    };
    if report.annotation != allowed {
        return Err(ReportError::Forbidden(format!(
            "pod {pod} may set only {allowed}, not {}",
            report.annotation
        )));
    }
    if !well_formed {
        return Err(ReportError::Malformed(format!(
            "the value of {allowed} is not a valid report document"
        )));
    }
    Ok(())
}

/// The report as it is stored: its value parsed as the annotation's document and
/// serialised again (fields the document does not have are dropped), at most
/// [`publish::MAX_VALUE_BYTES`].
pub fn typed(report: Report) -> Result<Report, ReportError> {
    let malformed = || {
        ReportError::Malformed(format!(
            "the value of {} is not a valid report document",
            report.annotation
        ))
    };
    let value = match report.annotation.as_str() {
        annotations::PROGRESS => Progress::from_annotation(&report.value)
            .ok_or_else(malformed)?
            .to_annotation(),
        annotations::EVAL_PROGRESS => EvalReport::from_annotation(&report.value)
            .ok_or_else(malformed)?
            .to_annotation(),
        other => {
            return Err(ReportError::Forbidden(format!(
                "{other} is not a report annotation"
            )))
        }
    };
    if value.len() > publish::MAX_VALUE_BYTES {
        return Err(ReportError::Malformed(format!(
            "the value of {} is {} bytes, over the {} a report may store",
            report.annotation,
            value.len(),
            publish::MAX_VALUE_BYTES
        )));
    }
    Ok(Report {
        annotation: report.annotation,
        value,
    })
}

/// The report a body holds, read with a hard limit ([`publish::MAX_BODY_BYTES`]) and
/// a deadline.
async fn read_report(body: Body) -> Result<Report, ReportError> {
    let body = tokio::time::timeout(
        BODY_WAIT,
        axum::body::to_bytes(body, publish::MAX_BODY_BYTES),
    )
    .await
    .map_err(|_| ReportError::Malformed(format!("the body took over {BODY_WAIT:?}")))?
    .map_err(|e| {
        ReportError::Malformed(format!(
            "the body could not be read (at most {} bytes): {e}",
            publish::MAX_BODY_BYTES
        ))
    })?;
    serde_json::from_slice(&body).map_err(|e| ReportError::Malformed(e.to_string()))
}

/// The bearer token of a request (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The sender a TokenReview's answer describes.
pub fn sender_of(review: &TokenReview) -> Result<Sender, ReportError> {
    let status = review.status.clone().unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ReportError::Unauthenticated(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // An authenticator that ignores audiences answers without ours (the API reference
    // asks clients to check): an API token must not pass for a report token.
    if !status
        .audiences
        .iter()
        .flatten()
        .any(|a| a == publish::AUDIENCE)
    {
        return Err(ReportError::Unauthenticated(format!(
            "the review did not confirm the audience (it answered {:?})",
            status.audiences.unwrap_or_default()
        )));
    }
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    let Some((namespace, sa)) = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return Err(ReportError::NotAPod(format!(
            "{name} is not a ServiceAccount"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    let (Some(pod), Some(pod_uid)) = (one(POD_NAME_EXTRA), one(POD_UID_EXTRA)) else {
        return Err(ReportError::NotAPod(format!(
            "the token of {name} names no pod (use the projected token the operator mounts)"
        )));
    };
    Ok(Sender {
        namespace: namespace.into(),
        service_account: sa.into(),
        pod,
        pod_uid,
    })
}

/// TokenReviews in flight at most: a flood of bad tokens waits here instead of
/// becoming a flood of API requests.
const REVIEWS_IN_FLIGHT: usize = 4;

/// The report endpoint's state: a client, the reviewed and refused tokens, and when
/// each pod's last report was written.
pub struct Reports {
    client: Client,
    metrics: Metrics,
    /// The one namespace the operator watches, if it watches one: pods elsewhere are
    /// not its own.
    namespace: Option<String>,
    reviewed: Mutex<HashMap<String, (Sender, Instant)>>,
    /// Refused tokens by a hash keyed at start (unguessable: no collision to aim for).
    refused: Mutex<HashMap<u64, Instant>>,
    hasher: RandomState,
    /// When each pod (by UID) last had a report written.
    written: Mutex<HashMap<String, Instant>>,
    door: tokio::sync::Semaphore,
    reviews: tokio::sync::Semaphore,
}

/// What one answer is: its status, `Retry-After` and text.
pub type Answer = (StatusCode, Option<u64>, String);

impl Reports {
    pub fn new(client: Client, metrics: Metrics, namespace: Option<String>) -> Self {
        Self {
            client,
            metrics,
            namespace,
            reviewed: Mutex::default(),
            refused: Mutex::default(),
            hasher: RandomState::new(),
            written: Mutex::default(),
            door: tokio::sync::Semaphore::new(IN_FLIGHT),
            reviews: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    /// Handle one request: 204, or the status and reason of the refusal.
    pub async fn handle(&self, headers: &HeaderMap, body: Body) -> Answer {
        let result = self.accept(headers, body).await;
        let label = match &result {
            Ok(()) => "accepted",
            Err(e) => e.label(),
        };
        self.metrics.reports_total.with_label_values(&[label]).inc();
        match result {
            Ok(()) => (StatusCode::NO_CONTENT, None, String::new()),
            Err(e) => {
                if matches!(e, ReportError::Api(_)) {
                    tracing::warn!(error = %e, "a report could not be written");
                } else {
                    tracing::debug!(error = %e, "a report was refused");
                }
                (e.status(), e.retry_after(), format!("{e}\n"))
            }
        }
    }

    async fn accept(&self, headers: &HeaderMap, body: Body) -> Result<(), ReportError> {
        // What costs nothing first: no place at the door, no token, or a token refused
        // a moment ago is answered before anything is read.
        let _place = self
            .door
            .try_acquire()
            .map_err(|_| ReportError::Busy("too many reports in flight"))?;
        let token = bearer(headers).ok_or(ReportError::NoToken)?;
        if self.refused_recently(token, Instant::now()) {
            return Err(ReportError::Unauthenticated(
                "the API server refused this token a moment ago".into(),
            ));
        }
        // The sender before its body: a token the API server refuses or a pod outside
        // the namespace never has its body read (a
        // flood of bogus tokens costs a review each, and no 64 KiB buffer).
        let sender = self.review(token).await?;
        if let Some(ns) = self.namespace.as_deref() {
            if ns != sender.namespace {
                return Err(ReportError::Forbidden(format!(
                    "pod {}/{} is outside namespace {ns}, the one this operator watches",
                    sender.namespace, sender.pod
                )));
            }
        }
        // The sender's turn is taken only once the report is valid (a malformed or
        // forbidden report is answered so, not 429, and does not spend it).
        let report = read_report(body).await?;
        // Who may set what comes before what the value is: a pod asking for another
        // kind's annotation is told it may not (403), whatever it sent.
        authorize(&sender, &report)?;
        let report = typed(report)?;
        self.take_turn(&sender, Instant::now())?;
        self.write(&sender, &report).await
    }

    fn token_hash(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    /// Whether the API server refused `token` within [`REFUSED_TTL`].
    fn refused_recently(&self, token: &str, now: Instant) -> bool {
        let h = self.token_hash(token);
        let refused = self.refused.lock().expect("lock");
        refused
            .get(&h)
            .is_some_and(|at| now.duration_since(*at) < REFUSED_TTL)
    }

    fn remember_refused(&self, token: &str, now: Instant) {
        let h = self.token_hash(token);
        let mut refused = self.refused.lock().expect("lock");
        if refused.len() >= REFUSED_MAX {
            refused.retain(|_, at| now.duration_since(*at) < REFUSED_TTL);
            if refused.len() >= REFUSED_MAX {
                refused.clear();
            }
        }
        refused.insert(h, now);
    }

    /// Whether the sender's turn is free: none of its reports written within the interval.
    fn free_in(
        written: &HashMap<String, Instant>,
        sender: &Sender,
        now: Instant,
    ) -> Result<(), ReportError> {
        let interval = Duration::from_secs(publish::MIN_REPORT_INTERVAL_SECONDS);
        match written.get(&sender.pod_uid) {
            Some(at) if now.duration_since(*at) < interval => Err(ReportError::TooFrequent(
                format!("{}/{}", sender.namespace, sender.pod),
            )),
            _ => Ok(()),
        }
    }

    /// The sender's turn to have a report written: none within the interval before.
    fn take_turn(&self, sender: &Sender, now: Instant) -> Result<(), ReportError> {
        let interval = Duration::from_secs(publish::MIN_REPORT_INTERVAL_SECONDS);
        let mut written = self.written.lock().expect("lock");
        Self::free_in(&written, sender, now)?;
        if written.len() >= REVIEW_CACHE_MAX {
            written.retain(|_, at| now.duration_since(*at) < interval);
        }
        written.insert(sender.pod_uid.clone(), now);
        Ok(())
    }

    /// Who holds `token`, from the cache or a TokenReview.
    async fn review(&self, token: &str) -> Result<Sender, ReportError> {
        let now = Instant::now();
        if let Some((s, at)) = self.reviewed.lock().expect("lock").get(token) {
            if now.duration_since(*at) < REVIEW_TTL {
                return Ok(s.clone());
            }
        }
        let _turn = tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire())
            .await
            .map_err(|_| ReportError::Busy("every token review slot is taken"))?
            .expect("never closed");
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![publish::AUDIENCE.into()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ReportError::Api)?;
        let sender = match sender_of(&answer) {
            Ok(s) => s,
            Err(e) => {
                self.remember_refused(token, Instant::now());
                return Err(e);
            }
        };
        let mut cache = self.reviewed.lock().expect("lock");
        if cache.len() >= REVIEW_CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < REVIEW_TTL);
            if cache.len() >= REVIEW_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), (sender.clone(), now));
        Ok(sender)
    }

    /// Set the annotation on the sender's pod, if it is still the pod the token names.
    async fn write(&self, sender: &Sender, report: &Report) -> Result<(), ReportError> {
        let patch = serde_json::json!({
            "metadata": {
                // A pod with the same name but another UID refuses the patch.
                "uid": sender.pod_uid,
                "annotations": { &report.annotation: &report.value },
            }
        });
        let pods = Api::<Pod>::namespaced(self.client.clone(), &sender.namespace);
        match pods
            .patch(&sender.pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // 422: the UID differs (immutable), the pod was replaced under its name.
            Err(kube::Error::Api(s))
                if s.code == 404 || (s.code == 422 && s.message.contains("uid")) =>
            {
                Err(ReportError::PodGone(format!(
                    "{}/{}",
                    sender.namespace, sender.pod
                )))
            }
            Err(kube::Error::Api(s)) if s.code == 403 => Err(ReportError::Forbidden(format!(
                "the operator may not write on pod {}/{}: {}",
                sender.namespace, sender.pod, s.message
            ))),
            Err(e) => Err(ReportError::Api(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use std::collections::BTreeMap;

    fn sender(sa: &str, pod: &str) -> Sender {
        Sender {
            namespace: "ns".into(),
            service_account: sa.into(),
            pod: pod.into(),
            pod_uid: "u".into(),
        }
    }

    fn progress() -> String {
        r#"{"step":1,"totalSteps":2,"updatedAt":"t"}"#.into()
    }

    fn report(annotation: &str, value: String) -> Report {
        Report {
            annotation: annotation.into(),
            value,
        }
    }

    #[test]
    fn only_rank_0_of_a_training_job_reports_and_only_its_progress() {
        let p = report(annotations::PROGRESS, progress());
        assert!(authorize(&sender("j-worker", "j-worker-0"), &p).is_ok());
        let e = authorize(&sender("j-worker", "j-worker-1"), &p).unwrap_err();
        assert!(e.to_string().contains("only rank 0 (j-worker-0)"), "{e}");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        // Another job's rank 0, with this job's account: not its own pod.
        assert!(authorize(&sender("j-worker", "k-worker-0"), &p).is_err());
        let eval = report(annotations::EVAL_PROGRESS, "{}".into());
        let e = authorize(&sender("j-worker", "j-worker-0"), &eval).unwrap_err();
        assert!(
            e.to_string().contains("may set only janus.dev/progress"),
            "{e}"
        );
        let bad = report(annotations::PROGRESS, "{\"step\": 1}".into());
        let e = authorize(&sender("j-worker", "j-worker-0"), &bad).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
    }

    #[test]
    fn an_evaluations_generation_and_judge_pods_report_their_own_documents() {
        let r = report(
            annotations::EVAL_PROGRESS,
            r#"{"stage":"generate","itemsDone":1,"itemsTotal":2,"updatedAt":"t"}"#.into(),
        );
        for pod in ["e-generate-0", "e-generate-12", "e-judge"] {
            assert!(authorize(&sender("e-eval", pod), &r).is_ok(), "{pod}");
        }
        for pod in [
            "e-generate-",
            "e-generate-x",
            "e-judge-0",
            "f-judge",
            "e-worker-0",
        ] {
            assert!(authorize(&sender("e-eval", pod), &r).is_err(), "{pod}");
        }
        let p = report(annotations::PROGRESS, progress());
        assert!(authorize(&sender("e-eval", "e-judge"), &p).is_err());
    }

    #[test]
    fn other_service_accounts_may_not_report() {
        let p = report(annotations::PROGRESS, progress());
        let e = authorize(&sender("default", "j-worker-0"), &p).unwrap_err();
        assert!(e.to_string().contains("ServiceAccount default"), "{e}");
    }

    fn answer(authenticated: bool, username: &str, extra: &[(&str, &str)]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec![publish::AUDIENCE.into()]),
                error: (!authenticated).then(|| "invalid bearer token".into()),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                            .collect::<BTreeMap<_, _>>(),
                    ),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_sender_is_the_pod_the_api_server_names() {
        let pod = [(POD_NAME_EXTRA, "j-worker-0"), (POD_UID_EXTRA, "123")];
        let s = sender_of(&answer(true, "system:serviceaccount:ns:j-worker", &pod)).unwrap();
        assert_eq!(
            s,
            Sender {
                namespace: "ns".into(),
                service_account: "j-worker".into(),
                pod: "j-worker-0".into(),
                pod_uid: "123".into()
            }
        );
        let e = sender_of(&answer(false, "", &[])).unwrap_err();
        assert!(e.to_string().contains("invalid bearer token"), "{e}");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        // A token not bound to a pod (e.g. `kubectl create token`), or a user's.
        let e = sender_of(&answer(true, "system:serviceaccount:ns:j-worker", &[])).unwrap_err();
        assert!(e.to_string().contains("names no pod"), "{e}");
        assert!(sender_of(&answer(true, "alice", &pod)).is_err());
        // Authenticated, but not for our audience (an authenticator ignoring it).
        let mut api = answer(true, "system:serviceaccount:ns:j-worker", &pod);
        api.status.as_mut().unwrap().audiences = Some(vec![]);
        let e = sender_of(&api).unwrap_err();
        assert!(
            e.to_string().contains("did not confirm the audience"),
            "{e}"
        );
    }

    #[test]
    fn only_the_typed_document_is_stored_and_it_has_a_size_cap() {
        let extra = r#"{"step":1,"totalSteps":2,"updatedAt":"t","evil":"x","loss":0.5}"#;
        let r = typed(report(annotations::PROGRESS, extra.into())).unwrap();
        assert_eq!(
            r.value, r#"{"step":1,"totalSteps":2,"loss":0.5,"updatedAt":"t"}"#,
            "unknown fields dropped, the document re-serialised"
        );
        let big = format!(
            r#"{{"step":1,"totalSteps":2,"updatedAt":"t","lastCheckpoint":"{}"}}"#,
            "x".repeat(publish::MAX_VALUE_BYTES)
        );
        let e = typed(report(annotations::PROGRESS, big)).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("over the 4096"), "{e}");
        let e = typed(report("janus.dev/other", "{}".into())).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let e = typed(report(annotations::EVAL_PROGRESS, "[]".into())).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    /// A client whose API server refuses every token, or never answers (`hang`),
    /// counting the requests it gets.
    fn api(hang: bool) -> (Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let n = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = n.clone();
        let svc = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                let review = serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview", "status": {"authenticated": false,
                    "error": "invalid bearer token"}});
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(201)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&review).unwrap(),
                        ))
                        .unwrap(),
                )
            }
        });
        (Client::new(svc, "default"), n)
    }

    fn request(token: &str) -> (HeaderMap, Body) {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let body = serde_json::to_vec(&report(annotations::PROGRESS, progress())).unwrap();
        (h, Body::from(body))
    }

    #[tokio::test]
    async fn a_refused_token_is_refused_from_memory_without_a_second_review() {
        use std::sync::atomic::Ordering;
        let (client, reviews) = api(false);
        let r = Reports::new(client, Metrics::new(), None);
        for _ in 0..3 {
            let (h, b) = request("bogus");
            let (code, retry, _) = r.handle(&h, b).await;
            assert_eq!((code, retry), (StatusCode::UNAUTHORIZED, None));
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "one TokenReview");
        let (h, b) = request("another");
        assert_eq!(r.handle(&h, b).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(reviews.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn busy_review_slots_answer_429_with_retry_after_within_the_wait() {
        let (client, _) = api(true);
        let r = std::sync::Arc::new(Reports::new(client, Metrics::new(), None));
        let held: Vec<_> = (0..REVIEWS_IN_FLIGHT)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move {
                    let (h, b) = request(&format!("slow-{i}"));
                    r.handle(&h, b).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let (h, b) = request("waits");
        let (code, retry, text) = r.handle(&h, b).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{text}");
        assert_eq!(retry, Some(RETRY_AFTER_SECONDS));
        assert!(start.elapsed() < REVIEW_WAIT + Duration::from_millis(300));
        for h in held {
            h.abort();
        }
    }

    #[tokio::test]
    async fn past_the_door_limit_requests_are_429_before_their_body_is_read() {
        let (client, _) = api(true);
        let r = Reports::new(client, Metrics::new(), None);
        let _all = r.door.try_acquire_many(IN_FLIGHT as u32).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer t".parse().unwrap(),
        );
        // A body that never ends: answering at once shows it was not read.
        let body = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
        let (code, retry, _) = tokio::time::timeout(Duration::from_secs(1), r.handle(&h, body))
            .await
            .expect("answered without reading");
        assert_eq!((code, retry), (StatusCode::TOO_MANY_REQUESTS, Some(1)));
    }

    #[tokio::test]
    async fn a_refused_tokens_body_is_never_read() {
        let (client, reviews) = api(false);
        let r = Reports::new(client, Metrics::new(), None);
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::AUTHORIZATION,
                "Bearer bogus".parse().unwrap(),
            );
            // A body that never ends: an answer shows it was not waited for.
            let body =
                Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
            let (code, _, text) = tokio::time::timeout(Duration::from_secs(1), r.handle(&h, body))
                .await
                .expect("answered without reading the body");
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{text}");
        }
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_pod_has_a_report_written_at_most_once_per_interval() {
        let (client, _) = api(true);
        let r = Reports::new(client, Metrics::new(), None);
        let s = sender("j-worker", "j-worker-0");
        let t = Instant::now();
        assert!(r.take_turn(&s, t).is_ok());
        let e = r.take_turn(&s, t + Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(publish::MIN_REPORT_INTERVAL_SECONDS));
        let other = Sender {
            pod_uid: "v".into(),
            ..sender("k-worker", "k-worker-0")
        };
        assert!(r.take_turn(&other, t).is_ok(), "each pod has its own turn");
        assert!(r.take_turn(&s, t + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
    }
}
