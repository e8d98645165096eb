//! The fabric check before training: the whole gang all-reduces a buffer over the
//! collective training will use (NCCL on GPUs, the TCP ring on CPUs) and turns the
//! median time into nccl-tests' bus bandwidth, so a job on a slow or misconfigured
//! fabric (NCCL over TCP where InfiniBand was expected, a wrong `NCCL_SOCKET_IFNAME`)
//! says so before it spends hours on it.
//!
//! It runs before the first step and leaves no trace in training: a zero buffer of its
//! own, no random numbers drawn, nothing the model or the optimizer reads.

use std::time::Instant;

use janus_crds::config::{FabricAction, FabricCheckSection};
use janus_crds::progress::Fabric;
use tch::{Device, Kind, Tensor};

use super::collective::{all_reduce_f64, Collective};
use crate::error::{Error, Result};

/// nccl-tests' algorithm bandwidth in GB/s: bytes all-reduced over the time.
pub fn algorithm_bandwidth(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

/// nccl-tests' bus bandwidth of an all-reduce over `ranks`: each rank sends and
/// receives 2(n-1)/n of the buffer (a reduce-scatter and an all-gather of n-1 steps of
/// 1/n each), so `algbw * 2(n-1)/n` is what its links carried, independent of n.
pub fn bus_bandwidth(algbw: f64, ranks: usize) -> f64 {
    if ranks == 0 {
        return 0.0;
    }
    algbw * 2.0 * (ranks - 1) as f64 / ranks as f64
}

/// The median of `times` (the mean of the two middle ones for an even count).
pub fn median(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => t[n / 2],
        _ => (t[n / 2 - 1] + t[n / 2]) / 2.0,
    }
}

/// Wait until the device has run everything enqueued (NCCL only enqueues).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Measure: `warmup_iterations` untimed all-reduces of `size_bytes`, then
/// `iterations` timed ones; each rank's median time, averaged over the ranks (as
/// nccl-tests averages its time over ranks) and taken from rank 0, so every rank holds
/// the same figure and makes the same decision. Every rank must call it.
pub fn measure(
    comm: &mut dyn Collective,
    check: &FabricCheckSection,
    device: Device,
    backend: &str,
) -> Result<Fabric> {
    let ranks = comm.world_size();
    let elements = (check.size_bytes / 4) as i64;
    // Zeros: the sum stays zero however many iterations, so nothing overflows.
    let mut buf = Tensor::zeros([elements], (Kind::Float, device));
    for _ in 0..check.warmup_iterations {
        comm.all_reduce_sum(&mut buf)?;
    }
    sync(device);
    let mut times = Vec::with_capacity(check.iterations as usize);
    for _ in 0..check.iterations {
        let t = Instant::now();
        comm.all_reduce_sum(&mut buf)?;
        sync(device);
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = all_reduce_f64(comm, &[median(&times)])?[0] / ranks as f64;
    let mut agreed = Tensor::from_slice(&[mean]);
    comm.broadcast(&mut agreed, 0)?;
    let seconds = f64::try_from(&agreed).expect("one f64");
    let algbw = algorithm_bandwidth(check.size_bytes, seconds);
    Ok(Fabric {
        bus_bandwidth_gbps: bus_bandwidth(algbw, ranks),
        algorithm_bandwidth_gbps: algbw,
        size_bytes: check.size_bytes,
        ranks: ranks as u32,
        backend: backend.into(),
        seconds,
        measured_at: crate::report::now_rfc3339(),
    })
}

/// What a measurement means for the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No threshold, or at or above it.
    Pass,
    /// Below the threshold with action `warn`: the message, and training goes on.
    Warn(String),
    /// Below the threshold with action `fail`: the run stops with this message.
    Fail(String),
}

