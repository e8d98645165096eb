//! Exact resume: 20 steps straight and 10 steps + stop + resume + 10 steps give
//! bitwise-identical weights on CPU, for SFT (packed), ORPO, DPO and the reward model;
//! incomplete or corrupt checkpoints are skipped; a history another owner wrote is
//! refused unless `checkpoint.resume_from` names it, which continues it exactly; a
//! weighted mixture of three sources draws each source at its weight, counts the draws
//! per source in the log and the summary, and a run killed after a checkpoint and
//! resumed draws the uninterrupted run's examples in the same order.

mod common;

use std::path::Path;

use janus::config::TrainConfig;
use janus::train::{run, RunOptions, Summary};

fn train(
    dir: &Path,
    model: &Path,
    data: &Path,
    job: &str,
    extra: &[&str],
    stop: Option<u64>,
) -> Summary {
    try_train(dir, model, data, job, extra, stop).unwrap()
}

fn try_train(
    dir: &Path,
    model: &Path,
    data: &Path,
    job: &str,
    extra: &[&str],
    stop: Option<u64>,
) -> janus::error::Result<Summary> {
    let mut o = common::tiny_overrides(dir, model, data, extra);
    o.push(format!("job={job}"));
    o.push(format!(
        "output_dir={}",
        dir.join(format!("out-{job}")).display()
    ));
    o.extend([
        "hyperparameters.max_steps=20".into(),
        "checkpoint.every_steps=10".into(),
        "checkpoint.keep=0".into(),
    ]);
    let cfg = TrainConfig::resolve(Some("tiny"), None, &o).unwrap();
    run(
        &cfg,
        &RunOptions {
            stop_after_steps: stop,
            progress_bar: false,
            world: None,
            stop: None,
            attempt: None,
        },
    )
}

fn weights(dir: &Path, job: &str) -> Vec<u8> {
    common::read_bytes(&dir.join(format!("out-{job}/model.safetensors")))
}

fn check_resume_is_exact(extra: &[&str], data_file: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 24);
    let data = data.join(data_file);
    let straight = train(dir, &model, &data, "straight", extra, None);
    assert!(straight.finished && straight.resumed_from_step.is_none());

    let first = train(dir, &model, &data, "resumed", extra, Some(10));
    assert!(!first.finished);
    assert_eq!(first.steps_completed, 10);
    let second = train(dir, &model, &data, "resumed", extra, None);
    assert_eq!(second.resumed_from_step, Some(10));
    assert!(second.finished);
    assert_eq!(second.steps_completed, 20);

    assert!(
        weights(dir, "straight") == weights(dir, "resumed"),
        "resumed weights differ from the straight run"
    );
    assert_eq!(straight.last_loss, second.last_loss);
    assert_eq!(
        straight.first_loss, second.first_loss,
        "the resumed run reports the whole loss curve"
    );
}

#[test]
fn sft_packed_resume_is_bitwise_identical() {
    check_resume_is_exact(
        &[
            "data.packing=true",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.gradient_accumulation_steps=2",
        ],
        "sft.parquet",
    );
}

#[test]
fn orpo_resume_is_bitwise_identical() {
    check_resume_is_exact(
        &[
            "method=orpo",
            "data.packing=false",
            "data.prompt_format=chatml",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.gradient_accumulation_steps=2",
        ],
        "preference.jsonl",
    );
}

#[test]
fn dpo_resume_is_bitwise_identical() {
    check_resume_is_exact(
        &[
            "method=dpo",
            "data.packing=false",
            "data.prompt_format=chatml",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.gradient_accumulation_steps=2",
        ],
        "preference.jsonl",
    );
}

#[test]
fn reward_model_resume_is_bitwise_identical() {
    check_resume_is_exact(
        &[
            "method=reward",
            "data.packing=false",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.gradient_accumulation_steps=2",
        ],
        "preference.jsonl",
    );
}

