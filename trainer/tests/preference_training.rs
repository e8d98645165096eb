//! DPO and reward-model training end to end: reference log-probabilities are computed
//! once (before the first step) and a resume loads them instead of computing them
//! again; a frozen reference model in memory trains the same weights as precomputed
//! log-probabilities; the reward model is saved as a sequence classifier; bad pairs are
//! named by file and line; best-of-N keeps the sample the trained reward model ranks
//! highest.

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

/// Per ranking: the item, its candidates and their rewards.
type Rankings = std::rc::Rc<std::cell::RefCell<Vec<(usize, Vec<String>, Vec<f64>)>>>;

/// Delegates to the real reward model and remembers what it was asked and answered.
struct Recording {
    inner: Box<dyn janus::eval::generation::Reranker>,
    seen: Rankings,
}

impl janus::eval::generation::Reranker for Recording {
    fn rewards(
        &mut self,
        item: &janus::eval::bench::BenchItem,
        prompt: &str,
        candidates: &[String],
    ) -> janus::Result<Vec<f64>> {
        let r = self.inner.rewards(item, prompt, candidates)?;
        self.seen
            .borrow_mut()
            .push((item.id, candidates.to_vec(), r.clone()));
        Ok(r)
    }
}

#[test]
fn best_of_n_keeps_the_sample_the_trained_reward_model_ranks_highest() {
    use janus::eval::generation;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 8);
    let rm_extra = [
        "method=reward",
        "data.packing=false",
        "hyperparameters.max_steps=3",
        "hyperparameters.micro_batch_size=2",
    ];
    train(
        dir,
        &model,
        &data.join("preference.jsonl"),
        "rm",
        &rm_extra,
        None,
    );
    let rm = dir.join("out-rm");
    let out = dir.join("eval");
    let cfg = janus::config::EvalConfig::resolve(
        None,
        &[
            format!("bench.path={}", data.join("bench.parquet").display()),
            "bench.limit=3".into(),
            format!("model.path={}", model.display()),
            "model.dtype=float32".into(),
            "model.device=cpu".into(),
            "generation.max_new_tokens=10".into(),
            "generation.best_of=3".into(),
            format!("generation.reward_model={}", rm.display()),
            "judge.url=http://127.0.0.1:9/v1".into(),
            "judge.model=unused".into(),
            "judge.api_key_env=null".into(),
            format!("output_dir={}", out.display()),
        ],
    )
    .unwrap();

    // The policy itself is not a reward model: refused, naming the directory.
    let e = generation::reward_model(&model.display().to_string(), &cfg)
        .err()
        .expect("a causal LM is not a reward model")
        .to_string();
    assert!(e.contains("ForSequenceClassification"), "{e}");

    let seen: Rankings = Default::default();
    let reranker = Recording {
        inner: generation::reward_model(&rm.display().to_string(), &cfg).unwrap(),
        seen: seen.clone(),
    };
    generation::run(
        &cfg,
        generation::Shard::all(),
        Some(Box::new(reranker)),
        &mut janus::eval::progress::StageProgress::new("generate", false),
    )
    .unwrap();
    let (_, answers) =
        janus::eval::log::JsonlLog::open(out.to_str().unwrap(), "answers/shard-00000.jsonl")
            .unwrap();
    assert_eq!(answers.len(), 3);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 3, "one ranking per item");
    for a in &answers {
        let id = a["item"].as_u64().unwrap() as usize;
        let (_, cands, rewards) = seen.iter().find(|s| s.0 == id).unwrap();
        assert_eq!(cands.len(), 3);
        assert_eq!(a["samples"], 3);
        let best = rewards
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            );
        assert_eq!(a["response"].as_str().unwrap(), cands[best.0], "{a}");
        assert!((a["reward"].as_f64().unwrap() - best.1).abs() < 1e-9, "{a}");
        // Different samples get different rewards: the head reads each sample.
        if cands[0] != cands[1] {
            assert_ne!(rewards[0], rewards[1], "{rewards:?}");
        }
    }

    // A sample's reward does not depend on the other samples of its batch (right
    // padding, the head on each row's own last token).
    let item = &janus::eval::bench::load(&cfg.bench.path, Some(1))
        .unwrap()
        .items[0];
    let mut again = generation::reward_model(&rm.display().to_string(), &cfg).unwrap();
    let alone = again.rewards(item, "", &["Same answer.".into()]).unwrap();
    let padded = again
        .rewards(
            item,
            "",
            &[
                "Same answer.".into(),
                "A much longer answer, so that the first row of the batch is padded.".into(),
            ],
        )
        .unwrap();
    assert!((alone[0] - padded[0]).abs() < 1e-5, "{alone:?} {padded:?}");
}
