//! Data parallelism on CPU: the ring against a reference sum, equivalence of 2 ranks x
//! b with 1 rank x 2b, fault handling of the launcher, rendezvous failures.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use janus::dist::launch::free_port;
use janus::dist::{rendezvous, Collective, WorldInfo};
use tch::{Device, Kind, Tensor};

fn info(rank: usize, world: usize, port: u16) -> WorldInfo {
    WorldInfo {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

/// Run `f(rank, collective)` on `world` in-process ranks joined by a real rendezvous.
fn with_ring<T: Send>(world: usize, f: impl Fn(usize, &mut dyn Collective) -> T + Sync) -> Vec<T> {
    let port = free_port().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let f = &f;
                s.spawn(move || {
                    let mut ring =
                        rendezvous(&info(r, world, port), "h", Duration::from_secs(30), None)
                            .unwrap()
                            .ring;
                    f(r, &mut ring)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn ring_all_reduce_matches_the_reference_sum() {
    for world in 1..=4 {
        for len in [1i64, 2, 3, 7, 1000, 262_147] {
            let results = with_ring(world, |rank, ring| {
                let mut t = Tensor::arange(len, (Kind::Float, Device::Cpu)) * (rank as f64 + 1.0)
                    - rank as f64;
                ring.all_reduce_sum(&mut t).unwrap();
                t
            });
            let w = world as f64;
            let want = Tensor::arange(len, (Kind::Float, Device::Cpu)) * (w * (w + 1.0) / 2.0)
                - w * (w - 1.0) / 2.0;
            for (rank, got) in results.iter().enumerate() {
                let diff = (got - &want).abs().max().double_value(&[]);
                assert!(
                    diff <= 1e-6 * want.abs().max().double_value(&[]).max(1.0),
                    "world {world} len {len} rank {rank}: off by {diff}"
                );
            }
        }
    }
}

#[test]
fn ring_reduce_scatter_and_all_gather_match_the_reference() {
    for world in 1..=4usize {
        for seg in [1i64, 5, 1000] {
            let n = seg * world as i64;
            let results = with_ring(world, |rank, ring| {
                let mut t = Tensor::arange(n, (Kind::Float, Device::Cpu)) + rank as f64;
                ring.reduce_scatter_sum(&mut t).unwrap();
                let mine = t.narrow(0, rank as i64 * seg, seg).copy();
                let mut g = Tensor::zeros([n], (Kind::BFloat16, Device::Cpu));
                let _ = g.narrow(0, rank as i64 * seg, seg).fill_(rank as f64 + 1.0);
                ring.all_gather(&mut g).unwrap();
                (mine, g)
            });
            let w = world as f64;
            let full = Tensor::arange(n, (Kind::Float, Device::Cpu)) * w + w * (w - 1.0) / 2.0;
            let gathered = Tensor::arange(world as i64, (Kind::Float, Device::Cpu))
                .repeat_interleave_self_int(seg, 0, None)
                + 1.0;
            for (rank, (mine, g)) in results.iter().enumerate() {
                let want = full.narrow(0, rank as i64 * seg, seg);
                assert!(
                    mine.equal(&want),
                    "world {world} seg {seg}: rank {rank}'s reduced segment"
                );
                assert!(
                    g.to_kind(Kind::Float).equal(&gathered),
                    "world {world} seg {seg}: all-gather on rank {rank}"
                );
            }
        }
    }
}

#[test]
fn ring_handles_f64_bf16_non_contiguous_and_broadcast() {
    let results = with_ring(3, |rank, ring| {
        let mut d = Tensor::full([5], rank as f64 + 0.5, (Kind::Double, Device::Cpu));
        ring.all_reduce_sum(&mut d).unwrap();
        let mut b = Tensor::full([9], 1.0 + rank as f64, (Kind::BFloat16, Device::Cpu));
        ring.all_reduce_sum(&mut b).unwrap();
        let base = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([3, 4]);
        let mut nc = base.transpose(0, 1);
        ring.all_reduce_sum(&mut nc).unwrap();
        let mut x = Tensor::full([1001], rank as f64, (Kind::Float, Device::Cpu));
        ring.broadcast(&mut x, 1).unwrap();
        ring.barrier().unwrap();
        (d, b, nc, x)
    });
    let base = Tensor::arange(12, (Kind::Float, Device::Cpu))
        .view([3, 4])
        .transpose(0, 1)
        * 3.0;
    for (d, b, nc, x) in results {
        assert_eq!(Vec::<f64>::try_from(&d).unwrap(), vec![4.5; 5]);
        assert_eq!(b.kind(), Kind::BFloat16);
        assert_eq!(
            Vec::<f32>::try_from(b.to_kind(Kind::Float)).unwrap(),
            vec![6.0; 9]
        );
        assert!(nc.equal(&base));
        assert_eq!(Vec::<f32>::try_from(&x).unwrap(), vec![1.0; 1001]);
    }
}

fn read_weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn train_args(dir: &Path, model: &Path, data: &Path, job: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train".to_string(), "--preset".into(), "tiny".into()];
    let mut o = common::tiny_overrides(dir, model, data, extra);
    o.push(format!("job={job}"));
    o.push(format!(
        "output_dir={}",
        dir.join(format!("out-{job}")).display()
    ));
    for s in o {
        args.push("--set".into());
        args.push(s);
    }
    args
}

/// `world` ranks x micro-batch `4 / world` against 1 rank x 4, 5 steps: the weights
/// agree within 1e-6 (fp32). `extra` picks the method and, with
/// `distributed.shard_optimizer`, ZeRO-1 or the replicated optimizer.
fn check_equivalence(world: usize, extra: &[&str], data_file: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join(data_file);
    let common_extra: Vec<&str> = [
        &[
            "hyperparameters.max_steps=5",
            "hyperparameters.gradient_accumulation_steps=1",
        ],
        extra,
    ]
    .concat();
    let mut one = common::janus();
    one.args(train_args(
        dir,
        &model,
        &data,
        "one",
        &[
            common_extra.as_slice(),
            &["hyperparameters.micro_batch_size=4"],
        ]
        .concat(),
    ));
    common::run_ok(one);
    let mut many = common::janus();
    many.args(["launch", "--nproc", &world.to_string(), "--"]);
    let micro = format!("hyperparameters.micro_batch_size={}", 4 / world);
    many.args(train_args(
        dir,
        &model,
        &data,
        "many",
        &[common_extra.as_slice(), &[micro.as_str()]].concat(),
    ));
    let log = common::run_ok(many);
    assert!(log.contains(&format!("[rank {}]", world - 1)), "{log}");
    let sharded = log.contains("optimizer state sharded across the ranks (ZeRO-1)");
    assert_eq!(
        sharded,
        extra.contains(&"distributed.shard_optimizer=true"),
        "{log}"
    );

    let (a, b) = (
        read_weights(&dir.join("out-one")),
        read_weights(&dir.join("out-many")),
    );
    assert_eq!(a.len(), b.len());
    // By name: a reward model has `score.weight` where the base has `lm_head.weight`.
    let start: std::collections::HashMap<String, Tensor> =
        read_weights(&model).into_iter().collect();
    let (mut moved, mut worst) = (0.0f64, 0.0f64);
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-6,
            "{name}: 1 rank x 4 and {world} ranks x {} differ by {diff}",
            4 / world
        );
        worst = worst.max(diff);
        if let Some(s) = start.get(name) {
            moved = moved.max((x - s).abs().max().double_value(&[]));
        }
    }
    eprintln!(
        "{extra:?}: max |1 rank - {world} ranks| = {worst:e}, max |trained - initial| = {moved:e}"
    );
    assert!(
        moved > 1e-3,
        "training did not change the weights ({moved})"
    );
}

const ORPO: &[&str] = &[
    "method=orpo",
    "data.packing=false",
    "data.prompt_format=chatml",
];

#[test]
fn two_ranks_equal_one_rank_with_the_combined_batch_sft() {
    check_equivalence(
        2,
        &["data.packing=false", "distributed.shard_optimizer=false"],
        "sft.jsonl",
    );
}

#[test]
fn two_ranks_equal_one_rank_with_the_combined_batch_orpo() {
    check_equivalence(
        2,
        &[ORPO, &["distributed.shard_optimizer=false"]].concat(),
        "preference.parquet",
    );
}

#[test]
fn two_ranks_equal_one_rank_dpo_and_reward() {
    check_equivalence(
        2,
        &[
            "method=dpo",
            "data.packing=false",
            "data.prompt_format=chatml",
            "distributed.shard_optimizer=true",
        ],
        "preference.parquet",
    );
    // A prompt token's gradient under the Bradley-Terry loss is the difference of its
    // pull on the chosen and on the rejected reward, which share the prompt: the two
    // nearly cancel at initialisation, so the rounding of the sum (its order differs
    // with the split over ranks and micro-batches, even on one rank) is a large part of
    // the result, and Adam's g / (|g| + eps) turns it into a full-size step (measured:
    // 1e-5 on two embedding rows for 1 x 4 vs 1 x (2 + 2) micro-batches on one rank). An
    // epsilon above those gradients makes the update proportional to them, so the
    // comparison is about the reduced gradients themselves.
    check_equivalence(
        2,
        &[
            "method=reward",
            "data.packing=false",
            "distributed.shard_optimizer=true",
            "hyperparameters.adam_epsilon=1e-3",
            "hyperparameters.learning_rate=5e-3",
        ],
        "preference.parquet",
    );
}

#[test]
fn zero1_on_2_and_4_ranks_equals_unsharded_training_sft() {
    for world in [2, 4] {
        check_equivalence(
            world,
            &["data.packing=false", "distributed.shard_optimizer=true"],
            "sft.jsonl",
        );
    }
}

#[test]
fn zero1_on_2_and_4_ranks_equals_unsharded_training_orpo() {
    for world in [2, 4] {
        check_equivalence(
            world,
            &[ORPO, &["distributed.shard_optimizer=true"]].concat(),
            "preference.parquet",
        );
    }
}

#[test]
fn overlapped_collectives_give_the_weights_of_the_plain_step_for_every_method() {
    // A model of about 13 MB (fp32), so that 1 MiB buckets make a dozen of them and the
    // backward pass starts them one by one; 2 micro-batches per rank, so the first
    // one's backward starts none (one on 4 ranks). SFT packed (replicated and ZeRO-1,
    // with and without checkpointing, on 2, 3 (odd: buckets padded to a multiple of 3) and 4
    // ranks), ORPO, DPO (ZeRO-1) and the reward model. Weights and losses bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = janus::model::ModelConfig::small("mistral", 512, 256, 688, 4, 8, 4);
    let (data, model) = common::setup_with(dir, 16, cfg);
    let cases: &[(&str, usize, &[&str], &str)] = &[
        (
            "sft",
            2,
            &["distributed.shard_optimizer=false"],
            "sft.jsonl",
        ),
        (
            "sft-zero",
            2,
            &["distributed.shard_optimizer=true"],
            "sft.jsonl",
        ),
        (
            "sft-zero-3",
            3,
            &["distributed.shard_optimizer=true"],
            "sft.jsonl",
        ),
        (
            "sft-zero-ckpt",
            4,
            &[
                "distributed.shard_optimizer=true",
                "model.gradient_checkpointing=true",
            ],
            "sft.jsonl",
        ),
        (
            "orpo-zero",
            2,
            &[ORPO, &["distributed.shard_optimizer=true"]].concat(),
            "preference.parquet",
        ),
        (
            "dpo-zero",
            2,
            &[
                "method=dpo",
                "data.packing=false",
                "data.prompt_format=chatml",
                "distributed.shard_optimizer=true",
            ],
            "preference.parquet",
        ),
        (
            "reward",
            2,
            &[
                "method=reward",
                "data.packing=false",
                "distributed.shard_optimizer=false",
            ],
            "preference.parquet",
        ),
    ];
    for (name, world, extra, file) in cases {
        let micro = "hyperparameters.micro_batch_size=1".to_string();
        let accum = if *world == 4 { "1" } else { "2" };
        let accum = format!("hyperparameters.gradient_accumulation_steps={accum}");
        let run = |overlap: bool| {
            let job = format!("{name}-{overlap}");
            let o = format!("distributed.overlap={overlap}");
            let args: Vec<&str> = [
                &[
                    "hyperparameters.max_steps=3",
                    "distributed.bucket_mib=1",
                    &micro,
                    &accum,
                    &o,
                ],
                *extra,
            ]
            .concat();
            ok(run_ranks(
                dir,
                &model,
                &data.join(file),
                &job,
                *world,
                &args,
                None,
            ));
            read_weights(&dir.join(format!("out-{job}")))
        };
        let (plain, overlapped) = (run(false), run(true));
        let (a, b) = (
            losses(dir, &format!("{name}-false"), 3),
            losses(dir, &format!("{name}-true"), 3),
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a, b, "{name} on {world} ranks: overlap changed the losses");
        let mut worst = 0.0f64;
        for ((n, a), (m, b)) in plain.iter().zip(&overlapped) {
            assert_eq!(n, m);
            worst = worst.max((a - b).abs().max().double_value(&[]));
        }
        eprintln!("{name} on {world} ranks: max |overlapped - plain| = {worst:e}");
        assert!(
            worst <= 1e-6,
            "{name} on {world} ranks: overlap changed the weights by {worst}"
        );
    }
}

/// The loss history of `job`'s checkpoint at `step`.
fn losses(dir: &Path, job: &str, step: u64) -> Vec<f64> {
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("ckpt/{job}/step-{step}/trainer_state.json"))).unwrap(),
    )
    .unwrap();
    state["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn a_bfloat16_reduce_keeps_the_loss_within_a_percent_of_a_float32_reduce() {
    // A bf16 model with fp32 master weights on 2 and 4 ranks, its bf16 gradients summed
    // in fp32 (the default) or in bf16 (half the bytes on the wire; on 4 ranks the
    // ring rounds each partial sum): 30 steps each, the same global batch.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    for world in [2usize, 4] {
        let run = |reduce: &str| {
            let job = format!("reduce-{world}-{reduce}");
            let dtype = format!("distributed.reduce_dtype={reduce}");
            let micro = format!("hyperparameters.micro_batch_size={}", 4 / world);
            let extra = [
                "model.dtype=bfloat16",
                "hyperparameters.max_steps=30",
                &micro,
                "hyperparameters.gradient_accumulation_steps=1",
                "checkpoint.every_steps=30",
                &dtype,
            ];
            ok(run_ranks(dir, &model, &data, &job, world, &extra, None));
            losses(dir, &job, 30)
        };
        let (fp32, bf16) = (run("float32"), run("bfloat16"));
        assert_eq!((fp32.len(), bf16.len()), (30, 30));
        let worst = fp32
            .iter()
            .zip(&bf16)
            .map(|(a, b)| (a - b).abs() / a.abs())
            .fold(0.0, f64::max);
        let (d32, d16) = (fp32[0] - fp32[29], bf16[0] - bf16[29]);
        eprintln!(
            "{world} ranks, bf16 vs fp32 reduce over 30 steps: largest relative loss \
             difference {worst:.2e}; loss decrease {d16:.4} vs {d32:.4}; final loss {:.5} vs {:.5}",
            bf16[29], fp32[29]
        );
        assert!(
            fp32 != bf16,
            "the reduce dtype changed nothing: the check would be vacuous"
        );
        assert!(
            worst < 1e-2,
            "{world} ranks: a bf16 reduce moved the loss by {worst:.2e}"
        );
        assert!(
            (d16 - d32).abs() < 0.1 * d32.abs(),
            "{world} ranks: loss decrease {d16} with a bf16 reduce vs {d32} with fp32"
        );
    }
}