/// `checkpoint.async`: a run whose checkpoints are written in the background (from host
/// copies, while it trains on) stops, resumes and ends on the weights of a straight run
/// that saved synchronously, and its last checkpoint's files are the same bytes.
#[test]
fn background_checkpoints_resume_bitwise_identical_to_synchronous_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 24);
    let data = data.join("sft.parquet");
    let sync = [
        "data.packing=true",
        "hyperparameters.micro_batch_size=2",
        "hyperparameters.gradient_accumulation_steps=2",
    ];
    let background = [sync.as_slice(), &["checkpoint.async=true"]].concat();
    let straight = train(dir, &model, &data, "straight", &sync, None);
    let first = train(dir, &model, &data, "resumed", &background, Some(10));
    assert_eq!(first.steps_completed, 10);
    // A stop waits for the save in flight: step 10 is complete when the run returns.
    assert!(dir.join("ckpt/resumed/step-10/manifest.json").exists());
    let second = train(dir, &model, &data, "resumed", &background, None);
    assert_eq!(second.resumed_from_step, Some(10));
    assert!(second.finished);
    assert!(
        weights(dir, "straight") == weights(dir, "resumed"),
        "resumed weights differ from the straight run"
    );
    assert_eq!(straight.last_loss, second.last_loss);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "manifest.json",
    ] {
        let a = common::read_bytes(&dir.join(format!("ckpt/straight/step-20/{f}")));
        let b = common::read_bytes(&dir.join(format!("ckpt/resumed/step-20/{f}")));
        assert!(
            a == b,
            "{f} of step 20 differs between the two kinds of save"
        );
    }
}

#[test]
fn incomplete_and_corrupt_checkpoints_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 12);
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.micro_batch_size=2",
        "hyperparameters.gradient_accumulation_steps=1",
    ];
    train(dir, &model, &data, "j", &extra, Some(10));
    let root = dir.join("ckpt/j");
    // A save killed half-way: files but no manifest.
    let partial = root.join("step-15");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        root.join("step-10/model.safetensors"),
        partial.join("model.safetensors"),
    )
    .unwrap();
    // A complete-looking checkpoint whose bytes were damaged.
    let corrupt = root.join("step-12");
    std::fs::create_dir_all(&corrupt).unwrap();
    for e in std::fs::read_dir(root.join("step-10")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), corrupt.join(e.file_name())).unwrap();
    }
    let m = corrupt.join("manifest.json");
    std::fs::write(
        &m,
        std::fs::read_to_string(&m)
            .unwrap()
            .replace("\"step\": 10", "\"step\": 12"),
    )
    .unwrap();
    let opt = corrupt.join("optimizer.safetensors");
    let mut bytes = common::read_bytes(&opt);
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&opt, bytes).unwrap();

    let s = train(dir, &model, &data, "j", &extra, None);
    assert_eq!(s.resumed_from_step, Some(10));
    assert!(s.finished);
}

#[test]
fn resuming_with_a_changed_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 12);
    let data = data.join("sft.jsonl");
    train(
        dir,
        &model,
        &data,
        "k",
        &["hyperparameters.micro_batch_size=2"],
        Some(10),
    );
    let mut o = common::tiny_overrides(
        dir,
        &model,
        &data,
        &[
            "job=k",
            "hyperparameters.max_steps=20",
            "checkpoint.every_steps=10",
            "hyperparameters.learning_rate=0.5",
        ],
    );
    o.push("hyperparameters.micro_batch_size=2".into());
    let cfg = TrainConfig::resolve(Some("tiny"), None, &o).unwrap();
    let e = run(&cfg, &RunOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("different config") && e.contains("step-10"),
        "{e}"
    );
}

/// Job `a` (owner uid-a) stops at step 10. A new job of the same name (uid-b) refuses
/// that history, naming both owners and the way out; with `resume_from` naming it, it
/// continues at step 10. A job of another name continues it the same way, and both end
/// bitwise equal to a straight run.
#[test]
fn a_history_of_another_owner_is_refused_unless_resume_from_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 24);
    let data = data.join("sft.jsonl");
    let extra = ["hyperparameters.micro_batch_size=2"];
    let with = |more: &[&str]| -> Vec<String> {
        extra.iter().chain(more).map(|s| s.to_string()).collect()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }
    train(dir, &model, &data, "straight", &extra, None);

    let a = with(&["checkpoint.owner=uid-a"]);
    let first = train(dir, &model, &data, "a", &args(&a), Some(10));
    assert_eq!(first.steps_completed, 10);
    let history = dir.join("ckpt/a").display().to_string();

    let b = with(&["checkpoint.owner=uid-b"]);
    let e = try_train(dir, &model, &data, "a", &args(&b), None).unwrap_err();
    assert_eq!(e.exit_code(), 64, "{e}");
    let e = e.to_string();
    assert!(
        e.contains("uid-a")
            && e.contains("uid-b")
            && e.contains("resumeFrom")
            && e.contains(&history),
        "{e}"
    );
    // Nothing was written over the other owner's history.
    assert!(std::fs::read_to_string(dir.join("ckpt/a/latest"))
        .unwrap()
        .contains("step-10"));

    let other_name = with(&[
        "checkpoint.owner=uid-c",
        &format!("checkpoint.resume_from={history}"),
    ]);
    let taken = train(dir, &model, &data, "c", &args(&other_name), None);
    assert_eq!(taken.resumed_from_step, Some(10));
    assert!(taken.finished);
    assert!(
        weights(dir, "straight") == weights(dir, "c"),
        "continued run differs from the straight run"
    );

    let same_name = with(&[
        "checkpoint.owner=uid-b",
        &format!("checkpoint.resume_from={history}"),
    ]);
    let taken = train(dir, &model, &data, "a", &args(&same_name), None);
    assert_eq!(taken.resumed_from_step, Some(10));
    assert!(
        weights(dir, "straight") == weights(dir, "a"),
        "taken-over run differs from the straight run"
    );

    // A resume_from with nothing in it is an error, not a silent fresh start.
    let empty = with(&[
        "checkpoint.owner=uid-d",
        &format!("checkpoint.resume_from={}", dir.join("ckpt/none").display()),
    ]);
    let e = try_train(dir, &model, &data, "d", &args(&empty), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ckpt/none") && e.contains("no complete checkpoint"),
        "{e}"
    );
}

