//! DPO and reward-model training end to end: reference log-probabilities are computed
//! once (before the first step) and a resume loads them instead of computing them
//! again; a frozen reference model in memory trains the same weights as precomputed
//! log-probabilities; the reward model is saved as a sequence classifier; bad pairs are
//! named by file and line; best-of-N keeps the sample the trained reward model ranks
//! highest; the reward of a training forward, the best-of-N reranker and transformers'
//! `MistralForSequenceClassification` on the exported model are one number; an OpenRLHF
//! reward checkpoint (`value_head`) scores best-of-N as OpenRLHF computes it.

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
        janus::stage_log::JsonlLog::open(out.to_str().unwrap(), "answers/shard-00000.jsonl")
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

/// An eval config that scores with the reward model at `rm` (the policy is unused).
fn reranking_config(dir: &Path, data: &Path, model: &Path, rm: &Path) -> janus::config::EvalConfig {
    janus::config::EvalConfig::resolve(
        None,
        &[
            format!("bench.path={}", data.join("bench.parquet").display()),
            format!("model.path={}", model.display()),
            "model.dtype=float32".into(),
            "model.device=cpu".into(),
            "model.prompt_format=mistral".into(),
            "generation.best_of=2".into(),
            format!("generation.reward_model={}", rm.display()),
            "judge.url=http://127.0.0.1:9/v1".into(),
            "judge.model=unused".into(),
            "judge.api_key_env=null".into(),
            format!("output_dir={}", dir.join("eval").display()),
        ],
    )
    .unwrap()
}

fn item(id: usize, system: &str, prompt: &str) -> janus::eval::bench::BenchItem {
    janus::eval::bench::BenchItem {
        id,
        source: String::new(),
        system: system.into(),
        prompt: prompt.into(),
        reference_answer: String::new(),
        rubrics: vec![],
        preference_set: None,
    }
}

