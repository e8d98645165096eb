//! Prometheus metrics (names in docs/metrics.md).

use janus_crds::eval::EvalPhase;
use janus_crds::training::JobPhase;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Every `result` of `janus_operator_reports_total`: the counter starts with each at 0.
/// The report endpoint (`crate::report`) counts under these names.
pub const REPORT_RESULTS: [&str; 8] = [
    "accepted",
    "unauthenticated",
    "forbidden",
    "malformed",
    "pod_gone",
    "api_error",
    "busy",
    "throttled",
];

/// Every `result` of `janus_operator_fabric_checks_total`, from the `FabricCheck`
/// condition's reason: measured without a threshold, passed, below a `Warn` threshold,
/// below a `Fail` one.
pub const FABRIC_RESULTS: [&str; 4] = ["measured", "passed", "below_threshold", "failed"];
/// Fabric checks reported by rank 0 of a training job, by result ([`FABRIC_RESULTS`]).
pub const FABRIC_CHECKS_TOTAL: &str = "janus_operator_fabric_checks_total";
/// The bus bandwidth of those checks.
pub const FABRIC_BUS_BANDWIDTH: &str = "janus_operator_fabric_bus_bandwidth_gbps";
/// Buckets of [`FABRIC_BUS_BANDWIDTH`] in GB/s: a CPU ring or TCP (under 1) to NVLink
/// (hundreds).
const FABRIC_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0,
];

/// Buckets of the reconcile and API request histograms (seconds).
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_total: IntCounter,
    pub reconcile_errors_total: IntCounterVec,
    pub reconcile_duration_seconds: Histogram,
    /// Per reconcile: the time it had at least one API request outstanding.
    pub reconcile_api_wait_seconds: Histogram,
    /// Per reconcile: its duration less its API wait, the operator's own time.
    pub reconcile_own_seconds: Histogram,
    pub jobs: IntGaugeVec,
    pub job_restarts_total: IntCounter,
    pub eval_jobs: IntGaugeVec,
    pub eval_restarts_total: IntCounter,
    pub leader: IntGauge,
    pub api_requests_total: IntCounterVec,
    /// Time from sending a request to its response's headers, by HTTP method and
    /// resource ([`resource_of`]); watches are not timed (they stay open). Reconciles
    /// wait on these (all but `events`, published from tasks of their own): the
    /// reconcile time less this is the operator's own.
    pub api_request_duration_seconds: HistogramVec,
    /// Watch errors by watch (jobs, pods, nodes, ...); the runtime retries them.
    pub watch_errors_total: IntCounterVec,
    /// Objects skipped because they do not decode, by kind.
    pub undecodable_objects_total: IntCounterVec,
    /// Progress reports from pods, by result ([`REPORT_RESULTS`]).
    pub reports_total: IntCounterVec,
    /// New fabric checks in jobs' status, by result ([`FABRIC_RESULTS`]).
    pub fabric_checks_total: IntCounterVec,
    /// Their bus bandwidth in GB/s.
    pub fabric_bus_bandwidth_gbps: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes metrics registered in one registry.
struct Registering(Registry);

impl Registering {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).unwrap();
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).unwrap())
    }

    fn counter_vec(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), &[label]).unwrap())
    }

    fn latency(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(Histogram::with_opts(opts).unwrap())
    }

    fn phases(
        &self,
        name: &str,
        help: &str,
        phases: impl IntoIterator<Item = &'static str>,
    ) -> IntGaugeVec {
        let g = self.add(IntGaugeVec::new(Opts::new(name, help), &["phase"]).unwrap());
        for p in phases {
            g.with_label_values(&[p]).set(0);
        }
        g
    }
}

