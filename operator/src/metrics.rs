//! Prometheus metrics (names in shared/DESIGN.md).

use janus_crds::eval::EvalPhase;
use janus_crds::training::JobPhase;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_total: IntCounter,
    pub reconcile_errors_total: IntCounterVec,
    pub reconcile_duration_seconds: Histogram,
    pub jobs: IntGaugeVec,
    pub job_restarts_total: IntCounter,
    pub eval_jobs: IntGaugeVec,
    pub eval_restarts_total: IntCounter,
    pub leader: IntGauge,
    pub api_requests_total: IntCounterVec,
    /// Watch errors by watch (jobs, pods, nodes, ...); the runtime retries them.
    pub watch_errors_total: IntCounterVec,
    /// Objects skipped because they do not decode, by kind.
    pub undecodable_objects_total: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconcile_total =
            IntCounter::new("janus_operator_reconcile_total", "Reconciles started").unwrap();
        let reconcile_errors_total = IntCounterVec::new(
            Opts::new(
                "janus_operator_reconcile_errors_total",
                "Reconciles that failed, by error kind",
            ),
            &["error"],
        )
        .unwrap();
        let reconcile_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "janus_operator_reconcile_duration_seconds",
                "Time of one reconcile",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )
        .unwrap();
        let jobs = IntGaugeVec::new(
            Opts::new("janus_jobs", "JanusTrainingJobs by phase"),
            &["phase"],
        )
        .unwrap();
        let job_restarts_total =
            IntCounter::new("janus_job_restarts_total", "Gang restarts started").unwrap();
        let eval_jobs = IntGaugeVec::new(
            Opts::new("janus_eval_jobs", "JanusEvalJobs by phase"),
            &["phase"],
        )
        .unwrap();
        let eval_restarts_total = IntCounter::new(
            "janus_eval_restarts_total",
            "Evaluation pods recreated after a retryable failure",
        )
        .unwrap();
        let leader = IntGauge::new(
            "janus_operator_leader",
            "1 while this replica holds the leader Lease",
        )
        .unwrap();
        let api_requests_total = IntCounterVec::new(
            Opts::new(
                "janus_operator_api_requests_total",
                "Requests this process sent to the API server, by HTTP method",
            ),
            &["method"],
        )
        .unwrap();
        let watch_errors_total = IntCounterVec::new(
            Opts::new(
                "janus_operator_watch_errors_total",
                "Errors of the operator's watches (retried with backoff), by watch",
            ),
            &["watch"],
        )
        .unwrap();
        let undecodable_objects_total = IntCounterVec::new(
            Opts::new(
                "janus_operator_undecodable_objects_total",
                "Object versions skipped because they do not decode, by kind",
            ),
            &["kind"],
        )
        .unwrap();
        for c in [
            Box::new(reconcile_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors_total.clone()),
            Box::new(reconcile_duration_seconds.clone()),
            Box::new(jobs.clone()),
            Box::new(job_restarts_total.clone()),
            Box::new(eval_jobs.clone()),
            Box::new(eval_restarts_total.clone()),
            Box::new(leader.clone()),
            Box::new(api_requests_total.clone()),
            Box::new(watch_errors_total.clone()),
            Box::new(undecodable_objects_total.clone()),
        ] {
            registry.register(c).unwrap();
        }
        for p in JobPhase::ALL {
            jobs.with_label_values(&[p.as_str()]).set(0);
        }
        for e in crate::error::Error::METRIC_LABELS {
            reconcile_errors_total.with_label_values(&[e]);
        }
        for w in crate::health::WATCHES {
            watch_errors_total.with_label_values(&[w]);
        }
        for k in ["JanusTrainingJob", "JanusEvalJob"] {
            undecodable_objects_total.with_label_values(&[k]);
        }
        for p in EvalPhase::ALL {
            eval_jobs.with_label_values(&[p.as_str()]).set(0);
        }
        Metrics {
            registry,
            reconcile_total,
            reconcile_errors_total,
            reconcile_duration_seconds,
            jobs,
            job_restarts_total,
            eval_jobs,
            eval_restarts_total,
            leader,
            api_requests_total,
            watch_errors_total,
            undecodable_objects_total,
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

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "janus_operator_watch_errors_total{watch=\"pods\"} 0",
            "janus_operator_undecodable_objects_total{kind=\"JanusTrainingJob\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