/// Largest |a - b| over equal-length lists.
fn max_diff(what: &str, a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn training_best_of_n_and_transformers_read_one_reward_at_the_appended_eos() {
    use janus::data::{Ending, PreferenceRecord, PromptFormat, RewardBatch, Tokenization};
    use janus::model::{load_model_dir, AttentionLayout, ModelConfig, Transformer};
    use tch::{nn::VarStore, Device, Kind};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let prefs = data.join("preference.jsonl");
    // A few steps at a high rate, so the head is not its random start.
    train(
        dir,
        &model,
        &prefs,
        "rm",
        &[
            "method=reward",
            "data.packing=false",
            "data.prompt_format=mistral",
            "hyperparameters.max_steps=4",
            "hyperparameters.micro_batch_size=2",
            "hyperparameters.learning_rate=3e-3",
        ],
        None,
    );
    let rm = dir.join("out-rm");
    let exported: serde_json::Value =
        serde_json::from_slice(&common::read_bytes(&rm.join("config.json"))).unwrap();
    let tok = janus::tokenizer::Tokenizer::from_file(&rm.join("tokenizer.json")).unwrap();
    let pad = exported["pad_token_id"]
        .as_i64()
        .expect("the export names pad_token_id");
    assert_ne!(
        pad, tok.eos_id,
        "pad_token_id is EOS: transformers would not read at the EOS"
    );

    // The pairs as a `method: reward` run builds them.
    let (records, _) =
        janus::data::load_records::<PreferenceRecord>(std::slice::from_ref(&prefs), false).unwrap();
    // Distinct answers (the sample data sometimes writes one answer for two system
    // messages, and so a pair whose answers are the same text).
    let records: Vec<PreferenceRecord> = records
        .into_iter()
        .filter(|r| r.chosen != r.rejected)
        .take(5)
        .collect();
    assert_eq!(records.len(), 5);
    let rm_cfg = ModelConfig::from_file(&rm.join("config.json")).unwrap();
    let t = Tokenization {
        tok: &tok,
        format: PromptFormat::Mistral,
        max_len: rm_cfg.max_position_embeddings,
        policy: janus::config::Truncation::TruncateResponse,
        min_response: 1,
        ending: Ending::of(janus::config::Method::Reward),
    };
    let (pairs, stats) = t.pairs(&records).unwrap();
    assert_eq!((stats.kept, stats.truncated), (records.len(), 0));
    for p in &pairs {
        assert_eq!(p.chosen.tokens.last(), Some(&tok.eos_id));
    }
    let n = pairs.len();
    let b = RewardBatch::new(&pairs.iter().collect::<Vec<_>>(), tok.pad_id, Device::Cpu);

    // 1. The training forward: the values the reward objective compares.
    let vs = VarStore::new(Device::Cpu);
    let m = Transformer::new(&vs.root(), &rm_cfg);
    load_model_dir(&rm, &vs, &rm_cfg).unwrap();
    let hidden =
        tch::no_grad(|| m.hidden_states(&b.input_ids, &b.positions, &AttentionLayout::Causal));
    let training: Vec<f64> = Vec::<f32>::try_from(janus::train::rewards(&m, &hidden, &b))
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    // ... and they are what the trainer's step takes its Bradley-Terry loss of.
    let adam = janus::optim::AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let trainer = janus::train::Trainer::new(&rm_cfg, Kind::Float, Device::Cpu, adam, 1.0);
    load_model_dir(&rm, &trainer.vs, &rm_cfg).unwrap();
    let (loss, sums) = trainer.reward_backward(&b, None, n as i64);
    let bt: f64 = (0..n)
        .map(|i| {
            let d = training[i] - training[n + i];
            (1.0 + (-d).exp()).ln()
        })
        .sum::<f64>()
        / n as f64;
    assert!(
        (loss - bt).abs() < 1e-6,
        "the step's loss {loss} vs -log sigmoid of the rewards {bt}"
    );
    let lo = training.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((sums.min - lo).abs() < 1e-6, "{} vs {lo}", sums.min);

    // 2. The best-of-N reranker, given the texts.
    let cfg = reranking_config(dir, &data, &model, &rm);
    let mut reranker =
        janus::eval::generation::reward_model(&rm.display().to_string(), &cfg).unwrap();
    let mut reranked = vec![0.0; 2 * n];
    for (i, r) in records.iter().enumerate() {
        let got = reranker
            .rewards(
                &item(i, &r.system, &r.prompt),
                "",
                &[r.chosen.clone(), r.rejected.clone()],
            )
            .unwrap();
        reranked[i] = got[0];
        reranked[n + i] = got[1];
    }

    // 3. transformers' MistralForSequenceClassification on the export, the rows
    // right-padded with its pad_token_id (it reads each row's last token that is not).
    let width = pairs
        .iter()
        .flat_map(|p| [p.chosen.tokens.len(), p.rejected.tokens.len()])
        .max()
        .unwrap();
    let mut ids = vec![];
    for e in pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
    {
        ids.extend_from_slice(&e.tokens);
        ids.extend(std::iter::repeat_n(pad, width - e.tokens.len()));
    }
    let file = dir.join("ids.safetensors");
    janus::model::tensors_to_safetensors(
        &[(
            "input_ids".into(),
            tch::Tensor::from_slice(&ids).view([2 * n as i64, width as i64]),
        )],
        &file,
    )
    .unwrap();
    let out = common::run_python(
        "hf_preference.py",
        &[
            "rewards",
            "--model",
            rm.to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
        ],
    );
    let transformers: Vec<f64> = serde_json::from_str(&out).unwrap();

    let spread = training.iter().copied().fold(f64::NEG_INFINITY, f64::max) - lo;
    let a = max_diff("reranker", &training, &reranked);
    let c = max_diff("transformers", &training, &transformers);
    eprintln!(
        "rewards {training:?} (spread {spread:e}): max |training - reranker| = {a:e}, \
         max |training - transformers| = {c:e}"
    );
    assert!(
        spread > 1e-3,
        "the rewards hardly differ ({spread}): the check would be weak"
    );
    assert!(a <= 1e-5, "training {training:?} vs reranker {reranked:?}");
    assert!(
        c <= 1e-5,
        "training {training:?} vs transformers {transformers:?}"
    );
}

#[test]
fn an_openrlhf_value_head_checkpoint_scores_best_of_n_as_openrlhf_does() {
    use janus::data::{encode_joint, reward_input, PromptFormat};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, model) = common::tiny_setup(dir, 4);
    let rm = dir.join("openrlhf-rm");
    common::run_python(
        "openrlhf_reference.py",
        &[
            "save",
            "--base",
            model.to_str().unwrap(),
            "--out",
            rm.to_str().unwrap(),
            "--mean",
            "0.3",
            "--std",
            "0.25",
        ],
    );
    // The layout OpenRLHF saves: the body under `model.`, the head `value_head`.
    let names: Vec<String> = tch::Tensor::read_safetensors(rm.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n == "value_head.weight"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("model.") || n == "value_head.weight"),
        "{names:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&common::read_bytes(&rm.join("config.json"))).unwrap();
    assert_eq!(config["architectures"][0], "LLMForSequenceRegression");
    assert_eq!(config["normalize_reward"], false);
    assert_eq!(
        (config["mean"].as_f64(), config["std"].as_f64()),
        (Some(0.3), Some(0.25))
    );

    let cfg = reranking_config(dir, &data, &model, &rm);
    let mut reranker =
        janus::eval::generation::reward_model(&rm.display().to_string(), &cfg).unwrap();
    let tok = janus::tokenizer::Tokenizer::from_file(&rm.join("tokenizer.json")).unwrap();
    let bench = janus::eval::bench::load(&cfg.bench.path, Some(2)).unwrap();
    let candidates: Vec<String> = [
        "Yes.",
        "A longer answer, so that the batch is padded.",
        "Water, tea, or a glass of cold milk.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut ours, mut rows) = (vec![], vec![]);
    for it in &bench.items {
        ours.extend(reranker.rewards(it, "", &candidates).unwrap());
        let prompt = PromptFormat::Mistral.prompt(&it.system, &it.prompt);
        for c in &candidates {
            let (p, r) = encode_joint(&tok, &prompt, &PromptFormat::Mistral.response(c)).unwrap();
            rows.push(reward_input(&p, &r, tok.eos_id, usize::MAX).0);
        }
    }
    let file = dir.join("rows.json");
    std::fs::write(&file, serde_json::to_vec(&rows).unwrap()).unwrap();
    let out = common::run_python(
        "openrlhf_reference.py",
        &[
            "rewards",
            "--model",
            rm.to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
        ],
    );
    let openrlhf: Vec<f64> = serde_json::from_str(&out).unwrap();
    let d = max_diff("openrlhf", &ours, &openrlhf);
    eprintln!("rewards {ours:?}: max |ours - OpenRLHF| = {d:e}");
    assert!(d <= 1e-5, "ours {ours:?} vs OpenRLHF {openrlhf:?}");
}
