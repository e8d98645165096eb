//! The `janus` binary: config errors exit with the bad-input code and name the key,
//! a training run logs JSON lines when not on a terminal and prints its summary.

mod common;

#[test]
fn impossible_values_exit_with_the_bad_input_code_naming_the_key() {
    for (set, key) in [
        (
            "hyperparameters.learning_rate=0",
            "hyperparameters.learning_rate",
        ),
        (
            "hyperparameters.micro_batch_size=0",
            "hyperparameters.micro_batch_size",
        ),
        ("data.max_seq_len=8", "data.max_seq_len"),
        ("hyperparameters.warmup=3", "warmup"),
    ] {
        let out = common::janus()
            .args(["train", "--preset", "tiny", "--set", set])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(janus_crds::exit_code::BAD_INPUT),
            "{set}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{set}: {err}");
    }
}

#[test]
fn an_unknown_key_in_a_config_file_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job.yaml");
    std::fs::write(&f, "preset: janus-7b-sft\ncheckpoint:\n  every_step: 100\n").unwrap();
    let out = common::janus()
        .args(["train", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job.yaml") && err.contains("every_step"),
        "{err}"
    );
}

#[test]
fn a_training_run_logs_json_lines_and_prints_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 8);
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    for o in common::tiny_overrides(
        dir.path(),
        &model,
        &data.join("sft.parquet"),
        &["hyperparameters.max_steps=6", "log_every_steps=2"],
    ) {
        cmd.args(["--set", &o]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let steps: Vec<serde_json::Value> = err
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|v| v["message"] == "train step")
        .collect();
    assert_eq!(steps.len(), 3, "{err}");
    assert!(steps[0]["loss"].as_f64().unwrap() > 0.0 && steps[2]["step"] == 6);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["finished"], true);
    assert!(
        dir.path().join("out/model.safetensors").exists()
            && dir.path().join("out/tokenizer.json").exists()
    );
}

#[test]
fn malformed_training_data_fails_fast_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 4);
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(data.join("sft.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.push(r#"{"prompt": "only a prompt"}"#);
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    for o in common::tiny_overrides(dir.path(), &model, &bad, &[]) {
        cmd.args(["--set", &o]);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:4") && err.contains("output"),
        "{err}"
    );
}

/// The config the operator renders into a job's ConfigMap (its golden file) is one this
/// trainer accepts as it would in a pod: through `JANUS_CONFIG`, URLs kept as URLs.
#[test]
fn the_operator_rendered_config_is_accepted() {
    let fixture = common::repo().join("operator/tests/fixtures/trainer-config.yaml");
    let mut cmd = common::janus();
    cmd.args(["train", "--print-config"])
        .env("JANUS_CONFIG", &fixture);
    let out = cmd.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}",
        fixture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Complete on its own: the whole document is a valid config with no preset under it
    // (so no key the operator forgets silently takes a demo value), and resolving it
    // through the CLI changes nothing.
    let text = std::fs::read_to_string(&fixture).unwrap();
    let rendered: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let strict = janus::config::TrainConfig::from_value(rendered.clone(), "fixture")
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    let resolved: serde_json::Value = serde_yaml::from_str(&printed).unwrap();
    assert_eq!(serde_json::to_value(&strict).unwrap(), resolved);
    assert_eq!(rendered, resolved);
}

/// In a pod whose scratch volume is limited (`JANUS_SCRATCH_LIMIT_BYTES`, from
/// `spec.workers.scratchSizeLimit`), a model download that does not fit in it fails
/// before it starts, as bad input naming the sizes and the field, instead of the
/// kubelet evicting the pod midway (and the restarted gang trying again).
#[test]
fn a_model_download_beyond_the_scratch_limit_fails_up_front_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = common::tiny_setup(dir.path(), 4);
    let scratch = dir.path().join("scratch");
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"])
        .env("JANUS_STAGING_DIR", &scratch)
        .env(janus_crds::env::SCRATCH_LIMIT_BYTES, "100000");
    let url = format!("file://{}", model.display());
    for o in common::tiny_overrides(dir.path(), &model, &data.join("sft.jsonl"), &[]) {
        let o = if o.starts_with("model.path=") {
            format!("model.path={url}")
        } else {
            o
        };
        cmd.args(["--set", &o]);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::BAD_INPUT),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "not enough scratch space for the model download ({url})"
        )) && err.contains("limit of 0.10 MiB")
            && err.contains("spec.workers.scratchSizeLimit"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    let downloaded: u64 = left.iter().flat_map(|e| walk(&e.path())).sum();
    assert_eq!(downloaded, 0, "nothing was downloaded");
}

/// Inference downloads its model through the same fetch as training, so `janus serve`
/// (and evaluation) is refused up front as well when the model does not fit.
#[test]
fn an_inference_model_download_beyond_the_scratch_limit_fails_up_front_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = common::tiny_setup(dir.path(), 4);
    let scratch = dir.path().join("scratch");
    let url = format!("file://{}", model.display());
    let mut child = common::janus()
        .args(["serve", "--model", &url, "--device", "cpu", "--port", "0"])
        .env("JANUS_STAGING_DIR", &scratch)
        .env(janus_crds::env::SCRATCH_LIMIT_BYTES, "100000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that got its model would serve until stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("janus serve started instead of refusing the download");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(janus_crds::exit_code::BAD_INPUT),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "not enough scratch space for the model download ({url})"
        )) && err.contains("spec.workers.scratchSizeLimit"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    let downloaded: u64 = left.iter().flat_map(|e| walk(&e.path())).sum();
    assert_eq!(downloaded, 0, "nothing was downloaded");
}

fn walk(p: &std::path::Path) -> Vec<u64> {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .flat_map(|e| walk(&e.path()))
            .collect()
    } else {
        vec![std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)]
    }
}