#[test]
fn a_killed_rank_stops_the_launcher_and_a_restart_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.max_steps=400",
        "checkpoint.every_steps=3",
        "hyperparameters.micro_batch_size=2",
        "hyperparameters.gradient_accumulation_steps=1",
    ];
    let args = train_args(dir, &model, &data, "fault", &extra);
    let mut launcher = common::janus();
    launcher.args(["launch", "--nproc", "2", "--"]).args(&args);
    let (mut child, mut lines) = common::spawn_logged(launcher);
    let seen = common::read_until(&mut lines, "checkpoint saved");
    let pids = common::rank_pids(&seen);
    let pid = pids
        .iter()
        .find(|(r, _)| *r == 1)
        .expect("the launcher logs each rank's pid")
        .1;
    let killed_at = Instant::now();
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let stopped_in = killed_at.elapsed();
    assert!(!status.success());
    assert!(
        stopped_in < Duration::from_secs(15),
        "the launcher took {stopped_in:?} to stop"
    );
    let text = rest.join("\n");
    assert!(text.contains("janus launch: rank 1 exited"), "{text}");

    let mut again = common::janus();
    again
        .args(["launch", "--nproc", "2", "--"])
        .args(train_args(dir, &model, &data, "fault", &extra));
    // Finish quickly: same trajectory settings, so the checkpoint is accepted.
    let log = common::run_ok(again);
    assert!(log.contains("\"message\":\"resumed\""), "{log}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out-fault/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["finished"], true);
    assert_eq!(summary["steps_completed"], 400);
    assert!(summary["resumed_from_step"].as_u64().unwrap() >= 3);
}