/// The decision for `f` under `check`, with a message naming both figures.
pub fn verdict(check: &FabricCheckSection, f: &Fabric) -> Verdict {
    let Some(min) = check.min_bus_bandwidth_gbps else {
        return Verdict::Pass;
    };
    if f.bus_bandwidth_gbps >= min {
        return Verdict::Pass;
    }
    let msg = format!(
        "all-reduce bus bandwidth {:.3} GB/s over {} ranks ({}, {} bytes, median of {}) is below the required {min} GB/s (spec.fabricCheck.minBusBandwidthGBps, distributed.fabric_check.min_bus_bandwidth_gbps)",
        f.bus_bandwidth_gbps, f.ranks, f.backend, f.size_bytes, check.iterations
    );
    match check.action {
        FabricAction::Fail => Verdict::Fail(msg),
        FabricAction::Warn => Verdict::Warn(msg),
    }
}

/// Measure, log and judge: the figure, or the run's error when the check fails.
pub fn check(
    comm: &mut dyn Collective,
    check: &FabricCheckSection,
    device: Device,
    backend: &str,
) -> Result<(Fabric, Verdict)> {
    let f = measure(comm, check, device, backend)?;
    let v = verdict(check, &f);
    if comm.rank() == 0 {
        tracing::info!(
            bus_bandwidth_gbps = f.bus_bandwidth_gbps,
            algorithm_bandwidth_gbps = f.algorithm_bandwidth_gbps,
            seconds = f.seconds,
            size_bytes = f.size_bytes,
            ranks = f.ranks,
            backend = %f.backend,
            required_gbps = ?check.min_bus_bandwidth_gbps,
            "fabric check"
        );
    }
    match &v {
        Verdict::Warn(m) if comm.rank() == 0 => tracing::warn!("fabric check: {m}"),
        _ => {}
    }
    Ok((f, v))
}

/// The error that ends a run whose fabric check failed.
pub fn failed(message: String) -> Error {
    Error::Fabric(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_bandwidth_is_algbw_times_2_n_minus_1_over_n() {
        // By hand: 64 MiB in 0.5 s is 134.217728 MB/s; a 2-rank ring sends 1/2 twice
        // (factor 1), a 4-rank ring 3/4 twice (factor 1.5), 8 ranks 7/8 twice (1.75).
        let algbw = algorithm_bandwidth(64 << 20, 0.5);
        assert!((algbw - 0.134217728).abs() < 1e-12, "{algbw}");
        assert_eq!(bus_bandwidth(algbw, 1), 0.0);
        assert!((bus_bandwidth(algbw, 2) - 0.134217728).abs() < 1e-12);
        assert!((bus_bandwidth(algbw, 4) - 0.201326592).abs() < 1e-12);
        assert!((bus_bandwidth(algbw, 8) - 0.234881024).abs() < 1e-12);
    }

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    fn fabric(gbps: f64) -> Fabric {
        Fabric {
            bus_bandwidth_gbps: gbps,
            algorithm_bandwidth_gbps: gbps,
            size_bytes: 1024,
            ranks: 2,
            backend: "ring".into(),
            seconds: 1e-3,
            measured_at: "t".into(),
        }
    }

    #[test]
    fn below_the_threshold_fails_or_warns_as_the_action_says_naming_both_figures() {
        let mut c = FabricCheckSection::default();
        assert_eq!(verdict(&c, &fabric(0.001)), Verdict::Pass, "no threshold");
        c.min_bus_bandwidth_gbps = Some(2.0);
        assert_eq!(verdict(&c, &fabric(2.0)), Verdict::Pass, "at the threshold");
        let Verdict::Fail(m) = verdict(&c, &fabric(1.25)) else {
            panic!("below the threshold fails by default");
        };
        assert!(
            m.contains("1.250 GB/s") && m.contains("required 2 GB/s"),
            "{m}"
        );
        assert!(m.contains("spec.fabricCheck.minBusBandwidthGBps"), "{m}");
        assert_eq!(
            failed(m).exit_code(),
            janus_crds::exit_code::FABRIC_CHECK_FAILED
        );
        c.action = FabricAction::Warn;
        assert!(matches!(verdict(&c, &fabric(1.25)), Verdict::Warn(m) if m.contains("1.250")));
    }
}
