//! The device check: what only a CUDA machine can show, in one binary built on a CPU
//! machine (`make gpu-bundle` strips it next to `janus`; `bench/gpu_check.sh` runs it
//! first). Every test is `#[ignore]`: `cargo test` on CPU builds them and skips them;
//! on a GPU run `gpu-tests --ignored --test-threads 1`.
//!
//! - NCCL: the library loads by its soname, a communicator initialises, every datatype
//!   goes through each collective, the events time them; the watchdog ends a stalled
//!   collective and an init that never completes with the retryable exit code.
//! - Flash attention's varlen kernel runs (no fallback) and gives the outputs and
//!   gradients of attending to each segment on its own.
//! - ZeRO-1 through a real NCCL communicator takes the steps replicated training takes,
//!   and with the reduction and all-gather overlapped on the side stream, the same bits.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use janus::data::{pack, Batch, Example};
use janus::dist::nccl::{self, Nccl};
use janus::dist::Collective;
use janus::model::{AttentionKernel, ModelConfig, Transformer};
use janus::optim::AdamWConfig;
use janus::train::Trainer;
use tch::{nn::VarStore, Device, Kind, Tensor};

const GPU: Device = Device::Cuda(0);

fn require_cuda() {
    assert!(
        tch::Cuda::is_available(),
        "these checks need a CUDA device (run them with --ignored on a GPU machine)"
    );
}

fn communicator(timeout: Duration) -> Nccl {
    let id = nccl::unique_id().expect("an NCCL unique id");
    Nccl::with_timeout(0, 1, 0, &id, timeout).expect("a one-rank NCCL communicator")
}

/// Run this test binary's test `name` in a child with `JANUS_GPU_CHILD=name`: for the
/// checks whose success is the process exiting.
fn child(name: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("JANUS_GPU_CHILD", name)
        .output()
        .unwrap()
}

fn in_child(name: &str) -> bool {
    std::env::var("JANUS_GPU_CHILD").as_deref() == Ok(name)
}

#[test]
#[ignore = "needs a CUDA device"]
fn nccl_loads_by_soname_initialises_and_reduces_every_datatype() {
    require_cuda();
    let ((major, minor, patch), source) = nccl::version().unwrap();
    eprintln!("NCCL {major}.{minor}.{patch} from {source}");
    assert_eq!(major, 2);
    assert!(nccl::available());
    let mut comm = communicator(Duration::from_secs(60));
    for kind in [
        Kind::Float,
        Kind::Double,
        Kind::BFloat16,
        Kind::Half,
        Kind::Int64,
        Kind::Int,
        Kind::Int8,
        Kind::Uint8,
    ] {
        let want = Tensor::arange(64, (Kind::Float, Device::Cpu)).to_kind(kind);
        let mut t = want.to_device(GPU);
        comm.all_reduce_sum(&mut t).unwrap();
        comm.broadcast(&mut t, 0).unwrap();
        comm.reduce_scatter_sum(&mut t).unwrap();
        comm.all_gather(&mut t).unwrap();
        assert!(
            t.to_device(Device::Cpu).equal(&want),
            "{kind:?}: a world of one changed the values"
        );
    }
    // A CPU tensor goes to the device and back.
    let mut host = Tensor::ones([5], (Kind::Float, Device::Cpu));
    comm.all_reduce_sum(&mut host).unwrap();
    assert_eq!(host.sum(Kind::Float).double_value(&[]), 5.0);
}

#[test]
#[ignore = "needs a CUDA device"]
fn collectives_started_on_the_side_stream_equal_synchronous_ones_beside_compute() {
    require_cuda();
    let mut comm = communicator(Duration::from_secs(60));
    let want = Tensor::randn([1 << 22], (Kind::Float, GPU));
    // Started while the default stream still writes the tensor and computes beside it:
    // the side stream must wait for the write, and the reader after `wait` for NCCL.
    let a = Tensor::randn([8192, 8192], (Kind::BFloat16, GPU));
    let mut t = want.zeros_like();
    let out = a.empty_like();
    let _ = a.mm_out(&out, &a);
    tch::no_grad(|| t.copy_(&want));
    comm.start(janus::dist::Op::AllReduce, &t).unwrap();
    comm.start(janus::dist::Op::ReduceScatter, &t).unwrap();
    for _ in 0..20 {
        let _ = a.mm_out(&out, &a);
    }
    comm.start(janus::dist::Op::AllGather, &t).unwrap();
    comm.wait().unwrap();
    assert!(t.equal(&want), "a world of one changed the values");
    // A synchronous call after a start is ordered after it.
    let mut u = want.copy();
    comm.start(janus::dist::Op::AllReduce, &u).unwrap();
    comm.all_reduce_sum(&mut u).unwrap();
    assert!(u.equal(&want));
}