/// A tiny reward-model run on a weighted mixture of `sources` (path, weight), logging
/// each step's draws (`mixture draw`, debug); 30 steps of 8 pairs an epoch, 2 epochs.
fn mixture_run(
    dir: &Path,
    model: &Path,
    sources: &[(std::path::PathBuf, f64)],
    job: &str,
) -> std::process::Command {
    let train: Vec<String> = sources
        .iter()
        .map(|(p, w)| format!("{{path: {}, weight: {w}}}", p.display()))
        .collect();
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"])
        .env("RUST_LOG", "info,janus::train::feed=debug");
    for s in [
        format!("model.path={}", model.display()),
        format!("data.train=[{}]", train.join(", ")),
        format!("checkpoint.dir={}", dir.join("ckpt").display()),
        format!("output_dir={}", dir.join(format!("out-{job}")).display()),
        format!("job={job}"),
        "method=reward".into(),
        "data.packing=false".into(),
        "data.max_seq_len=128".into(),
        "data.mixture_samples=240".into(),
        "hyperparameters.micro_batch_size=8".into(),
        "hyperparameters.gradient_accumulation_steps=1".into(),
        "hyperparameters.max_steps=60".into(),
        "checkpoint.every_steps=15".into(),
        "checkpoint.keep=0".into(),
    ] {
        cmd.args(["--set", &s]);
    }
    cmd
}

/// Each step's draws in a log: (epoch, position in the epoch, units).
fn mixture_draws(log: &[String]) -> Vec<(u64, u64, Vec<usize>)> {
    log.iter()
        .filter(|l| l.contains("\"mixture draw\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON log line");
            let units = v["units"]
                .as_str()
                .expect("units, Debug-formatted")
                .trim_matches(['[', ']'])
                .split(',')
                .filter(|u| !u.trim().is_empty())
                .map(|u| u.trim().parse().expect("a unit index"))
                .collect();
            (
                v["epoch"].as_u64().unwrap(),
                v["position"].as_u64().unwrap(),
                units,
            )
        })
        .collect()
}

