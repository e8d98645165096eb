//! Checkpoints in a real S3 server (versitygw on loopback): exact resume, a crash during
//! upload, outages shorter and longer than the retry budget, wrong credentials.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::S3Server;

fn train_cmd(
    s3: &S3Server,
    dir: &Path,
    model: &Path,
    data: &Path,
    job: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    let mut o = common::tiny_overrides(dir, model, data, extra);
    o.push(format!("job={job}"));
    o.push(format!("checkpoint.dir={}", s3.url("ckpt")));
    o.push(format!(
        "output_dir={}",
        dir.join(format!("out-{job}")).display()
    ));
    for s in o {
        cmd.args(["--set", &s]);
    }
    s3.apply_env(&mut cmd);
    cmd
}

#[test]
fn resume_from_s3_is_bitwise_identical() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.parquet");
    let extra = [
        "hyperparameters.max_steps=12",
        "checkpoint.every_steps=6",
        "hyperparameters.micro_batch_size=2",
    ];
    common::run_ok(train_cmd(&s3, dir, &model, &data, "straight", &extra));
    let mut first = train_cmd(&s3, dir, &model, &data, "resumed", &extra);
    first.args(["--stop-after-steps", "6"]);
    common::run_ok(first);
    assert!(s3.object_path("ckpt/resumed/step-6/manifest.json").exists());
    let log = common::run_ok(train_cmd(&s3, dir, &model, &data, "resumed", &extra));
    assert!(
        log.contains("\"message\":\"resumed\"")
            && log.contains("s3://janus-test/ckpt/resumed/step-6"),
        "{log}"
    );
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(
        a == b,
        "resumed-from-S3 weights differ from the straight run"
    );
}

#[test]
fn streamed_training_from_s3_shards_resumes_bitwise_identical() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let mut shard = common::janus();
    shard
        .args(["data", "shard", "--input"])
        .arg(data.join("sft.parquet"))
        .args(["--output", &s3.url("sharded"), "--block-size", "2KiB"]);
    s3.apply_env(&mut shard);
    common::run_ok(shard);
    assert!(s3.object_path("sharded/index.json").exists());
    let url = s3.url("sharded");
    let dataset = Path::new(&url);
    // 48 records, 4 per step: 12 steps per epoch; 18 steps cross into epoch 1, and the
    // stop at step 7 falls inside a window of the stream.
    let extra = [
        "hyperparameters.max_steps=18",
        "checkpoint.every_steps=7",
        "hyperparameters.micro_batch_size=2",
        "data.packing=false",
        "data.streaming.window_blocks=2",
    ];
    let log = common::run_ok(train_cmd(&s3, dir, &model, dataset, "straight", &extra));
    assert!(log.contains("\"message\":\"streaming data\""), "{log}");
    let mut first = train_cmd(&s3, dir, &model, dataset, "resumed", &extra);
    first.args(["--stop-after-steps", "7"]);
    common::run_ok(first);
    let log = common::run_ok(train_cmd(&s3, dir, &model, dataset, "resumed", &extra));
    assert!(log.contains("s3://janus-test/ckpt/resumed/step-7"), "{log}");
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(a == b, "resumed streamed run differs from the straight run");
}

/// The first log line containing `needle`.
fn wait_for(lines: &mut impl Iterator<Item = std::io::Result<String>>, needle: &str) -> String {
    common::read_until(lines, needle)
        .pop()
        .expect("at least the matching line")
}

#[test]
fn a_crash_during_checkpoint_upload_leaves_no_usable_partial_checkpoint() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, _) = common::tiny_setup(dir, 8);
    // A model big enough (about 250 MB of checkpoint) that its upload takes a while.
    let model = dir.join("big-model");
    let cfg = janus::model::ModelConfig::small("mistral", 16000, 384, 1024, 4, 6, 2);
    let tok = janus::sample::TokenizerSource::File(dir.join("model/tokenizer.json"));
    janus::sample::init_model(&model, cfg, tok, tch::Kind::Float, 0).unwrap();
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.max_steps=8",
        "checkpoint.every_steps=2",
        "hyperparameters.micro_batch_size=1",
    ];
    let (mut child, mut lines) =
        common::spawn_logged(train_cmd(&s3, dir, &model, &data, "crash", &extra));
    wait_for(&mut lines, "\"checkpoint saved\"");
    wait_for(&mut lines, "\"uploading checkpoint\"");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(s3.object_path("ckpt/crash/step-2/manifest.json").exists());
    assert!(
        !s3.object_path("ckpt/crash/step-4/manifest.json").exists(),
        "the upload finished before the kill: test inconclusive"
    );

    let log = common::run_ok(train_cmd(&s3, dir, &model, &data, "crash", &extra));
    assert!(
        log.contains("\"message\":\"resumed\"") && log.contains("ckpt/crash/step-2"),
        "{log}"
    );
}