/// Reduce-scatter, all-reduce, a synchronous all-reduce between them and an all-gather,
/// started and waited for (`background`) or called one by one; rank `rank`'s results.
fn collective_sequence(
    c: &mut dyn Collective,
    rank: usize,
    world: usize,
    background: bool,
) -> Vec<Tensor> {
    use janus::dist::Op;
    let mk = |len: usize, k: f64| {
        Tensor::arange(len as i64, (Kind::Float, Device::Cpu)) * (rank as f64 + k) + k
    };
    let (mut a, mut b, mut mid, mut g) = (
        mk(1000 * world, 1.0),
        mk(777, 2.0),
        mk(5, 4.0),
        mk(12 * world, 3.0),
    );
    if background {
        c.start(Op::ReduceScatter, &a).unwrap();
        c.start(Op::AllReduce, &b).unwrap();
        c.all_reduce_sum(&mut mid).unwrap();
        c.start(Op::AllGather, &g).unwrap();
        c.wait().unwrap();
    } else {
        c.reduce_scatter_sum(&mut a).unwrap();
        c.all_reduce_sum(&mut b).unwrap();
        c.all_reduce_sum(&mut mid).unwrap();
        c.all_gather(&mut g).unwrap();
    }
    // Only this rank's segment of a reduce-scatter is defined.
    vec![a.narrow(0, (rank * 1000) as i64, 1000), b, mid, g]
}