/// Units per source from the `mixture source ready` lines (in `data.train` order).
fn mixture_sources(log: &[String]) -> Vec<(String, usize)> {
    log.iter()
        .filter(|l| l.contains("\"mixture source ready\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON log line");
            (
                v["source"].as_str().unwrap().to_string(),
                v["units"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// Draws per source, units numbered source after source.
fn per_source(draws: &[(u64, u64, Vec<usize>)], sizes: &[usize]) -> Vec<u64> {
    let mut counts = vec![0u64; sizes.len()];
    for u in draws.iter().flat_map(|d| &d.2) {
        let mut start = 0;
        let k = sizes
            .iter()
            .position(|&n| {
                start += n;
                *u < start
            })
            .unwrap_or_else(|| panic!("unit {u} is past every source ({sizes:?})"));
        counts[k] += 1;
    }
    counts
}

fn summary_sources(stdout: &[u8]) -> Vec<serde_json::Value> {
    let out = String::from_utf8_lossy(stdout);
    let json = &out[out.find('{').expect("the summary")..];
    let s: serde_json::Value = serde_json::from_str(json).expect("the summary is JSON");
    s["sources"].as_array().expect("summary.sources").clone()
}

#[test]
fn a_weighted_mixture_draws_by_weight_counts_per_source_and_resumes_its_draws_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, model) = common::tiny_setup(dir, 4);
    // The helpfulness stage's weights (janus-rm-7b-helpful); sources of unequal sizes,
    // each smaller than its draws, so every source also starts over.
    let mut sources = vec![];
    for (k, (n, w)) in [(6usize, 0.72), (3, 0.14), (4, 0.14)]
        .into_iter()
        .enumerate()
    {
        let d = dir.join(format!("source-{k}"));
        janus::sample::write_sample_data(&d, n, k as u64 + 1).unwrap();
        sources.push((d.join("preference.jsonl"), w));
    }
    let lines = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(String::from)
            .collect()
    };

    let straight = mixture_run(dir, &model, &sources, "straight")
        .output()
        .unwrap();
    let log = lines(&straight.stderr);
    assert!(straight.status.success(), "{}", log.join("\n"));
    let ready = mixture_sources(&log);
    assert_eq!(ready.len(), 3, "one `mixture source ready` line per source");
    let sizes: Vec<usize> = ready.iter().map(|r| r.1).collect();
    let all = mixture_draws(&log);
    assert_eq!(all.len(), 60, "one draw line per step");
    assert!(all.iter().all(|d| d.2.len() == 8));
    // Two epochs of 240 draws, stepping through each in order.
    for (i, (epoch, position, _)) in all.iter().enumerate() {
        assert_eq!((*epoch, *position), ((i / 30) as u64, (i % 30 * 8) as u64));
    }
    let counts = per_source(&all, &sizes);
    let draws: u64 = counts.iter().sum();
    assert_eq!(draws, 480);
    let weights: f64 = sources.iter().map(|s| s.1).sum();
    for (k, (&c, (_, w))) in counts.iter().zip(&sources).enumerate() {
        // A multinomial count: mean n p, sd sqrt(n p (1 - p)); 3.5 sd is 1 in 2,000
        // per source for a sampler that is right, and 2-4% of the draws here.
        let p = w / weights;
        let mean = draws as f64 * p;
        let sd = (draws as f64 * p * (1.0 - p)).sqrt();
        eprintln!("source {k}: {c} of {draws} drawn, expected {mean:.1} (sd {sd:.1})");
        assert!(
            (c as f64 - mean).abs() <= 3.5 * sd,
            "source {k}: {c} of {draws} drawn at weight {w}, expected {mean:.1} +- {:.1}",
            3.5 * sd
        );
        let total = sizes[k] as u64;
        assert!(
            c > total,
            "source {k} ({total} pairs) was not drawn past its end: {c}"
        );
    }
    // The summary's per-source counts are the draws.
    let summary = summary_sources(&straight.stdout);
    assert_eq!(summary.len(), 3);
    for (k, s) in summary.iter().enumerate() {
        assert_eq!(s["source"].as_str().unwrap(), ready[k].0);
        assert_eq!(s["units"].as_u64().unwrap() as usize, sizes[k]);
        assert_eq!(s["drawn"].as_u64().unwrap(), counts[k], "source {k}: {s}");
        assert_eq!(s["weight"].as_f64().unwrap(), sources[k].1);
    }

    // Killed (SIGKILL) once the checkpoint of step 30 is saved, then resumed.
    let (mut child, mut log_lines) =
        common::spawn_logged(mixture_run(dir, &model, &sources, "resumed"));
    let mut killed = vec![];
    loop {
        let seen = common::read_until(&mut log_lines, "\"checkpoint saved\"");
        let last: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
        killed.extend(seen);
        if last["step"].as_u64() == Some(30) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = mixture_run(dir, &model, &sources, "resumed")
        .output()
        .unwrap();
    let log = lines(&resumed.stderr);
    assert!(resumed.status.success(), "{}", log.join("\n"));
    let out = String::from_utf8_lossy(&resumed.stdout);
    let summary: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    // Step 30's checkpoint, or a later one the run saved before the kill landed.
    let from = summary["resumed_from_step"]
        .as_u64()
        .expect("a resumed run") as usize;
    assert!(from == 30 || from == 45, "{summary}");
    let before = mixture_draws(&killed);
    assert!(before.len() >= from);
    let after = mixture_draws(&log);
    assert_eq!(before[..from], all[..from], "the killed run's draws differ");
    assert_eq!(after, all[from..], "the resumed run's draws differ");
    // Its summary counts what it drew itself.
    let counted = per_source(&after, &sizes);
    for (k, s) in summary["sources"].as_array().unwrap().iter().enumerate() {
        assert_eq!(s["drawn"].as_u64().unwrap(), counted[k], "source {k}: {s}");
    }
}