/// `checkpoint.async`: the same kill, while the background thread uploads step 4 and
/// the step loop trains on: step 2 stays `latest`, step 4 has no manifest, and the next
/// run resumes from step 2.
#[test]
fn a_kill_during_a_background_upload_leaves_the_previous_checkpoint_latest() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, _) = common::tiny_setup(dir, 8);
    let model = dir.join("big-model");
    let cfg = janus::model::ModelConfig::small("mistral", 16000, 384, 1024, 4, 6, 2);
    let tok = janus::sample::TokenizerSource::File(dir.join("model/tokenizer.json"));
    janus::sample::init_model(&model, cfg, tok, tch::Kind::Float, 0).unwrap();
    let data = data.join("sft.jsonl");
    let extra = [
        "hyperparameters.max_steps=8",
        "checkpoint.every_steps=2",
        "hyperparameters.micro_batch_size=1",
        "checkpoint.async=true",
    ];
    let (mut child, mut lines) =
        common::spawn_logged(train_cmd(&s3, dir, &model, &data, "bgcrash", &extra));
    let saved = wait_for(&mut lines, "\"checkpoint saved\"");
    assert!(saved.contains("\"background\":true"), "{saved}");
    let uploading = wait_for(&mut lines, "\"uploading checkpoint\"");
    assert!(uploading.contains("step-4"), "{uploading}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(s3.object_path("ckpt/bgcrash/step-2/manifest.json").exists());
    assert!(
        !s3.object_path("ckpt/bgcrash/step-4/manifest.json").exists(),
        "the upload finished before the kill: test inconclusive"
    );
    assert_eq!(
        std::fs::read_to_string(s3.object_path("ckpt/bgcrash/latest")).unwrap(),
        "step-2\n"
    );
    let log = common::run_ok(train_cmd(&s3, dir, &model, &data, "bgcrash", &extra));
    assert!(
        log.contains("\"message\":\"resumed\"") && log.contains("ckpt/bgcrash/step-2"),
        "{log}"
    );
    assert!(s3.object_path("ckpt/bgcrash/step-8/manifest.json").exists());
}

/// `checkpoint.async` to S3: a run stopped after its background save of step 6 and
/// resumed ends on the weights of a straight run with synchronous saves.
#[test]
fn background_checkpoints_to_s3_resume_bitwise_identical() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.parquet");
    let sync = [
        "hyperparameters.max_steps=12",
        "checkpoint.every_steps=3",
        "hyperparameters.micro_batch_size=2",
    ];
    let background = [sync.as_slice(), &["checkpoint.async=true"]].concat();
    common::run_ok(train_cmd(&s3, dir, &model, &data, "straight", &sync));
    let mut first = train_cmd(&s3, dir, &model, &data, "resumed", &background);
    first.args(["--stop-after-steps", "6"]);
    common::run_ok(first);
    assert!(s3.object_path("ckpt/resumed/step-6/manifest.json").exists());
    let log = common::run_ok(train_cmd(&s3, dir, &model, &data, "resumed", &background));
    assert!(log.contains("s3://janus-test/ckpt/resumed/step-6"), "{log}");
    let a = common::read_bytes(&dir.join("out-straight/model.safetensors"));
    let b = common::read_bytes(&dir.join("out-resumed/model.safetensors"));
    assert!(a == b, "resume from background S3 checkpoints differs");
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "manifest.json",
    ] {
        let key = |job: &str| s3.object_path(&format!("ckpt/{job}/step-12/{f}"));
        assert!(
            common::read_bytes(&key("straight")) == common::read_bytes(&key("resumed")),
            "{f} of step 12 differs between the two kinds of save"
        );
    }
}

