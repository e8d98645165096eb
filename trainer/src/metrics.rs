//! Training metrics for Prometheus (the names in docs/metrics.md), served on
//! `/metrics` by the first process of every pod when `JANUS_METRICS_PORT` is set (the
//! operator sets it and declares the container port; outside a pod nothing listens).
//!
//! Every series carries `janus_job`, `namespace` and `rank` as constant labels.
//! `janus_job` rather than `job`: Prometheus gives every target a `job` label of its
//! own (the scrape job), and one exported under the same name would be renamed
//! `exported_job`.
//!
//! What is measured, per optimizer step:
//! - `janus_allreduce_seconds`: wall time inside collectives (gradient buckets and the
//!   step's token/loss counts), which includes waiting for the slowest rank; measured
//!   by wrapping the job's [`Collective`] (see [`TrainMetrics::timed`]);
//! - `janus_data_wait_seconds`: time the loop waited for the step's data;
//! - `janus_checkpoint_seconds` (per checkpoint): how long the loop was held, the save
//!   on rank 0 and the barrier everywhere;
//! - `janus_train_mfu`: model FLOPs per second of this rank over its peak (see
//!   [`flops_per_token`] and [`peak_flops`]).
//!
//! Recording is a few atomic operations per step; the HTTP server runs on the
//! storage runtime's threads and never holds up training.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tch::{Device, Kind, Tensor};

use crate::dist::Collective;
use crate::error::Result;
use crate::model::ModelConfig;

/// The fabric check's figure (`dist::fabric`), exported once measured.
pub const FABRIC_BUS_BANDWIDTH: &str = "janus_fabric_bus_bandwidth_gbps";

/// Units drawn per weighted `data.train` source, labelled `source`.
pub const DATA_SOURCE_DRAWN: &str = "janus_data_source_drawn_total";

/// Port of `/metrics` in a worker pod (the operator sets it; unset: no server).
pub const PORT_ENV: &str = janus_crds::env::METRICS_PORT;
/// Peak FLOP/s of one rank's device in TFLOP/s, overriding [`peak_flops`]'s table.
pub const PEAK_TFLOPS_ENV: &str = "JANUS_PEAK_TFLOPS";

/// Buckets of the step-time histograms: 100 µs to 5 minutes.
const STEP_BUCKETS: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
    300.0,
];
/// Buckets of the checkpoint histogram: 10 ms to an hour (a 7B model with its Adam
/// state is ~80 GB).
const CHECKPOINT_BUCKETS: [f64; 12] = [
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Who this process is, for the constant labels.
#[derive(Debug, Clone)]
pub struct Labels {
    pub job: String,
    /// Empty outside Kubernetes (the label is then absent, as Prometheus treats empty).
    pub namespace: String,
    pub rank: usize,
}

impl Labels {
    /// From the pod's environment (`JANUS_JOB`, `JANUS_POD_NAMESPACE`), falling back to
    /// the config's job name.
    pub fn from_env(config_job: &str, rank: usize) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            job: var(janus_crds::env::JOB).unwrap_or_else(|| config_job.to_string()),
            namespace: var(janus_crds::env::POD_NAMESPACE).unwrap_or_default(),
            rank,
        }
    }
}

/// The metrics of one training process.
pub struct TrainMetrics {
    registry: Registry,
    step: IntGauge,
    loss: Gauge,
    tokens_per_second: Gauge,
    mfu: Gauge,
    grad_norm: Gauge,
    learning_rate: Gauge,
    allreduce: Histogram,
    data_wait: Histogram,
    checkpoint: Histogram,
    attention_fallback: IntCounter,
    /// Registered by [`TrainMetrics::fabric`]: no series before the check ran.
    fabric: Gauge,
    /// Units drawn per source of a weighted mixture; registered by
    /// [`TrainMetrics::drawn`], so a run without a mixture has no such series.
    drawn: IntCounterVec,
    /// Nanoseconds spent in collectives since the last step was recorded.
    collective_nanos: Arc<AtomicU64>,
    /// Model FLOPs of one token (forward and backward), and this rank's peak FLOP/s.
    /// Until the first `sequences`: an upper bound, every token in a sequence of the
    /// full length.
    flops_per_token: f64,
    flops: ModelFlops,
    /// Tokens and the sum of their sequences' squared lengths this run (`sequences`).
    attention: std::sync::Mutex<(f64, f64)>,
    peak_flops: Option<f64>,
    world_size: usize,
}

