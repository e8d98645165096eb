//! The memory plan against measurement: for two CPU models of different sizes and
//! shapes (one dominated by activations, fp32; one by weights and optimizer state, bf16
//! with fp32 master weights and gradient checkpointing) the plan's prediction is within
//! 20% of the measured peak increase of resident memory over a few training steps,
//! and so is the per-rank plan of the second model under ZeRO-1 on 2 ranks.
//! Plans that do not fit fail `train` before the first step, with the breakdown; the 7B
//! recipes fit 80 GiB on 4 ranks.

mod common;

/// `janus bench-train` alone, or on `ranks` data-parallel ranks under `janus launch`
/// (then rank 0's report, one rank's figures).
fn bench(args: &[&str], ranks: usize) -> serde_json::Value {
    let mut cmd = common::janus();
    if ranks > 1 {
        cmd.args(["launch", "--nproc", &ranks.to_string(), "--"]);
    }
    cmd.arg("bench-train")
        .args(args)
        .args(["--steps", "2", "--warmup", "1", "--device", "cpu"])
        // Large blocks come from mmap and go back on free, so the resident peak is the
        // peak of live tensors rather than of what glibc's heap kept.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .env("OMP_NUM_THREADS", "2");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .map(|l| l.strip_prefix("[rank 0] ").unwrap_or(l))
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in:\n{stdout}"));
    serde_json::from_str(report).unwrap()
}

#[test]
fn the_plan_is_within_20_percent_of_the_measured_peak_on_cpu_models_and_zero1_ranks() {
    let state_bound: &[&str] = &[
        "--layers",
        "6",
        "--hidden",
        "512",
        "--intermediate",
        "1376",
        "--heads",
        "8",
        "--kv-heads",
        "4",
        "--vocab",
        "8000",
        "--seq",
        "256",
        "--batch",
        "2",
        "--dtype",
        "bfloat16",
        "--checkpointing",
    ];
    let zero = [state_bound, &["--zero"]].concat();
    let cases: [(&str, &[&str], usize); 3] = [
        (
            "activations-bound, fp32",
            &[
                "--layers",
                "4",
                "--hidden",
                "256",
                "--intermediate",
                "688",
                "--heads",
                "8",
                "--kv-heads",
                "4",
                "--vocab",
                "2000",
                "--seq",
                "512",
                "--batch",
                "4",
            ],
            1,
        ),
        (
            "state-bound, bf16 + fp32 master + checkpointing",
            state_bound,
            1,
        ),
        // Catches a sharded optimizer that holds the replicated state at start-up.
        ("the same, ZeRO-1 on 2 ranks (per rank)", &zero, 2),
    ];
    for (what, args, ranks) in cases {
        let r = bench(args, ranks);
        let plan = r["plan_bytes"].as_f64().unwrap();
        let measured = r["peak_rss_increase_bytes"].as_f64().unwrap();
        let ratio = plan / measured;
        eprintln!(
            "{what}: plan {:.1} MiB, measured {:.1} MiB, plan/measured {ratio:.3}",
            plan / (1 << 20) as f64,
            measured / (1 << 20) as f64
        );
        assert!(
            (0.8..=1.2).contains(&ratio),
            "{what}: plan {plan} bytes vs measured peak increase {measured} ({ratio:.3})"
        );
    }
}

#[test]
fn a_run_that_cannot_fit_fails_before_the_first_step_with_the_breakdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 2);
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    for o in common::tiny_overrides(dir, &model, &data.join("sft.jsonl"), &["memory.limit=1MiB"]) {
        cmd.args(["--set", &o]);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in [
        "weights",
        "Adam moments",
        "activations",
        "loss chunk",
        "does NOT fit in",
    ] {
        assert!(err.contains(part), "missing `{part}` in:\n{err}");
    }
    assert!(!err.contains("\"step\":1"), "a step ran:\n{err}");
    assert!(!dir.join("ckpt").join("tiny").exists());
}

#[test]
fn janus_plan_shows_the_7b_recipe_fits_80_gib_on_4_ranks() {
    let out = common::janus()
        .args([
            "plan",
            "--preset",
            "janus-7b-sft",
            "--nproc",
            "4",
            "--gpu-memory",
            "80GiB",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "master weights",
        "Adam moments",
        "ZeRO-1",
        "gradient checkpointing",
        "fits in 80.00 GiB",
        "without gradient checkpointing",
    ] {
        assert!(text.contains(part), "missing `{part}` in:\n{text}");
    }
    // One rank cannot hold the 7B recipe's full optimizer state in 80 GiB.
    let out = common::janus()
        .args([
            "plan",
            "--preset",
            "janus-7b-sft",
            "--nproc",
            "1",
            "--gpu-memory",
            "80GiB",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does NOT fit"));
}
