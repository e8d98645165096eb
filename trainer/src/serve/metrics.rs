//! Prometheus metrics of `janus serve` (names in docs/metrics.md; the Grafana
//! dashboard reads them).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "janus_serve_requests_total";
pub const GENERATED_TOKENS_TOTAL: &str = "janus_serve_generated_tokens_total";
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "janus_serve_time_to_first_token_seconds";
pub const QUEUE_DEPTH: &str = "janus_serve_queue_depth";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by endpoint and HTTP status.
    pub requests_total: IntCounterVec,
    pub generated_tokens_total: IntCounter,
    pub prompt_tokens_total: IntCounter,
    /// From a request's arrival to its first generated token (queueing included).
    pub time_to_first_token_seconds: Histogram,
    /// Sequences waiting for a place in the running batch.
    pub queue_depth: IntGauge,
    /// Sequences in the running batch.
    pub running: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "HTTP requests answered, by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let generated_tokens_total =
            IntCounter::new(GENERATED_TOKENS_TOTAL, "Tokens generated").expect("valid metric");
        let prompt_tokens_total =
            IntCounter::new("janus_serve_prompt_tokens_total", "Prompt tokens prefilled")
                .expect("valid metric");
        let time_to_first_token_seconds = Histogram::with_opts(
            HistogramOpts::new(
                TIME_TO_FIRST_TOKEN_SECONDS,
                "Seconds from a request's arrival to its first generated token",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new(
            QUEUE_DEPTH,
            "Sequences waiting for a place in the running batch",
        )
        .expect("valid metric");
        let running = IntGauge::new("janus_serve_running_sequences", "Sequences being decoded")
            .expect("valid metric");
        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(generated_tokens_total.clone()),
            Box::new(prompt_tokens_total.clone()),
            Box::new(time_to_first_token_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(running.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests_total,
            generated_tokens_total,
            prompt_tokens_total,
            time_to_first_token_seconds,
            queue_depth,
            running,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("utf-8 metrics")
    }

    pub fn answered(&self, endpoint: &str, status: u16) {
        self.requests_total
            .with_label_values(&[endpoint, &status.to_string()])
            .inc();
    }
}