fn opts(name: &str, help: &str, l: &Labels) -> Opts {
    let mut o = Opts::new(name, help)
        .const_label("janus_job", &l.job)
        .const_label("rank", l.rank.to_string());
    if !l.namespace.is_empty() {
        o = o.const_label("namespace", &l.namespace);
    }
    o
}

fn histogram(name: &str, help: &str, l: &Labels, buckets: &[f64]) -> Histogram {
    let o = opts(name, help, l);
    let mut h = HistogramOpts::new(o.name, o.help).buckets(buckets.to_vec());
    h.common_opts.const_labels = o.const_labels;
    Histogram::with_opts(h).expect("valid histogram")
}

impl TrainMetrics {
    /// Metrics for a run of `model` with sequences of up to `seq_len` tokens on
    /// `device`, as rank `labels.rank` of `world_size`.
    pub fn new(
        labels: &Labels,
        world_size: usize,
        model: &ModelConfig,
        params: &[Tensor],
        seq_len: usize,
        device: Device,
        kind: Kind,
    ) -> Self {
        let gauge = |n: &str, h: &str| Gauge::with_opts(opts(n, h, labels)).expect("valid gauge");
        let m = Self {
            registry: Registry::new(),
            step: IntGauge::with_opts(opts(
                "janus_train_step",
                "Optimizer steps completed (including those before a resume)",
                labels,
            ))
            .expect("valid gauge"),
            loss: gauge("janus_train_loss", "Loss of the last optimizer step"),
            tokens_per_second: gauge(
                "janus_train_tokens_per_second",
                "Input tokens per second of the whole job, this run",
            ),
            mfu: gauge(
                "janus_train_mfu",
                "Model FLOPs utilisation of this rank (0-1): 6N + attention FLOPs per token over the device's peak",
            ),
            grad_norm: gauge(
                "janus_train_grad_norm",
                "Global gradient norm of the last step, before clipping",
            ),
            learning_rate: gauge(
                "janus_train_learning_rate",
                "Learning rate of the last step",
            ),
            allreduce: histogram(
                "janus_allreduce_seconds",
                "Seconds per optimizer step inside collectives (gradients and counts, including waiting for other ranks)",
                labels,
                &STEP_BUCKETS,
            ),
            data_wait: histogram(
                "janus_data_wait_seconds",
                "Seconds per optimizer step the loop waited for its data",
                labels,
                &STEP_BUCKETS,
            ),
            checkpoint: histogram(
                "janus_checkpoint_seconds",
                "Seconds the loop was held by one checkpoint (save on rank 0, barrier on all)",
                labels,
                &CHECKPOINT_BUCKETS,
            ),
            attention_fallback: IntCounter::with_opts(opts(
                "janus_attention_fallback_total",
                "Packed attention calls on CUDA that flash attention's varlen kernel refused, run segment by segment instead",
                labels,
            ))
            .expect("valid counter"),
            fabric: gauge(
                FABRIC_BUS_BANDWIDTH,
                "All-reduce bus bandwidth in GB/s the gang measured before its first step (nccl-tests' busbw)",
            ),
            drawn: IntCounterVec::new(
                opts(
                    DATA_SOURCE_DRAWN,
                    "Units (examples or pairs) of each weighted data.train source this rank trained on in this run",
                    labels,
                ),
                &["source"],
            )
            .expect("valid counter"),
            collective_nanos: Arc::new(AtomicU64::new(0)),
            flops_per_token: flops_per_token(model, params, seq_len),
            flops: ModelFlops::new(model, params),
            attention: Default::default(),
            peak_flops: peak_flops(device, kind),
            world_size: world_size.max(1),
        };
        for c in [
            Box::new(m.step.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.loss.clone()),
            Box::new(m.tokens_per_second.clone()),
            Box::new(m.mfu.clone()),
            Box::new(m.grad_norm.clone()),
            Box::new(m.learning_rate.clone()),
            Box::new(m.allreduce.clone()),
            Box::new(m.data_wait.clone()),
            Box::new(m.checkpoint.clone()),
            Box::new(m.attention_fallback.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// `comm`, with the time spent in its collectives added to this step's all-reduce
    /// time: each collective's own time where the calls return before it is done (the
    /// device time between CUDA events for NCCL), the wall time of the calls otherwise.
    pub fn timed(&self, mut comm: Box<dyn Collective>) -> Box<dyn Collective> {
        let device_timed = comm.time_collectives_into(self.collective_nanos.clone());
        Box::new(TimedCollective {
            inner: comm,
            nanos: (!device_timed).then(|| self.collective_nanos.clone()),
        })
    }

    /// The fabric check measured `gbps` (the series appears now, not as a 0 before).
    pub fn fabric(&self, gbps: f64) {
        self.fabric.set(gbps);
        // Registered once; a second measurement only sets the value.
        let _ = self.registry.register(Box::new(self.fabric.clone()));
    }

    /// A weighted mixture's sources have drawn `drawn` units each so far in this run
    /// (`(source, total)`, the feed's counts): the counters move to those totals.
    pub fn drawn<'a>(&self, drawn: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut any = false;
        for (source, total) in drawn {
            any = true;
            let c = self.drawn.with_label_values(&[source]);
            if total > c.get() {
                c.inc_by(total - c.get());
            }
        }
        if any {
            // Registered once, with the first draws.
            let _ = self.registry.register(Box::new(self.drawn.clone()));
        }
    }

    /// Forget collective time not spent in a step (start-up broadcast, barriers).
    pub fn reset_collective_time(&self) {
        self.collective_nanos.store(0, Ordering::Relaxed);
    }

    /// The step counter before the first step (a resumed run starts at its checkpoint).
    pub fn start_at(&self, step: u64) {
        self.step.set(step as i64);
        self.reset_collective_time();
    }

    pub fn data_wait(&self, d: Duration) {
        self.data_wait.observe(d.as_secs_f64());
    }

    /// One optimizer step finished; `tokens_per_second` is the whole job's.
    pub fn step(&self, step: u64, loss: f64, grad_norm: f64, lr: f64, tokens_per_second: f64) {
        let nanos = self.collective_nanos.swap(0, Ordering::Relaxed);
        self.allreduce.observe(nanos as f64 * 1e-9);
        self.step.set(step as i64);
        self.loss.set(loss);
        self.grad_norm.set(grad_norm);
        self.learning_rate.set(lr);
        self.tokens_per_second.set(tokens_per_second);
        let fallbacks = crate::model::fallback_calls();
        let counted = self.attention_fallback.get();
        if fallbacks > counted {
            self.attention_fallback.inc_by(fallbacks - counted);
        }
        if let Some(peak) = self.peak_flops {
            let per_rank = tokens_per_second / self.world_size as f64;
            self.mfu.set(self.mean_flops_per_token() * per_rank / peak);
        }
    }

    /// A step trained `tokens` real tokens whose sequences' (packed segments')
    /// squared lengths sum to `squares` (`data::Batch::attention_squares`): MFU's
    /// attention term from then on follows the run's real sequences.
    pub fn sequences(&self, tokens: i64, squares: i64) {
        let mut a = self.attention.lock().expect("metrics lock");
        a.0 += tokens as f64;
        a.1 += squares as f64;
    }

    /// Model FLOPs per token of the sequences trained so far (see [`ModelFlops`]).
    fn mean_flops_per_token(&self) -> f64 {
        let (tokens, squares) = *self.attention.lock().expect("metrics lock");
        if tokens > 0.0 {
            self.flops.of_tokens(tokens, squares) / tokens
        } else {
            self.flops_per_token
        }
    }

    /// A checkpoint held the loop for `d` (its barrier is not all-reduce time).
    pub fn checkpoint(&self, d: Duration) {
        self.checkpoint.observe(d.as_secs_f64());
        self.reset_collective_time();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = vec![];
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }

    /// Serve `/metrics` on `0.0.0.0:$JANUS_METRICS_PORT` when this is the first process
    /// of its pod and the variable is set. A port that cannot be bound is logged, not
    /// fatal: training matters more than its metrics.
    pub fn serve_from_env(self: &Arc<Self>, local_rank: usize) -> Option<SocketAddr> {
        if local_rank != 0 {
            return None;
        }
        let port: u16 = match std::env::var(PORT_ENV)
            .ok()
            .filter(|v| !v.is_empty())?
            .parse()
        {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!(variable = PORT_ENV, "not a port number; /metrics disabled");
                return None;
            }
        };
        match self.serve(SocketAddr::from(([0, 0, 0, 0], port))) {
            Ok(addr) => {
                tracing::info!(%addr, "serving /metrics");
                Some(addr)
            }
            Err(e) => {
                tracing::warn!(port, error = %e, "cannot serve /metrics");
                None
            }
        }
    }

    /// Serve `/metrics` on `addr` (port 0: any) in the background; the bound address.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let ctx = || format!("metrics listener {addr}");
        let listener = std::net::TcpListener::bind(addr).map_err(|e| crate::Error::io(ctx(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| crate::Error::io(ctx(), e))?;
        let bound = listener
            .local_addr()
            .expect("bound listener has an address");
        let rt = crate::storage::runtime()?;
        let me = self.clone();
        rt.spawn(async move {
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let me = me.clone();
                    async move { me.encode() }
                }),
            );
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::warn!(error = %e, "/metrics server stopped");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "/metrics server could not start"),
            }
        });
        Ok(bound)
    }
}