#[test]
fn collectives_started_on_a_background_ring_equal_synchronous_ones() {
    for world in [2, 3] {
        let sync = with_ring(world, |rank, ring| {
            collective_sequence(ring, rank, world, false)
        });
        let port = free_port().unwrap();
        let started: Vec<Vec<Tensor>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|r| {
                    s.spawn(move || {
                        let ring =
                            rendezvous(&info(r, world, port), "h", Duration::from_secs(30), None)
                                .unwrap()
                                .ring;
                        let mut c = janus::dist::Background::new(Box::new(ring));
                        collective_sequence(&mut c, r, world, true)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (want, got)) in sync.iter().zip(&started).enumerate() {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert!(
                    w.equal(g),
                    "world {world}, rank {rank}, collective {i} differs"
                );
            }
        }
    }
}

#[test]
fn a_ring_peer_that_stops_answering_mid_all_reduce_fails_the_others_within_the_timeout() {
    let port = free_port().unwrap();
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let results: Vec<Option<(String, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|r| {
                s.spawn(move || {
                    let mut ring = rendezvous(&info(r, 3, port), "h", timeout, None)
                        .unwrap()
                        .ring;
                    if r == 2 {
                        // Joined, then stops answering with its connections open.
                        std::thread::sleep(Duration::from_secs(8));
                        return None;
                    }
                    let began = Instant::now();
                    let mut t = Tensor::ones([1 << 20], (Kind::Float, Device::Cpu));
                    let e = ring.all_reduce_sum(&mut t).unwrap_err();
                    Some((e.to_string(), began.elapsed()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (e0, t0) = results[0].clone().expect("rank 0 failed");
    assert!(
        e0.contains("ring rank 0: rank 2 stopped answering mid all-reduce")
            && e0.contains("for 2s (distributed.timeout_seconds)"),
        "{e0}"
    );
    assert!(
        t0 >= timeout && t0 < timeout + Duration::from_secs(2),
        "rank 0 failed after {t0:?}"
    );
    let (e1, t1) = results[1].clone().expect("rank 1 failed");
    assert!(e1.starts_with("ring rank 1: rank "), "{e1}");
    assert!(
        t1 < 2 * timeout + Duration::from_secs(2),
        "rank 1 failed after {t1:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_rank_that_stops_answering_ends_the_run_within_the_timeout_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let extra = [
        "hyperparameters.max_steps=400",
        "checkpoint.every_steps=3",
        "hyperparameters.micro_batch_size=2",
        "hyperparameters.gradient_accumulation_steps=1",
        "distributed.timeout_seconds=3",
    ];
    let args = train_args(dir, &model, &data.join("sft.jsonl"), "stall", &extra);
    let mut launcher = common::janus();
    launcher
        .args(["launch", "--nproc", "2", "--"])
        .args(&args)
        // The stopped rank cannot act on SIGTERM: SIGKILL follows after a second.
        .env("JANUS_TERMINATION_GRACE_SECONDS", "1");
    let (mut child, mut lines) = common::spawn_logged(launcher);
    let seen = common::read_until(&mut lines, "checkpoint saved");
    let pid = common::rank_pids(&seen)
        .iter()
        .find(|(r, _)| *r == 1)
        .expect("the launcher logs each rank's pid")
        .1;
    let stopped_at = Instant::now();
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let took = stopped_at.elapsed();
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let text = rest.join("\n");
    assert_eq!(
        status.code(),
        Some(janus_crds::exit_code::RETRYABLE),
        "{text}"
    );
    assert!(
        text.contains("ring rank 0: rank 1 stopped answering mid"),
        "{text}"
    );
    assert!(text.contains("janus launch: rank 0 exited"), "{text}");
    // 3 s of no progress, then a second of grace for the stopped rank.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "the run ended {took:?} after rank 1 stopped"
    );
}

#[test]
fn a_rank_with_a_wrong_master_address_fails_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let port = free_port().unwrap();
    let mut cmd = common::janus();
    cmd.args(train_args(
        dir,
        &model,
        &data.join("sft.jsonl"),
        "lost",
        &["distributed.timeout_seconds=2"],
    ))
    .env("RANK", "1")
    .env("WORLD_SIZE", "2")
    .env("MASTER_ADDR", "127.0.0.1")
    .env("MASTER_PORT", port.to_string());
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::RETRYABLE));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "could not reach rank 0 at 127.0.0.1:{port} for 2s"
        )),
        "{err}"
    );
}