#[test]
#[ignore = "needs a CUDA device"]
fn collectives_are_timed_on_the_device_not_at_enqueue() {
    require_cuda();
    let mut comm = communicator(Duration::from_secs(60));
    let nanos = Arc::new(AtomicU64::new(0));
    assert!(comm.time_collectives_into(nanos.clone()));
    let mut t = Tensor::ones([64 << 20], (Kind::Float, GPU));
    for _ in 0..5 {
        comm.all_reduce_sum(&mut t).unwrap();
    }
    tch::Cuda::synchronize(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nanos.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = nanos.load(Ordering::Relaxed) as f64 * 1e-9;
    eprintln!("5 all-reduces of 256 MiB at world size 1: {secs:.6}s on the device");
    assert!(secs > 0.0, "no device time was recorded");
}

#[test]
#[ignore = "needs a CUDA device"]
fn a_stalled_collective_is_aborted_with_the_retryable_exit_code() {
    const NAME: &str = "a_stalled_collective_is_aborted_with_the_retryable_exit_code";
    if in_child(NAME) {
        // The all-reduce queues behind ~10 s of matrix products: for the watchdog it
        // makes no progress for longer than the 2 s timeout, as if a peer had stopped.
        let mut comm = communicator(Duration::from_secs(2));
        let a = Tensor::randn([16384, 16384], (Kind::BFloat16, GPU));
        let out = a.empty_like();
        for _ in 0..800 {
            let _ = a.mm_out(&out, &a);
        }
        let mut t = Tensor::ones([1 << 20], (Kind::Float, GPU));
        comm.all_reduce_sum(&mut t).unwrap();
        tch::Cuda::synchronize(0);
        unreachable!("the watchdog should have ended the process");
    }
    require_cuda();
    let start = Instant::now();
    let out = child(NAME);
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::RETRYABLE),
        "{err}"
    );
    assert!(
        err.contains("rank 0: NCCL all-reduce of 4.0 MiB (Float) made no progress for 2s"),
        "{err}"
    );
    assert!(err.contains("aborting the NCCL communicator"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn an_nccl_init_whose_peers_never_join_fails_within_the_timeout() {
    const NAME: &str = "an_nccl_init_whose_peers_never_join_fails_within_the_timeout";
    if in_child(NAME) {
        let id = nccl::unique_id().unwrap();
        // Rank 0 of 2; rank 1 never comes.
        let _ = Nccl::with_timeout(0, 2, 0, &id, Duration::from_secs(3));
        unreachable!("the watchdog should have ended the process");
    }
    require_cuda();
    let start = Instant::now();
    let out = child(NAME);
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::RETRYABLE),
        "{err}"
    );
    assert!(
        err.contains("NCCL communicator init (rank 0 of 2) made no progress for 3s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

fn random_examples(lens: &[usize], vocab: i64) -> Vec<Example> {
    lens.iter()
        .map(|&n| Example {
            tokens: Vec::<i64>::try_from(Tensor::randint_low(
                3,
                vocab,
                [n as i64 + 1],
                (Kind::Int64, Device::Cpu),
            ))
            .unwrap(),
            prompt_len: 1,
        })
        .collect()
}

/// Max |a - b| over max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - &b).abs().max().double_value(&[]) / scale
}

/// Hidden states of the real tokens, example by example, and the gradients of a fixed
/// random projection of them, for `batch`; `offsets[i]` = (row, start) of example `i`.
fn hidden_and_grads(
    vs: &VarStore,
    model: &Transformer,
    b: &Batch,
    lens: &[usize],
    offsets: &[(i64, i64)],
    proj: &Tensor,
) -> (Vec<Tensor>, Vec<Tensor>) {
    for mut p in vs.trainable_variables() {
        p.zero_grad();
    }
    let h = model.hidden_states(&b.input_ids, &b.positions, &b.layout);
    let parts: Vec<Tensor> = offsets
        .iter()
        .zip(lens)
        .map(|(&(row, start), &n)| h.get(row).narrow(0, start, n as i64))
        .collect();
    let loss = parts
        .iter()
        .map(|p| (p.to_kind(Kind::Float) * proj.narrow(0, 0, p.size()[0])).sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, GPU)), |a, b| a + b);
    loss.backward();
    // Sorted by name: the two calls compare parameter by parameter. The LM head is
    // not on this path and has no gradient.
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let grads = named
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .map(|g| g.copy())
        .collect();
    (parts.iter().map(|p| p.detach().copy()).collect(), grads)
}