/// A collective that adds the wall time of every call to a shared counter (`None`:
/// the communicator adds its device time there itself).
struct TimedCollective {
    inner: Box<dyn Collective>,
    nanos: Option<Arc<AtomicU64>>,
}

impl TimedCollective {
    fn time<T>(&mut self, f: impl FnOnce(&mut dyn Collective) -> T) -> T {
        let t = Instant::now();
        let out = f(self.inner.as_mut());
        if let Some(n) = &self.nanos {
            n.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        out
    }
}

impl Collective for TimedCollective {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn is_noop(&self) -> bool {
        self.inner.is_noop()
    }
    fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.time(|c| c.all_reduce_sum(t))
    }
    fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.time(|c| c.broadcast(t, root))
    }
    fn reduce_scatter_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.time(|c| c.reduce_scatter_sum(t))
    }
    fn all_gather(&mut self, t: &mut Tensor) -> Result<()> {
        self.time(|c| c.all_gather(t))
    }
    fn barrier(&mut self) -> Result<()> {
        self.time(|c| c.barrier())
    }
    fn start(&mut self, op: crate::dist::Op, t: &Tensor) -> Result<()> {
        self.time(|c| c.start(op, t))
    }
    fn wait(&mut self) -> Result<()> {
        self.time(|c| c.wait())
    }
    fn time_collectives_into(&mut self, nanos: Arc<AtomicU64>) -> bool {
        self.inner.time_collectives_into(nanos)
    }
}