#[test]
fn mismatched_configs_are_refused_at_rendezvous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let port = free_port().unwrap().to_string();
    let spawn = |rank: &str, lr: &str| {
        let mut cmd = common::janus();
        cmd.args(train_args(
            dir,
            &model,
            &data.join("sft.jsonl"),
            "mm",
            &[lr, "distributed.timeout_seconds=20"],
        ))
        .env("RANK", rank)
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", &port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let r0 = spawn("0", "hyperparameters.learning_rate=1e-3");
    let r1 = spawn("1", "hyperparameters.learning_rate=2e-3");
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert_eq!(o0.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    assert_eq!(o1.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    let err = String::from_utf8_lossy(&o1.stderr);
    assert!(
        err.contains("config hash") && err.contains("rank 1"),
        "{err}"
    );
}

/// Run `job` on `ranks` ranks (the launcher for more than one), optionally stopping
/// after a step; returns the log.
fn run_ranks(
    dir: &Path,
    model: &Path,
    data: &Path,
    job: &str,
    ranks: usize,
    extra: &[&str],
    stop: Option<&str>,
) -> std::process::Output {
    let mut cmd = common::janus();
    if ranks > 1 {
        cmd.args(["launch", "--nproc", &ranks.to_string(), "--"]);
    }
    cmd.args(train_args(dir, model, data, job, extra));
    if let Some(s) = stop {
        cmd.args(["--stop-after-steps", s]);
    }
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed:\n{err}");
    err
}

/// A checkpoint written by `from` ranks, resumed on `to` ranks with the same global
/// batch (the accumulation follows the rank count), ends where a straight run on
/// `from` ranks ends, within floating-point tolerance.
fn check_resume_across_ranks(from: usize, to: usize, micro: usize, accum: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    let micro = format!("hyperparameters.micro_batch_size={micro}");
    let accum = format!("hyperparameters.gradient_accumulation_steps={accum}");
    let extra = [
        "hyperparameters.max_steps=8",
        "checkpoint.every_steps=4",
        "data.packing=false",
        micro.as_str(),
        accum.as_str(),
    ];
    ok(run_ranks(
        dir, &model, &data, "straight", from, &extra, None,
    ));
    ok(run_ranks(
        dir,
        &model,
        &data,
        "moved",
        from,
        &extra,
        Some("4"),
    ));
    let log = ok(run_ranks(dir, &model, &data, "moved", to, &extra, None));
    assert!(
        log.contains("resuming on another number of ranks")
            && log.contains("\"message\":\"resumed\""),
        "{log}"
    );
    let (a, b) = (
        read_weights(&dir.join("out-straight")),
        read_weights(&dir.join("out-moved")),
    );
    let mut worst = 0.0f64;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-5,
            "{name}: {from} -> {to} ranks differs by {diff}"
        );
        worst = worst.max(diff);
    }
    eprintln!("resume {from} -> {to} ranks: max |straight - resumed| = {worst:e}");
}