/// `c` with a series (at 0) for each of `labels`, so `rate()` over it has one from the
/// first scrape.
fn with_labels<'a>(c: IntCounterVec, labels: impl IntoIterator<Item = &'a str>) -> IntCounterVec {
    for l in labels {
        c.with_label_values(&[l]);
    }
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registering(Registry::new());
        let errors = r.counter_vec(
            "janus_operator_reconcile_errors_total",
            "Reconciles that failed, by error kind",
            "error",
        );
        let watch_errors = r.counter_vec(
            "janus_operator_watch_errors_total",
            "Errors of the operator's watches (retried with backoff), by watch",
            "watch",
        );
        let undecodable = r.counter_vec(
            "janus_operator_undecodable_objects_total",
            "Object versions skipped because they do not decode, by kind",
            "kind",
        );
        let reports = r.counter_vec(
            "janus_operator_reports_total",
            "Progress reports pods sent to the operator, by result",
            "result",
        );
        let fabric_checks = r.counter_vec(
            FABRIC_CHECKS_TOTAL,
            "Fabric checks before training that rank 0 of a training job reported, by result",
            "result",
        );
        let fabric_bus_bandwidth_gbps = r.add(
            Histogram::with_opts(
                HistogramOpts::new(
                    FABRIC_BUS_BANDWIDTH,
                    "All-reduce bus bandwidth in GB/s of the fabric checks before training",
                )
                .buckets(FABRIC_BUCKETS.to_vec()),
            )
            .unwrap(),
        );
        let api_request_duration_seconds = r.add(
            HistogramVec::new(
                HistogramOpts::new(
                    "janus_operator_api_request_duration_seconds",
                    "Time from sending a request to the API server to its response, by HTTP method and resource (watches excluded)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "resource"],
            )
            .unwrap(),
        );
        Metrics {
            reconcile_total: r.counter("janus_operator_reconcile_total", "Reconciles started"),
            reconcile_errors_total: with_labels(errors, crate::error::Error::METRIC_LABELS),
            reconcile_duration_seconds: r.latency(
                "janus_operator_reconcile_duration_seconds",
                "Time of one reconcile",
            ),
            reconcile_api_wait_seconds: r.latency(
                "janus_operator_reconcile_api_wait_seconds",
                "Time of one reconcile with at least one API request outstanding",
            ),
            reconcile_own_seconds: r.latency(
                "janus_operator_reconcile_own_seconds",
                "Time of one reconcile not waiting on the API server",
            ),
            jobs: r.phases(
                "janus_jobs",
                "JanusTrainingJobs by phase",
                JobPhase::ALL.map(JobPhase::as_str),
            ),
            job_restarts_total: r.counter("janus_job_restarts_total", "Gang restarts started"),
            eval_jobs: r.phases(
                "janus_eval_jobs",
                "JanusEvalJobs by phase",
                EvalPhase::ALL.map(EvalPhase::as_str),
            ),
            eval_restarts_total: r.counter(
                "janus_eval_restarts_total",
                "Evaluation pods recreated after a retryable failure",
            ),
            leader: r.add(
                IntGauge::new(
                    "janus_operator_leader",
                    "1 while this replica holds the leader Lease",
                )
                .unwrap(),
            ),
            api_requests_total: r.counter_vec(
                "janus_operator_api_requests_total",
                "Requests this process sent to the API server, by HTTP method",
                "method",
            ),
            api_request_duration_seconds,
            watch_errors_total: with_labels(watch_errors, crate::health::WATCHES),
            undecodable_objects_total: with_labels(
                undecodable,
                ["JanusTrainingJob", "JanusEvalJob"],
            ),
            reports_total: with_labels(reports, REPORT_RESULTS),
            fabric_checks_total: with_labels(fabric_checks, FABRIC_RESULTS),
            fabric_bus_bandwidth_gbps,
            registry: r.0,
        }
    }

    /// Set `janus_jobs{phase}` from the phases of all known jobs.
    pub fn set_job_phases(&self, phases: impl IntoIterator<Item = JobPhase>) {
        let mut counts = [0i64; 6];
        for p in phases {
            counts[JobPhase::ALL.iter().position(|q| *q == p).unwrap()] += 1;
        }
        for (p, n) in JobPhase::ALL.iter().zip(counts) {
            self.jobs.with_label_values(&[p.as_str()]).set(n);
        }
    }

    /// Set `janus_eval_jobs{phase}` from the phases of all known evaluations.
    pub fn set_eval_job_phases(&self, phases: impl IntoIterator<Item = EvalPhase>) {
        let mut counts = [0i64; EvalPhase::ALL.len()];
        for p in phases {
            counts[EvalPhase::ALL.iter().position(|q| *q == p).unwrap()] += 1;
        }
        for (p, n) in EvalPhase::ALL.iter().zip(counts) {
            self.eval_jobs.with_label_values(&[p.as_str()]).set(n);
        }
    }

    /// Runs one reconcile, observing its duration, its wait on the API server (the
    /// union of its requests' times: requests that overlap count once) and the rest,
    /// its own time. Requests from tasks it spawns (Events) are not its own.
    pub async fn timed_reconcile<F: Future>(&self, reconcile: F) -> F::Output {
        let wait = Arc::new(ApiWait::default());
        let start = Instant::now();
        let out = API_WAIT.scope(wait.clone(), reconcile).await;
        let took = start.elapsed();
        let waited = wait.total();
        self.reconcile_duration_seconds.observe(took.as_secs_f64());
        self.reconcile_api_wait_seconds
            .observe(waited.as_secs_f64());
        self.reconcile_own_seconds
            .observe(took.saturating_sub(waited).as_secs_f64());
        out
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

tokio::task_local! {
    /// The API wait of the reconcile being polled ([`Metrics::timed_reconcile`]).
    static API_WAIT: Arc<ApiWait>;
}

/// The union of the intervals with at least one request outstanding.
#[derive(Default)]
struct ApiWait(Mutex<ApiWaitState>);

#[derive(Default)]
struct ApiWaitState {
    in_flight: usize,
    since: Option<Instant>,
    total: Duration,
}

impl ApiWait {
    fn begin(self: &Arc<Self>) -> ApiWaitGuard {
        let mut s = self.0.lock().unwrap();
        if s.in_flight == 0 {
            s.since = Some(Instant::now());
        }
        s.in_flight += 1;
        ApiWaitGuard(self.clone())
    }

    fn total(&self) -> Duration {
        let s = self.0.lock().unwrap();
        s.total
            + s.since
                .filter(|_| s.in_flight > 0)
                .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Ends a request's part of the wait when it completes or is dropped.
struct ApiWaitGuard(Arc<ApiWait>);

impl Drop for ApiWaitGuard {
    fn drop(&mut self) {
        let mut s = self.0 .0.lock().unwrap();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            if let Some(t) = s.since.take() {
                s.total += t.elapsed();
            }
        }
    }
}

/// A layer for the kube client's HTTP stack: counts every request
/// (`janus_operator_api_requests_total{method}`) and times every one but watches
/// (`janus_operator_api_request_duration_seconds{method,resource}`).
#[derive(Clone)]
pub struct ApiRequestMetricsLayer {
    total: IntCounterVec,
    duration: HistogramVec,
}

impl ApiRequestMetricsLayer {
    pub fn new(m: &Metrics) -> Self {
        ApiRequestMetricsLayer {
            total: m.api_requests_total.clone(),
            duration: m.api_request_duration_seconds.clone(),
        }
    }
}

impl<S> tower::Layer<S> for ApiRequestMetricsLayer {
    type Service = ApiRequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiRequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiRequestMetrics<S> {
    inner: S,
    layer: ApiRequestMetricsLayer,
}

/// The resource of an API path, with its subresource: `pods` for
/// `/api/v1/namespaces/N/pods/P`, `janustrainingjobs/status` for
/// `/apis/janus.dev/v1alpha1/namespaces/N/janustrainingjobs/J/status`, `events` for
/// `/apis/events.k8s.io/v1/namespaces/N/events`. Empty for anything else.
pub fn resource_of(path: &str) -> String {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match seg.first() {
        Some(&"api") if seg.len() > 2 => &seg[2..],
        Some(&"apis") if seg.len() > 3 => &seg[3..],
        _ => return String::new(),
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    match rest {
        [r, _, sub, ..] => format!("{r}/{sub}"),
        [r, ..] => (*r).to_owned(),
        [] => String::new(),
    }
}

/// `?watch=true` (or `watch=1`): a watch, open until the server ends it.
fn is_watch(uri: &::http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

impl<S, B> tower::Service<::http::Request<B>> for ApiRequestMetrics<S>
where
    S: tower::Service<::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ::http::Request<B>) -> Self::Future {
        let method = req.method().as_str().to_owned();
        self.layer.total.with_label_values(&[&method]).inc();
        let timer = (!is_watch(req.uri())).then(|| {
            self.layer
                .duration
                .with_label_values(&[&method, &resource_of(req.uri().path())])
        });
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            // Polled by the task that sent the request (the kube client's buffer hands
            // this future back to it): inside a reconcile, its wait.
            let _wait = API_WAIT.try_with(|w| w.begin()).ok();
            let res = fut.await;
            if let Some(h) = timer {
                h.observe(start.elapsed().as_secs_f64());
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reconcile_waits_once_for_overlapping_requests() {
        let m = Metrics::new();
        let mut svc = tower::Layer::layer(
            &ApiRequestMetricsLayer::new(&m),
            tower::service_fn(|_req: ::http::Request<()>| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ()>(())
            }),
        );
        let get = |svc: &mut ApiRequestMetrics<_>| {
            tower::Service::call(svc, ::http::Request::get("/api/v1/pods").body(()).unwrap())
        };
        m.timed_reconcile(async {
            let (a, b) = (get(&mut svc), get(&mut svc));
            futures::try_join!(a, b).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        })
        .await;
        let wait = m.reconcile_api_wait_seconds.get_sample_sum();
        let own = m.reconcile_own_seconds.get_sample_sum();
        assert!((0.045..0.075).contains(&wait), "wait {wait}");
        assert!((0.025..0.06).contains(&own), "own {own}");
        // Each request timed on its own: both 50 ms.
        let per_request = m
            .api_request_duration_seconds
            .with_label_values(&["GET", "pods"])
            .get_sample_sum();
        assert!(per_request >= 0.095, "requests {per_request}");
    }

    #[test]
    fn api_paths_name_their_resource() {
        for (path, want) in [
            ("/api/v1/namespaces/default/pods", "pods"),
            ("/api/v1/namespaces/default/pods/j-worker-0", "pods"),
            ("/api/v1/nodes", "nodes"),
            ("/api/v1/namespaces/default", "namespaces"),
            (
                "/apis/janus.dev/v1alpha1/namespaces/default/janustrainingjobs/j/status",
                "janustrainingjobs/status",
            ),
            ("/apis/events.k8s.io/v1/namespaces/default/events", "events"),
            ("/version", ""),
        ] {
            assert_eq!(resource_of(path), want, "{path}");
        }
    }

    #[test]
    fn every_design_metric_is_exported() {
        let m = Metrics::new();
        m.reconcile_total.inc();
        m.reconcile_errors_total.with_label_values(&["Kube"]).inc();
        m.reconcile_duration_seconds.observe(0.01);
        m.job_restarts_total.inc();
        m.set_job_phases([JobPhase::Running, JobPhase::Running, JobPhase::Failed]);
        m.set_eval_job_phases([EvalPhase::Judging]);
        m.eval_restarts_total.inc();
        m.fabric_checks_total.with_label_values(&["passed"]).inc();
        m.fabric_bus_bandwidth_gbps.observe(180.0);
        // A GET and a watch through the client layer: both counted, the GET timed.
        let mut svc = tower::Layer::layer(
            &ApiRequestMetricsLayer::new(&m),
            tower::service_fn(|_req: ::http::Request<()>| async { Ok::<_, ()>(()) }),
        );
        for uri in [
            "/api/v1/pods",
            "/api/v1/pods?labelSelector=a&watch=true&timeoutSeconds=290",
        ] {
            let req = ::http::Request::get(uri).body(()).unwrap();
            futures::executor::block_on(tower::Service::call(&mut svc, req)).unwrap();
        }
        let text = m.encode();
        for name in [
            "janus_operator_reconcile_total 1",
            "janus_operator_reconcile_errors_total{error=\"Kube\"} 1",
            "janus_operator_reconcile_duration_seconds_bucket",
            "janus_jobs{phase=\"Running\"} 2",
            "janus_jobs{phase=\"Failed\"} 1",
            "janus_jobs{phase=\"Pending\"} 0",
            "janus_operator_reconcile_errors_total{error=\"MissingField\"} 0",
            "janus_job_restarts_total 1",
            "janus_eval_jobs{phase=\"Judging\"} 1",
            "janus_eval_jobs{phase=\"Generating\"} 0",
            "janus_eval_restarts_total 1",
            "janus_operator_fabric_checks_total{result=\"passed\"} 1",
            "janus_operator_fabric_checks_total{result=\"failed\"} 0",
            "janus_operator_fabric_bus_bandwidth_gbps_count 1",
            "janus_operator_watch_errors_total{watch=\"pods\"} 0",
            "janus_operator_undecodable_objects_total{kind=\"JanusTrainingJob\"} 0",
            "janus_operator_api_requests_total{method=\"GET\"} 2",
            "janus_operator_api_request_duration_seconds_count{method=\"GET\",resource=\"pods\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
