//! Exact resume: 20 steps straight and 10 steps + stop + resume + 10 steps give
//! bitwise-identical weights on CPU, for SFT (packed), ORPO, DPO and the reward model;
//! incomplete or corrupt checkpoints are skipped; a history another owner wrote is
//! refused unless `checkpoint.resume_from` names it, which continues it exactly.

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