#[test]
fn a_4_rank_checkpoint_resumes_on_2_ranks() {
    check_resume_across_ranks(4, 2, 1, 1);
}

#[test]
fn a_2_rank_checkpoint_resumes_on_4_ranks() {
    check_resume_across_ranks(2, 4, 1, 2);
}

#[test]
fn resuming_where_no_accumulation_keeps_the_global_batch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.max_steps=6",
        "checkpoint.every_steps=2",
        "hyperparameters.micro_batch_size=3",
        "hyperparameters.gradient_accumulation_steps=1",
    ];
    ok(run_ranks(dir, &model, &data, "n", 1, &extra, Some("2")));
    let out = run_ranks(dir, &model, &data, "n", 2, &extra, None);
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by 1 ranks with a global batch of 3")
            && err.contains("does not divide it"),
        "{err}"
    );
}

#[test]
fn two_rank_resume_is_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.parquet");
    let extra = [
        "hyperparameters.max_steps=8",
        "checkpoint.every_steps=4",
        "hyperparameters.micro_batch_size=2",
    ];
    let launch = |job: &str, stop: Option<&str>| {
        let mut cmd = common::janus();
        cmd.args(["launch", "--nproc", "2", "--"])
            .args(train_args(dir, &model, &data, job, &extra));
        if let Some(s) = stop {
            cmd.args(["--stop-after-steps", s]);
        }
        common::run_ok(cmd)
    };
    let log = launch("straight", None);
    // Two ranks shard the optimizer state by default: this is ZeRO-1's resume.
    assert!(log.contains("(ZeRO-1)"), "{log}");
    launch("resumed", Some("4"));
    let log = launch("resumed", None);
    assert!(log.contains("\"message\":\"resumed\""), "{log}");
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(
        a == b,
        "2-rank resume is not bitwise identical to the straight 2-rank run"
    );
}

#[test]
fn a_pod_with_several_gpus_worth_of_ranks_launches_them_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let mut cmd = common::janus();
    cmd.args(train_args(
        dir,
        &model,
        &data.join("sft.jsonl"),
        "pod",
        &["hyperparameters.max_steps=3"],
    ))
    .env("JANUS_NNODES", "1")
    .env("JANUS_NODE_RANK", "0")
    .env("JANUS_NPROC_PER_NODE", "2")
    .env("JANUS_MASTER_ADDR", "127.0.0.1")
    .env("JANUS_MASTER_PORT", free_port().unwrap().to_string());
    let log = common::run_ok(cmd);
    assert!(
        log.contains("[rank 1]") && log.contains("\"world_size\":2"),
        "{log}"
    );
}

#[test]
fn sigterm_to_the_launcher_stops_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let args = train_args(
        dir,
        &model,
        &data.join("sft.jsonl"),
        "term",
        &[
            "hyperparameters.max_steps=100000",
            "checkpoint.every_steps=2",
        ],
    );
    let mut launcher = common::janus();
    launcher.args(["launch", "--nproc", "2", "--"]).args(&args);
    let (mut child, mut lines) = common::spawn_logged(launcher);
    let seen = common::read_until(&mut lines, "checkpoint saved");
    let pids: Vec<i32> = common::rank_pids(&seen)
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(pids.len(), 2);
    let sent = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _rest: Vec<_> = lines.collect();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "took {:?}",
        sent.elapsed()
    );
    for pid in pids {
        // kill(pid, 0) fails once the rank is gone (reaped by the launcher).
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(
            !alive,
            "rank pid {pid} still running after the launcher exited"
        );
    }
}