#[test]
#[ignore = "needs a CUDA device"]
fn varlen_attention_runs_and_matches_segment_by_segment_outputs_and_gradients() {
    require_cuda();
    for window in [None, Some(48usize)] {
        tch::manual_seed(11);
        let mut cfg = ModelConfig::small("mistral", 512, 256, 512, 2, 4, 2);
        cfg.sliding_window = window;
        let mut vs = VarStore::new(GPU);
        let model = Transformer::new(&vs.root(), &cfg);
        vs.set_kind(Kind::BFloat16);
        assert_eq!(
            janus::model::attention_kernel(&cfg, Kind::BFloat16, GPU, true),
            AttentionKernel::FlashVarlen,
            "window {window:?}"
        );
        let lens = [37usize, 91, 128, 5, 64];
        let examples = random_examples(&lens, 512);
        let order: Vec<usize> = (0..examples.len()).collect();
        let rows: Vec<Vec<&Example>> = pack(&examples, &order, 200)
            .iter()
            .map(|r| r.iter().map(|&i| &examples[i]).collect())
            .collect();
        assert!(
            rows.iter().any(|r| r.len() > 1),
            "packing made no shared row"
        );
        let packed = Batch::packed(&rows, 0, GPU);
        let mut packed_at = vec![(0i64, 0i64); lens.len()];
        for (r, row) in rows.iter().enumerate() {
            let mut start = 0;
            for e in row {
                let i = examples.iter().position(|x| std::ptr::eq(x, *e)).unwrap();
                packed_at[i] = (r as i64, start);
                start += (e.tokens.len() - 1) as i64;
            }
        }
        let all: Vec<&Example> = examples.iter().collect();
        let unpacked = Batch::unpacked(&all, 0, GPU);
        let unpacked_at: Vec<(i64, i64)> = (0..lens.len() as i64).map(|i| (i, 0)).collect();
        let proj = Tensor::randn([256, 256], (Kind::Float, GPU));

        let fallbacks = janus::model::fallback_calls();
        let (hp, gp) = hidden_and_grads(&vs, &model, &packed, &lens, &packed_at, &proj);
        assert_eq!(
            janus::model::fallback_calls(),
            fallbacks,
            "the varlen kernel fell back (window {window:?})"
        );
        let (hu, gu) = hidden_and_grads(&vs, &model, &unpacked, &lens, &unpacked_at, &proj);
        for (i, (a, b)) in hp.iter().zip(&hu).enumerate() {
            let d = rel_diff(a, b);
            assert!(
                d < 2e-2,
                "window {window:?}, example {i}: outputs differ by {d}"
            );
        }
        for (i, (a, b)) in gp.iter().zip(&gu).enumerate() {
            let d = rel_diff(a, b);
            assert!(
                d < 5e-2,
                "window {window:?}, parameter {i}: gradients differ by {d}"
            );
        }
    }
}

fn adam() -> AdamWConfig {
    AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn zero1_over_nccl_takes_the_steps_replicated_training_takes() {
    require_cuda();
    for kind in [Kind::Float, Kind::BFloat16] {
        let cfg = ModelConfig::small("mistral", 512, 128, 256, 2, 4, 2);
        // Clipping off: the two paths sum the norm in another order.
        let mut replicated = Trainer::new(&cfg, kind, GPU, adam(), 0.0);
        let zero = |overlap: bool| {
            let mut t = Trainer::new(&cfg, kind, GPU, adam(), 0.0);
            tch::no_grad(|| t.vs.copy(&replicated.vs)).unwrap();
            t.opt.sync_master_from_params();
            t.set_collective(Box::new(communicator(Duration::from_secs(60))));
            // Small buckets: several, started one by one by the backward pass.
            t.bucket_bytes = 64 << 10;
            t.overlap = overlap;
            t.shard_optimizer();
            assert!(t.opt.is_sharded());
            t
        };
        let (mut sharded, mut overlapped) = (zero(false), zero(true));
        let examples = random_examples(&[60, 33, 90, 17], 512);
        let refs: Vec<&Example> = examples.iter().collect();
        let b = Batch::unpacked(&refs, 0, GPU);
        for step in 0..3 {
            let r = replicated.sft_step(std::slice::from_ref(&b), 1e-3).unwrap();
            let s = sharded.sft_step(std::slice::from_ref(&b), 1e-3).unwrap();
            let o = overlapped.sft_step(std::slice::from_ref(&b), 1e-3).unwrap();
            assert_eq!(
                s.loss, o.loss,
                "{kind:?} step {step}: overlap changed the loss"
            );
            assert!(
                (r.loss - s.loss).abs() <= 1e-6 * r.loss.abs(),
                "{kind:?} step {step}: loss {} vs {}",
                r.loss,
                s.loss
            );
        }
        let sorted = |vs: &VarStore| {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let overlapped_weights = sorted(&overlapped.vs);
        for (((name, a), (_, b)), (_, c)) in sorted(&replicated.vs)
            .iter()
            .zip(&sorted(&sharded.vs))
            .zip(&overlapped_weights)
        {
            let d = rel_diff(b, a);
            let limit = if kind == Kind::Float { 1e-6 } else { 1e-2 };
            assert!(d <= limit, "{kind:?} {name}: differs by {d}");
            // Overlapped on the side stream: the same sums and updates, bit for bit.
            assert!(b.equal(c), "{kind:?} {name}: overlap changed the weights");
        }
    }
}