/// Model FLOPs of training, forward and backward: the one formula of the metrics and
/// the benchmarks (`janus bench-train`, `bench/train_bench.py` mirrors it). PaLM's
/// appendix B, as nanoGPT and torchtitan count them: `6 N` per token for the matrix
/// multiplications, where N is every parameter but the input embedding (a lookup,
/// unless tied to the LM head), plus `12 L d s` per token of a sequence of `s` tokens
/// for the attention scores and values (`d` = heads x head_dim; causal masking is not
/// discounted, by that convention). `s` is the length of the sequence a token attends
/// within: of each packed segment, never of the whole packed row, and never padding
/// (neither is model work). Activation checkpointing's recomputation is not counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFlops {
    /// `6 N`.
    pub dense_per_token: f64,
    /// `12 L d`: times `s` per token, `s^2` per sequence.
    pub attention_per_token_and_length: f64,
}

impl ModelFlops {
    /// From the model's trainable `params` (what the trainer really multiplies).
    pub fn new(model: &ModelConfig, params: &[Tensor]) -> Self {
        let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
        let embedding = if model.tie_word_embeddings {
            0
        } else {
            (model.vocab_size * model.hidden_size) as i64
        };
        let head_dim = model
            .head_dim
            .unwrap_or(model.hidden_size / model.num_attention_heads.max(1));
        Self {
            dense_per_token: 6.0 * (total - embedding).max(0) as f64,
            attention_per_token_and_length: 12.0
                * model.num_hidden_layers as f64
                * (model.num_attention_heads * head_dim) as f64,
        }
    }

    /// FLOPs of training on sequences of the lengths `lens` (each packed segment one).
    pub fn of_sequences(&self, lens: impl IntoIterator<Item = usize>) -> f64 {
        let (tokens, squares) = lens
            .into_iter()
            .fold((0.0, 0.0), |(t, q), s| (t + s as f64, q + (s * s) as f64));
        self.of_tokens(tokens, squares)
    }