/// Start `cmd`, wait for the log to report step `at` (or later), and SIGTERM `target`
/// (the launcher, or one rank's pid from the log); returns the exit code and the log.
fn sigterm_at_step(cmd: Command, at: u64, target: Option<u64>) -> (Option<i32>, String) {
    let (mut child, mut lines) = common::spawn_logged(cmd);
    let mut seen = Vec::new();
    loop {
        seen.extend(common::read_until(&mut lines, "\"step\":"));
        let last = seen.last().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(last.split_once("] ").map_or(last, |(_, l)| l)).unwrap();
        if v["step"].as_u64().unwrap_or(0) >= at {
            break;
        }
    }
    let pid = match target {
        None => child.id() as i32,
        Some(rank) => {
            let pids = common::rank_pids(&seen);
            pids.iter().find(|(r, _)| *r == rank).expect("rank pid").1
        }
    };
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    (status.code(), seen.join("\n"))
}

fn checkpoint_steps(dir: &Path, job: &str) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir.join("ckpt").join(job))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("step-")?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps
}

#[test]
fn sigterm_saves_the_current_step_and_the_resumed_run_equals_the_straight_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    // No periodic checkpoint before the end: what survives is the SIGTERM's.
    let extra = [
        "hyperparameters.max_steps=40",
        "checkpoint.every_steps=1000",
        "log_every_steps=1",
    ];
    let train = |job: &str| {
        let mut cmd = common::janus();
        cmd.args(train_args(dir, &model, &data, job, &extra));
        cmd
    };
    common::run_ok(train("straight"));
    let (code, log) = sigterm_at_step(train("resumed"), 3, None);
    assert_eq!(code, Some(janus_crds::exit_code::TERMINATED), "{log}");
    assert!(
        log.contains("after saving a checkpoint of this step"),
        "{log}"
    );
    let saved = checkpoint_steps(dir, "resumed");
    assert!(
        saved.len() == 1 && (3..40).contains(&saved[0]),
        "checkpoints {saved:?}:\n{log}"
    );
    let log = common::run_ok(train("resumed"));
    assert!(log.contains("\"message\":\"resumed\""), "{log}");
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(a == b, "resume after SIGTERM is not bitwise identical");
}

#[test]
fn sigterm_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.max_steps=40",
        "checkpoint.every_steps=1000",
        "hyperparameters.micro_batch_size=2",
        "log_every_steps=1",
    ];
    let launch = |job: &str| {
        let mut cmd = common::janus();
        cmd.args(["launch", "--nproc", "2", "--"])
            .args(train_args(dir, &model, &data, job, &extra));
        cmd
    };
    // Only rank 1 is signalled (its pod evicted): rank 0 learns it at the boundary,
    // and both take part in saving the sharded optimizer state.
    let (code, log) = sigterm_at_step(launch("one"), 3, Some(1));
    assert_eq!(code, Some(janus_crds::exit_code::TERMINATED), "{log}");
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("stopped by a signal"))
        .collect();
    assert_eq!(stopped.len(), 2, "both ranks stop:\n{log}");
    let saved = checkpoint_steps(dir, "one");
    assert_eq!(saved.len(), 1, "{saved:?}\n{log}");
    let step = format!("\"step\":{}", saved[0]);
    assert!(stopped.iter().all(|l| l.contains(&step)), "{log}");
    let log = common::run_ok(launch("one"));
    assert!(
        log.contains("\"message\":\"resumed\"") && log.contains("training finished"),
        "{log}"
    );
}

/// `checkpoint.async` with ZeRO-1 on 2 ranks: both ranks gather the optimizer state into
/// rank 0's host copy and train on while rank 0 writes it. A SIGTERM to rank 1 stops
/// both once the checkpoint in flight (or the one of the stopping step) is complete, and
/// the resumed run ends on the weights of a straight run with synchronous saves.
#[test]
fn background_checkpoints_with_zero1_survive_sigterm_and_resume_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    let sync = [
        "hyperparameters.max_steps=40",
        "checkpoint.every_steps=2",
        "checkpoint.keep=0",
        "hyperparameters.micro_batch_size=2",
        "log_every_steps=1",
    ];
    let background = [sync.as_slice(), &["checkpoint.async=true"]].concat();
    let launch = |job: &str, extra: &[&str]| {
        let mut cmd = common::janus();
        cmd.args(["launch", "--nproc", "2", "--"])
            .args(train_args(dir, &model, &data, job, extra));
        cmd
    };
    let log = common::run_ok(launch("straight", &sync));
    assert!(log.contains("(ZeRO-1)"), "{log}");
    let (code, log) = sigterm_at_step(launch("resumed", &background), 5, Some(1));
    assert_eq!(code, Some(janus_crds::exit_code::TERMINATED), "{log}");
    assert!(
        log.contains("writing it in the background"),
        "no background save:\n{log}"
    );
    // Every checkpoint started was completed (none is left without its manifest).
    let saved = checkpoint_steps(dir, "resumed");
    assert!(!saved.is_empty(), "{log}");
    for step in &saved {
        let m = dir.join(format!("ckpt/resumed/step-{step}/manifest.json"));
        assert!(m.exists(), "step {step} has no manifest:\n{log}");
    }
    let log = common::run_ok(launch("resumed", &background));
    assert!(
        log.contains("\"message\":\"resumed\"") && log.contains("training finished"),
        "{log}"
    );
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(
        a == b,
        "resume from background checkpoints is not bitwise identical"
    );
}

