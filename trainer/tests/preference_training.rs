//! DPO and reward-model training end to end: reference log-probabilities are computed
//! once (before the first step) and a resume loads them instead of computing them
//! again; a frozen reference model in memory trains the same weights as precomputed
//! log-probabilities; the reward model is saved as a sequence classifier; bad pairs are
//! named by file and line.

mod common;

use std::path::Path;

fn train(
    dir: &Path,
    model: &Path,
    data: &Path,
    job: &str,
    extra: &[&str],
    stop: Option<&str>,
) -> String {
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    let mut o = common::tiny_overrides(dir, model, data, extra);
    o.push(format!("job={job}"));
    o.push(format!(
        "output_dir={}",
        dir.join(format!("out-{job}")).display()
    ));
    for s in o {
        cmd.args(["--set", &s]);
    }
    if let Some(s) = stop {
        cmd.args(["--stop-after-steps", s]);
    }
    common::run_ok(cmd)
}

const DPO: &[&str] = &[
    "method=dpo",
    "data.packing=false",
    "data.prompt_format=chatml",
    "hyperparameters.max_steps=6",
    "checkpoint.every_steps=3",
    "hyperparameters.micro_batch_size=2",
    "hyperparameters.gradient_accumulation_steps=1",
];

#[test]
fn reference_logps_are_computed_once_and_reused_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let data = data.join("preference.jsonl");
    let first = train(dir, &model, &data, "d", DPO, Some("3"));
    assert_eq!(
        first.matches("\"reference log-probs computed\"").count(),
        1,
        "{first}"
    );
    assert!(dir.join("ckpt/d/reference-logps.json").exists());
    let second = train(dir, &model, &data, "d", DPO, None);
    assert!(second.contains("\"message\":\"resumed\""), "{second}");
    assert!(
        second.contains("\"reference log-probs loaded\""),
        "{second}"
    );
    assert!(!second.contains("reference log-probs computed"), "{second}");
    // TRL's metric names are logged.
    for m in [
        "rewards/chosen",
        "rewards/margins",
        "rewards/accuracies",
        "logps/rejected",
        "logits/chosen",
    ] {
        assert!(second.contains(m), "missing {m}: {second}");
    }
    // Damaged stored values are recomputed (with the reference model loaded apart, as
    // the policy has moved), not trusted.
    std::fs::write(dir.join("ckpt/d/reference-logps.json"), b"{not json").unwrap();
    let extra: Vec<&str> = [DPO, &["hyperparameters.max_steps=7"]].concat();
    let again = train(dir, &model, &data, "d2", &extra, None);
    assert!(again.contains("reference log-probs computed"), "{again}");
}

#[test]
fn a_frozen_reference_model_trains_the_weights_precomputed_logps_train() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let data = data.join("preference.parquet");
    train(dir, &model, &data, "pre", DPO, None);
    let extra: Vec<&str> = [DPO, &["dpo.reference=model"]].concat();
    let log = train(dir, &model, &data, "mem", &extra, None);
    assert!(log.contains("DPO reference model kept in memory"), "{log}");
    let read = |job: &str| {
        let mut v = tch::Tensor::read_safetensors(dir.join(format!("out-{job}/model.safetensors")))
            .unwrap();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for ((name, a), (_, b)) in read("pre").iter().zip(&read("mem")) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(
            d <= 1e-6,
            "{name}: precomputed vs in-memory reference differ by {d}"
        );
    }
}

#[test]
fn a_reward_model_is_trained_and_saved_as_a_sequence_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let extra = [
        "method=reward",
        "data.packing=false",
        "hyperparameters.max_steps=4",
        "hyperparameters.micro_batch_size=2",
        "reward.center_rewards_coefficient=0.01",
    ];
    let log = train(
        dir,
        &model,
        &data.join("preference.jsonl"),
        "rm",
        &extra,
        None,
    );
    for m in [
        "accuracy",
        "margin",
        "mean_reward",
        "min_reward",
        "max_reward",
    ] {
        assert!(log.contains(m), "missing {m}: {log}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out-rm/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "MistralForSequenceClassification");
    let names: Vec<String> = tch::Tensor::read_safetensors(dir.join("out-rm/model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n == "score.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n == "lm_head.weight"), "{names:?}");
}

#[test]
fn bad_pairs_are_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, model) = common::tiny_setup(dir, 2);
    let good = r#"{"system": "s", "prompt": "p", "chosen": "a", "rejected": "b"}"#;
    for (bad, what) in [
        (
            r#"{"system": "s", "prompt": "p", "chosen": "a", "rejected": ""}"#,
            "rejected",
        ),
        (
            r#"{"system": "s", "prompt": "p", "chosen": "a"}"#,
            "rejected",
        ),
        (
            r#"{"input": "s p", "chosen": "", "rejected": "b"}"#,
            "chosen",
        ),
    ] {
        let f = dir.join("pairs.jsonl");
        std::fs::write(&f, format!("{good}\n{good}\n{bad}\n")).unwrap();
        for method in ["dpo", "reward"] {
            let mut cmd = common::janus();
            cmd.args(["train", "--preset", "tiny"]);
            for s in common::tiny_overrides(
                dir,
                &model,
                &f,
                &[&format!("method={method}"), "data.packing=false"],
            ) {
                cmd.args(["--set", &s]);
            }
            let out = cmd.output().unwrap();
            assert_eq!(out.status.code(), Some(janus_crds::exit_code::BAD_INPUT));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("pairs.jsonl:3") && err.contains(what),
                "{method} {bad}: {err}"
            );
        }
    }
}