    /// FLOPs of `tokens` tokens whose sequences' lengths squared sum to `squares`.
    pub fn of_tokens(&self, tokens: f64, squares: f64) -> f64 {
        self.dense_per_token * tokens + self.attention_per_token_and_length * squares
    }

    /// Mean FLOPs per token over sequences of the lengths `lens`.
    pub fn per_token(&self, lens: impl IntoIterator<Item = usize>) -> f64 {
        let lens: Vec<usize> = lens.into_iter().collect();
        let tokens: usize = lens.iter().sum();
        self.of_sequences(lens) / tokens.max(1) as f64
    }
}

/// Model FLOPs of one trained token of a sequence of `seq_len` tokens
/// (see [`ModelFlops`]).
pub fn flops_per_token(model: &ModelConfig, params: &[Tensor], seq_len: usize) -> f64 {
    ModelFlops::new(model, params).per_token([seq_len])
}

/// Dense peak FLOP/s of one rank's device for `kind`: `JANUS_PEAK_TFLOPS` if set; a
/// table of data-centre GPUs by name (tensor-core bf16/fp16, or plain fp32 since torch
/// does not use TF32 for fp32 matmuls by default); for the CPU, the threads torch uses
/// x clock x fp32 FLOPs per cycle from the SIMD flags (AVX-512: 64, AVX2+FMA: 32,
/// else 8). None for an unknown GPU (no MFU is reported rather than a wrong one).
pub fn peak_flops(device: Device, kind: Kind) -> Option<f64> {
    if let Some(tf) = std::env::var(PEAK_TFLOPS_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
    {
        return Some(tf * 1e12);
    }
    match device {
        Device::Cuda(i) => {
            let name = cuda_device_name(i)?;
            let half = matches!(kind, Kind::BFloat16 | Kind::Half);
            gpu_peak_tflops(&name, half).map(|tf| tf * 1e12)
        }
        _ => cpu_peak_flops(tch::get_num_threads().max(1) as usize),
    }
}

/// (name fragment, dense bf16/fp16 tensor TFLOP/s, fp32 TFLOP/s) from the vendors'
/// data sheets; the first match wins, so longer names come first.
const GPUS: &[(&str, f64, f64)] = &[
    ("GB200", 2500.0, 80.0),
    ("B200", 2250.0, 80.0),
    ("H200", 989.4, 66.9),
    ("GH200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("H800", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
];

fn gpu_peak_tflops(name: &str, half: bool) -> Option<f64> {
    GPUS.iter()
        .find(|(n, _, _)| name.contains(n))
        .map(|&(_, h, f)| if half { h } else { f })
}

fn cuda_device_name(ordinal: usize) -> Option<String> {
    // libtorch has initialised CUDA on this device already, so the driver library is
    // loaded and cudarc's loader cannot panic here.
    if !tch::Cuda::is_available() {
        return None;
    }
    cudarc::driver::CudaContext::new(ordinal)
        .ok()
        .and_then(|c| c.name().ok())
}

fn cpu_peak_flops(threads: usize) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_whitespace()
        .collect();
    let per_cycle = if flags.contains(&"avx512f") {
        64.0
    } else if flags.contains(&"avx2") && flags.contains(&"fma") {
        32.0
    } else {
        8.0
    };
    Some(threads as f64 * mhz * 1e6 * per_cycle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            job: "sft-e2e".into(),
            namespace: "research".into(),
            rank: 1,
        }
    }

    fn tiny() -> ModelConfig {
        ModelConfig::small("mistral", 512, 64, 136, 2, 4, 2)
    }

    #[test]
    fn every_design_metric_is_exported_with_job_namespace_and_rank() {
        let m = TrainMetrics::new(&labels(), 2, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        m.data_wait(Duration::from_millis(3));
        m.step(7, 2.5, 0.8, 1e-4, 1000.0);
        m.checkpoint(Duration::from_millis(40));
        let text = m.encode();
        let l = r#"janus_job="sft-e2e",namespace="research",rank="1""#;
        for s in [
            format!("janus_train_step{{{l}}} 7"),
            format!("janus_train_loss{{{l}}} 2.5"),
            format!("janus_train_grad_norm{{{l}}} 0.8"),
            format!("janus_train_learning_rate{{{l}}} 0.0001"),
            format!("janus_train_tokens_per_second{{{l}}} 1000"),
            format!("janus_train_mfu{{{l}}}"),
            format!("janus_allreduce_seconds_count{{{l}}} 1"),
            format!("janus_data_wait_seconds_sum{{{l}}} 0.003"),
            format!("janus_checkpoint_seconds_count{{{l}}} 1"),
            format!("janus_attention_fallback_total{{{l}}} 0"),
        ] {
            assert!(text.contains(&s), "missing {s} in\n{text}");
        }
    }

    #[test]
    fn the_fabric_figure_is_exported_once_measured_and_not_before() {
        let m = TrainMetrics::new(&labels(), 2, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        assert!(!m.encode().contains(FABRIC_BUS_BANDWIDTH));
        m.fabric(1.5);
        m.fabric(2.5);
        let l = r#"janus_job="sft-e2e",namespace="research",rank="1""#;
        let want = format!("{FABRIC_BUS_BANDWIDTH}{{{l}}} 2.5");
        assert!(m.encode().contains(&want), "{}", m.encode());
    }

    #[test]
    fn mixture_draws_are_counted_per_source_and_absent_without_a_mixture() {
        let m = TrainMetrics::new(&labels(), 2, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        m.drawn(std::iter::empty());
        assert!(!m.encode().contains(DATA_SOURCE_DRAWN));
        m.drawn([("hh-rlhf", 7), ("oasst1", 2)]);
        m.drawn([("hh-rlhf", 9), ("oasst1", 2)]);
        let l = r#"janus_job="sft-e2e",namespace="research",rank="1""#;
        for (source, n) in [("hh-rlhf", 9), ("oasst1", 2)] {
            let want = format!("{DATA_SOURCE_DRAWN}{{{l},source=\"{source}\"}} {n}");
            assert!(m.encode().contains(&want), "{want} in\n{}", m.encode());
        }
    }

    #[test]
    fn histograms_exist_before_their_first_observation() {
        // Dashboards take rate(..._sum) from the start of a run.
        let m = TrainMetrics::new(&labels(), 1, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        let text = m.encode();
        for s in [
            "janus_allreduce_seconds_sum{",
            "janus_data_wait_seconds_count{",
            "janus_checkpoint_seconds_bucket{",
        ] {
            assert!(text.contains(s), "missing {s} in\n{text}");
        }
    }

    #[test]
    fn time_in_collectives_is_attributed_to_the_step_not_to_checkpoints() {
        struct Slow;
        impl Collective for Slow {
            fn rank(&self) -> usize {
                0
            }
            fn world_size(&self) -> usize {
                2
            }
            fn all_reduce_sum(&mut self, _: &mut Tensor) -> Result<()> {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            }
            fn broadcast(&mut self, _: &mut Tensor, _: usize) -> Result<()> {
                Ok(())
            }
            fn reduce_scatter_sum(&mut self, _: &mut Tensor) -> Result<()> {
                Ok(())
            }
            fn all_gather(&mut self, _: &mut Tensor) -> Result<()> {
                Ok(())
            }
        }
        let m = TrainMetrics::new(&labels(), 2, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        let mut c = m.timed(Box::new(Slow));
        let mut t = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        c.all_reduce_sum(&mut t).unwrap();
        c.all_reduce_sum(&mut t).unwrap();
        m.step(1, 1.0, 1.0, 1e-4, 10.0);
        let first = m.allreduce.get_sample_sum();
        assert!((0.04..1.0).contains(&first), "{first}");
        c.barrier().unwrap();
        m.checkpoint(Duration::from_millis(25));
        m.step(2, 1.0, 1.0, 1e-4, 10.0);
        assert_eq!(m.allreduce.get_sample_count(), 2);
        assert_eq!(m.allreduce.get_sample_sum(), first, "the barrier leaked in");
    }

    #[test]
    fn flops_per_token_follows_the_palm_formula() {
        // 7B Mistral: 7.24e9 parameters, 131M of them the input embedding.
        let cfg = ModelConfig::small("mistral", 32000, 4096, 14336, 32, 32, 8);
        let params = [Tensor::zeros([7_241_732_096], (Kind::Int8, Device::Cpu))];
        let f = flops_per_token(&cfg, &params, 8192);
        let expect = 6.0 * (7_241_732_096.0 - 32000.0 * 4096.0) + 12.0 * 32.0 * 4096.0 * 8192.0;
        assert_eq!(f, expect);
    }

    #[test]
    fn flops_count_attention_per_packed_segment_by_hand() {
        // Hidden 16, 4 heads of 4 (d = 16), 2 KV heads (width 8), MLP 40, 2 layers,
        // vocab 100, untied. Per layer: q 16x16 + k 16x8 + v 16x8 + o 16x16 = 768,
        // MLP 3 x 16 x 40 = 1920, two norms 32: 2720. Both layers 5440, final norm 16,
        // LM head 1600 (the input embedding's 1600 is a lookup, not counted): N = 7056.
        let cfg = ModelConfig::small("mistral", 100, 16, 40, 2, 4, 2);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _model = crate::model::Transformer::new(&vs.root(), &cfg);
        let params = vs.trainable_variables();
        let f = ModelFlops::new(&cfg, &params);
        assert_eq!(f.dense_per_token, 6.0 * 7056.0);
        assert_eq!(f.attention_per_token_and_length, 12.0 * 2.0 * 16.0);
        // One packed row of 8 tokens: segments of 3 and 5. Dense 6 x 7056 x 8 = 338688;
        // attention 12 x 2 x 16 x (3^2 + 5^2) = 13056; not 12 x 2 x 16 x 8^2 = 24576,
        // the whole row's count.
        assert_eq!(f.of_sequences([3, 5]), 338688.0 + 13056.0);
        assert_eq!(f.per_token([3, 5]), (338688.0 + 13056.0) / 8.0);
        assert_eq!(f.of_tokens(8.0, 34.0), f.of_sequences([3, 5]));
    }

    #[test]
    fn mfu_is_achieved_over_peak_flops() {
        std::env::set_var(PEAK_TFLOPS_ENV, "1");
        let m = TrainMetrics::new(&labels(), 2, &tiny(), &[], 128, Device::Cpu, Kind::Float);
        std::env::remove_var(PEAK_TFLOPS_ENV);
        let fpt = m.flops_per_token;
        // 2e12 / fpt tokens/s over 2 ranks: each rank does 1e12 FLOP/s = its peak.
        m.step(1, 1.0, 1.0, 1e-4, 2e12 / fpt);
        assert!((m.mfu.get() - 1.0).abs() < 1e-9, "{}", m.mfu.get());
    }

    #[test]
    fn mfu_counts_the_attention_of_the_sequences_trained() {
        std::env::set_var(PEAK_TFLOPS_ENV, "1");
        let cfg = tiny();
        let params = [Tensor::zeros([100_000], (Kind::Int8, Device::Cpu))];
        let m = TrainMetrics::new(&labels(), 1, &cfg, &params, 128, Device::Cpu, Kind::Float);
        std::env::remove_var(PEAK_TFLOPS_ENV);
        m.step(1, 1.0, 1.0, 1e-4, 1000.0);
        let bound = m.mfu.get();
        // Packed rows of 16-token segments: a sixteenth of the full-length bound's
        // attention, as the hand count says.
        m.sequences(64, 4 * 16 * 16);
        m.step(2, 1.0, 1.0, 1e-4, 1000.0);
        let f = ModelFlops::new(&cfg, &params);
        assert_eq!(m.mfu.get(), f.per_token([16; 4]) * 1000.0 / 1e12);
        assert!(m.mfu.get() < bound);
    }

    #[test]
    fn gpu_peaks_come_from_the_data_sheet_table() {
        assert_eq!(gpu_peak_tflops("NVIDIA H100 80GB HBM3", true), Some(989.4));
        assert_eq!(gpu_peak_tflops("NVIDIA H100 PCIe", true), Some(756.0));
        assert_eq!(gpu_peak_tflops("NVIDIA H200", false), Some(66.9));
        assert_eq!(gpu_peak_tflops("NVIDIA A100-SXM4-80GB", true), Some(312.0));
        assert_eq!(gpu_peak_tflops("Tesla T4", true), None);
    }

    #[test]
    fn the_cpu_has_a_peak() {
        let p = cpu_peak_flops(2).expect("/proc/cpuinfo has cpu MHz and flags");
        assert!(p > 1e9, "{p}");
    }
}