#[test]
fn sigterm_without_time_for_a_checkpoint_stops_without_one_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let mut cmd = common::janus();
    cmd.args(train_args(
        dir,
        &model,
        &data.join("sft.jsonl"),
        "short",
        &[
            "hyperparameters.max_steps=40",
            "checkpoint.every_steps=1000",
            "log_every_steps=1",
        ],
    ))
    .env(janus_crds::env::TERMINATION_GRACE_SECONDS, "0");
    let (code, log) = sigterm_at_step(cmd, 2, None);
    assert_eq!(code, Some(janus_crds::exit_code::TERMINATED), "{log}");
    // Said at start, before any disruption, and again when it happens.
    assert!(
        log.contains("not expected to fit in the pod's grace period"),
        "{log}"
    );
    assert!(
        log.contains("without a checkpoint") && log.contains("terminationGracePeriodSeconds"),
        "{log}"
    );
    assert!(checkpoint_steps(dir, "short").is_empty());
}

fn fabric_section(size_bytes: u64) -> janus_crds::config::FabricCheckSection {
    janus_crds::config::FabricCheckSection {
        size_bytes,
        warmup_iterations: 2,
        iterations: 7,
        ..Default::default()
    }
}

#[test]
fn the_fabric_check_measures_the_ring_bus_bandwidth_on_2_and_4_ranks_as_nccl_tests_does() {
    use janus::dist::fabric;
    let size = 16u64 << 20;
    for world in [2usize, 4] {
        let figures = with_ring(world, |_, ring| {
            fabric::measure(ring, &fabric_section(size), Device::Cpu, "ring").unwrap()
        });
        let f = &figures[0];
        // Every rank holds rank 0's figure, so all of them decide alike.
        for g in &figures {
            assert_eq!(
                (g.bus_bandwidth_gbps, g.seconds),
                (f.bus_bandwidth_gbps, f.seconds)
            );
        }
        assert!(f.seconds > 0.0 && f.bus_bandwidth_gbps > 0.0, "{f:?}");
        assert_eq!((f.ranks as usize, f.size_bytes), (world, size));
        assert_eq!(f.backend, "ring");
        // The formula by hand: bytes / seconds / 1e9, then x 2(n-1)/n (1 on 2 ranks,
        // 1.5 on 4).
        let algbw = size as f64 / f.seconds / 1e9;
        let factor = if world == 2 { 1.0 } else { 1.5 };
        assert!(
            (f.algorithm_bandwidth_gbps - algbw).abs() <= 1e-9 * algbw,
            "{f:?}"
        );
        assert!(
            (f.bus_bandwidth_gbps - algbw * factor).abs() <= 1e-9 * algbw,
            "{f:?}"
        );
        eprintln!(
            "fabric check, CPU ring, {world} ranks, {size} bytes: busbw {:.3} GB/s, algbw {:.3} GB/s, median {:.4} s",
            f.bus_bandwidth_gbps, f.algorithm_bandwidth_gbps, f.seconds
        );
    }
}

#[test]
fn a_fabric_below_its_threshold_fails_before_step_1_with_exit_65_or_warns_and_trains_the_same_weights(
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    let steps = [
        "hyperparameters.max_steps=3",
        "hyperparameters.gradient_accumulation_steps=1",
        "hyperparameters.micro_batch_size=2",
    ];
    let impossible = [
        "distributed.fabric_check.size_bytes=1048576",
        "distributed.fabric_check.min_bus_bandwidth_gbps=1000000",
    ];
    let out = run_ranks(
        dir,
        &model,
        &data,
        "fail",
        2,
        &[&steps[..], &impossible[..]].concat(),
        None,
    );
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::FABRIC_CHECK_FAILED),
        "{log}"
    );
    assert!(
        log.contains("fabric check failed") && log.contains("below the required 1000000 GB/s"),
        "{log}"
    );
    assert!(!dir.join("ckpt/fail/step-1").exists(), "no step ran");

    let plain = ok(run_ranks(dir, &model, &data, "plain", 2, &steps, None));
    assert!(!plain.contains("fabric check"), "{plain}");
    let warned = ok(run_ranks(
        dir,
        &model,
        &data,
        "warned",
        2,
        &[
            &steps[..],
            &impossible[..],
            &["distributed.fabric_check.action=warn"],
        ]
        .concat(),
        None,
    ));
    assert!(
        warned.contains("fabric check") && warned.contains("below the required"),
        "{warned}"
    );
    // The check leaves training alone: the same weights, bit for bit.
    let (a, b) = (
        read_weights(&dir.join("out-plain")),
        read_weights(&dir.join("out-warned")),
    );
    assert_eq!(a.len(), b.len());
    for ((n, x), (m, y)) in a.iter().zip(&b) {
        assert_eq!(n, m);
        assert!(x.equal(y), "{n}: the fabric check changed the weights");
    }
}