/// `checkpoint.async`: a background save that fails (the store went away) fails the run
/// at its next save with the retryable exit code, naming the step and the store; the
/// checkpoint before it is kept.
#[test]
fn a_failed_background_save_fails_the_run_at_the_next_save() {
    let mut s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let extra = [
        "hyperparameters.max_steps=100000",
        "checkpoint.every_steps=10",
        "hyperparameters.micro_batch_size=2",
        "checkpoint.retry_timeout_seconds=3",
        "checkpoint.async=true",
    ];
    let (mut child, mut lines) = common::spawn_logged(train_cmd(
        &s3,
        dir,
        &model,
        &data.join("sft.jsonl"),
        "downbg",
        &extra,
    ));
    let saved = wait_for(&mut lines, "\"checkpoint saved\"");
    s3.stop();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let text = rest.join("\n");
    assert_eq!(
        status.code(),
        Some(janus_crds::exit_code::RETRYABLE),
        "{text}"
    );
    assert!(
        text.contains("(written in the background)")
            && text.contains("s3://janus-test/ckpt/downbg"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let step = v["step"].as_u64().unwrap();
    assert!(
        s3.object_path(&format!("ckpt/downbg/step-{step}/manifest.json"))
            .exists(),
        "a completed checkpoint was lost"
    );
}

#[test]
fn a_short_outage_is_retried_and_the_run_finishes() {
    let mut s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let extra = [
        "hyperparameters.max_steps=300",
        "checkpoint.every_steps=10",
        "hyperparameters.micro_batch_size=2",
        "checkpoint.retry_timeout_seconds=60",
    ];
    let (mut child, mut lines) = common::spawn_logged(train_cmd(
        &s3,
        dir,
        &model,
        &data.join("sft.jsonl"),
        "outage",
        &extra,
    ));
    wait_for(&mut lines, "\"checkpoint saved\"");
    s3.stop();
    std::thread::sleep(Duration::from_secs(3));
    s3.restart();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", rest.join("\n"));
    assert!(s3
        .object_path("ckpt/outage/step-300/manifest.json")
        .exists());
}

#[test]
fn a_long_outage_exits_retryable_naming_the_endpoint_and_keeps_checkpoints() {
    let mut s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let extra = [
        "hyperparameters.max_steps=100000",
        "checkpoint.every_steps=10",
        "hyperparameters.micro_batch_size=2",
        "checkpoint.retry_timeout_seconds=3",
    ];
    let (mut child, mut lines) = common::spawn_logged(train_cmd(
        &s3,
        dir,
        &model,
        &data.join("sft.jsonl"),
        "down",
        &extra,
    ));
    let saved = wait_for(&mut lines, "\"checkpoint saved\"");
    s3.stop();
    let stopped = Instant::now();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(60),
        "took {:?} to give up",
        stopped.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(janus_crds::exit_code::RETRYABLE),
        "{}",
        rest.join("\n")
    );
    let text = rest.join("\n");
    assert!(
        text.contains(&format!("127.0.0.1:{}", s3.port))
            || text.contains("s3://janus-test/ckpt/down"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let step = v["step"].as_u64().unwrap();
    assert!(
        s3.object_path(&format!("ckpt/down/step-{step}/manifest.json"))
            .exists(),
        "a completed checkpoint was lost"
    );
}

#[test]
fn wrong_credentials_fail_before_any_training_work() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let mut cmd = train_cmd(&s3, dir, &model, &data.join("sft.jsonl"), "creds", &[]);
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::BAD_INPUT),
        "{err}"
    );
    assert!(
        err.contains("s3://janus-test/ckpt/creds") && err.contains("credentials"),
        "{err}"
    );
    assert!(
        !err.contains("data ready") && !err.contains("train step"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "the secret was printed");
}

#[test]
fn data_is_read_from_s3_and_the_final_model_is_published_there() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let key = s3.object_path("data/sft.parquet");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::copy(data.join("sft.parquet"), &key).unwrap();
    let out_url = s3.url("models/demo");
    let mut cmd = train_cmd(
        &s3,
        dir,
        &model,
        Path::new(&s3.url("data/sft.parquet")),
        "remote",
        &["hyperparameters.max_steps=3"],
    );
    cmd.args(["--set", &format!("output_dir={out_url}")]);
    let log = common::run_ok(cmd);
    assert!(log.contains("downloaded training data"), "{log}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "summary.json",
    ] {
        assert!(
            s3.object_path(&format!("models/demo/{f}")).exists(),
            "{f} was not published"
        );
    }
    // The published model is a model source in turn: train on from its URL.
    let from_url = train_cmd(
        &s3,
        dir,
        Path::new(&out_url),
        &data.join("sft.parquet"),
        "from-url",
        &["hyperparameters.max_steps=2"],
    );
    let log = common::run_ok(from_url);
    assert!(log.contains("downloaded the model"), "{log}");
    let mut no_model = train_cmd(
        &s3,
        dir,
        Path::new(&s3.url("models/none")),
        &data.join("sft.parquet"),
        "no-model",
        &[],
    );
    let out = no_model.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("s3://janus-test/models/none: no config.json"),
        "{err}"
    );

    let mut missing = train_cmd(
        &s3,
        dir,
        &model,
        Path::new(&s3.url("data/nope.parquet")),
        "missing",
        &[],
    );
    missing.stderr(Stdio::piped());
    let out = missing.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::BAD_INPUT),
        "{err}"
    );
    assert!(
        err.contains("s3://janus-test/data/nope.parquet: no such object"),
        "{err}"
    );
}

/// The complete steps of job `job`'s history in the S3 server, ascending.
fn published_steps(s3: &S3Server, job: &str) -> Vec<u64> {
    let dir = s3.object_path(&format!("ckpt/{job}"));
    let mut steps: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let step = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            e.path().join("manifest.json").exists().then_some(step)
        })
        .collect();
    steps.sort();
    steps
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// Issue 30, item 2, on S3: rank 0 of attempt 1 saves, then freezes (its node NotReady,
/// its container not killed); attempt 2 resumes from its checkpoint and saves further.
/// When attempt 1 runs on, its next save is refused by the fence naming both attempts:
/// attempt 2's checkpoint and `latest` are untouched, and attempt 3 resumes from it.
#[test]
fn an_old_attempt_still_running_beside_a_new_one_cannot_overwrite_its_checkpoints_on_s3() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 16);
    let data = data.join("sft.jsonl");
    // Long enough that attempt 1 never finishes on its own.
    let extra = [
        "hyperparameters.max_steps=100000",
        "checkpoint.every_steps=5",
        "hyperparameters.micro_batch_size=2",
        "checkpoint.owner=uid-a",
    ];
    let attempt = |n: u64| {
        let mut cmd = train_cmd(&s3, dir, &model, &data, "fenced", &extra);
        cmd.env("JANUS_ATTEMPT", n.to_string());
        cmd
    };
    let (mut old, mut old_lines) = common::spawn_logged(attempt(1));
    wait_for(&mut old_lines, "\"checkpoint saved\"");
    signal(&old, "-STOP");
    let old_newest = *published_steps(&s3, "fenced").last().unwrap();

    // Attempt 2 resumes from attempt 1's newest checkpoint and saves 10 steps on.
    let until = old_newest + 10;
    let mut new = attempt(2);
    new.args(["--stop-after-steps", &until.to_string()]);
    let log = common::run_ok(new);
    assert!(
        log.contains("\"message\":\"resumed\"")
            && log.contains(&format!("ckpt/fenced/step-{old_newest}")),
        "{log}"
    );
    let manifest_key = format!("ckpt/fenced/step-{until}/manifest.json");
    let manifest = common::read_bytes(&s3.object_path(&manifest_key));
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["attempt"], 2, "{m}");
    let fence: serde_json::Value = serde_json::from_slice(&common::read_bytes(
        &s3.object_path("ckpt/fenced/fence.json"),
    ))
    .unwrap();
    assert_eq!(
        (&fence["owner"], &fence["attempt"]),
        (&serde_json::json!("uid-a"), &serde_json::json!(2)),
        "{fence}"
    );

    // Attempt 1 runs on: its next save (or the publish of the one it was in) is refused.
    signal(&old, "-CONT");
    let refused = wait_for(&mut old_lines, "fence.json names attempt 2 of owner uid-a");
    assert!(
        refused.contains("newer than this run (attempt 1 of owner uid-a)"),
        "{refused}"
    );
    let status = old.wait().unwrap();
    assert!(!status.success(), "the stale attempt exits failed");
    assert_eq!(*published_steps(&s3, "fenced").last().unwrap(), until);
    assert!(
        common::read_bytes(&s3.object_path(&manifest_key)) == manifest,
        "attempt 2's manifest was rewritten"
    );
    assert_eq!(
        std::fs::read_to_string(s3.object_path("ckpt/fenced/latest")).unwrap(),
        format!("step-{until}\n")
    );

    let mut next = attempt(3);
    next.args(["--stop-after-steps", &(until + 5).to_string()]);
    let log = common::run_ok(next);
    assert!(
        log.contains("\"message\":\"resumed\"")
            && log.contains(&format!("ckpt/fenced/step-{until}")),
        "{log}"
    );
}
