//! DPO and the reward model checked against the peer's own code, not our formula twice:
//! on the same tiny random model and pairs, our DPO loss and TRL metrics equal what
//! TRL 1.16's `DPOTrainer._compute_loss` computes from the same log-probabilities
//! (sigmoid, ipo, hinge, robust; within 1e-5), our reward loss and metrics equal
//! `RewardTrainer.compute_loss`'s, our chunked per-sequence summed log-probabilities
//! equal a full forward of transformers' model within 1e-4, and a reward model we
//! save loads in transformers as `MistralForSequenceClassification` with our rewards;
//! our ORPO step's loss, metrics and gradient norm equal what TRL 1.16's
//! `ORPOTrainer.get_batch_loss_metrics` (`trl.experimental.orpo`) computes on
//! transformers' model with the same weights, and so does the loss after one AdamW step.

mod common;

use janus::config::DpoLoss;
use janus::data::{Example, Pair, PreferenceBatch, RewardBatch};
use janus::loss::{dpo_objective, reward_objective, token_logps, DpoParams};
use janus::model::{load_model_dir, save_model_dir, AttentionLayout, ModelConfig, Transformer};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn example(len: usize, prompt: usize) -> Example {
    Example {
        tokens: Vec::<i64>::try_from(Tensor::randint_low(
            3,
            60,
            [len as i64],
            (Kind::Int64, Device::Cpu),
        ))
        .unwrap(),
        prompt_len: prompt,
    }
}

fn pairs() -> Vec<Pair> {
    tch::manual_seed(17);
    [(14usize, 5usize, 11usize), (9, 3, 16), (20, 8, 12)]
        .iter()
        .enumerate()
        .map(|(i, &(c, p, r))| {
            let chosen = example(c, p);
            let mut rejected = example(r, p);
            rejected.tokens[..p].copy_from_slice(&chosen.tokens[..p]);
            Pair {
                chosen,
                rejected,
                margin: 0.25 * i as f64,
                id: i,
            }
        })
        .collect()
}

fn model() -> (VarStore, Transformer, ModelConfig) {
    tch::manual_seed(3);
    let cfg = ModelConfig::small("mistral", 60, 32, 64, 2, 4, 2);
    let vs = VarStore::new(Device::Cpu);
    let m = Transformer::new(&vs.root(), &cfg);
    (vs, m, cfg)
}

fn close(what: &str, ours: f64, theirs: &serde_json::Value, tol: f64) {
    let t = theirs
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: TRL gave {theirs}"));
    assert!(
        (ours - t).abs() <= tol * t.abs().max(1.0),
        "{what}: ours {ours} vs TRL {t}"
    );
}

#[test]
fn dpo_loss_and_metrics_equal_trls_for_every_loss_type() {
    let (_vs, m, _) = model();
    let ps = pairs();
    let b = PreferenceBatch::new(&ps.iter().collect::<Vec<_>>(), 2, false, Device::Cpu);
    let logits = tch::no_grad(|| m.forward(&b.input_ids, &b.positions, &AttentionLayout::Causal));
    let lp = token_logps(&logits, &b.targets) * &b.response_mask;
    let means = logits.mean_dim(-1, false, Kind::Float);
    let refs = Tensor::from_slice(&[-31.5f32, -18.25, -40.0, -27.0, -35.5, -29.75]);
    let n = b.pairs;
    let rows = 2 * n;
    let w = b.targets.size()[1];
    let completion = Tensor::cat(
        &[
            Tensor::zeros([rows, 1], (Kind::Float, Device::Cpu)),
            b.response_mask.shallow_clone(),
        ],
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dpo.safetensors");
    janus::model::tensors_to_safetensors(
        &[
            ("per_token_logps".into(), lp.shallow_clone()),
            ("completion_mask".into(), completion),
            ("mean_logits".into(), means.shallow_clone()),
            ("ref_chosen_logps".into(), refs.narrow(0, 0, n)),
            ("ref_rejected_logps".into(), refs.narrow(0, n, n)),
        ],
        &file,
    )
    .unwrap();
    assert_eq!(lp.size(), vec![rows, w]);
    let cases = [
        (DpoLoss::Sigmoid, "sigmoid", 0.0),
        (DpoLoss::Ipo, "ipo", 0.0),
        (DpoLoss::Hinge, "hinge", 0.0),
        (DpoLoss::Robust, "robust", 0.1),
    ];
    let spec: Vec<serde_json::Value> = cases
        .iter()
        .map(|(_, name, ls)| serde_json::json!({"loss_type": name, "beta": 0.1, "label_smoothing": ls}))
        .collect();
    let out = common::run_python(
        "trl_reference.py",
        &[
            "dpo",
            file.to_str().unwrap(),
            &serde_json::to_string(&spec).unwrap(),
        ],
    );
    let trl: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for ((loss_type, name, ls), trl) in cases.into_iter().zip(&trl) {
        let p = DpoParams {
            beta: 0.1,
            loss_type,
            label_smoothing: ls,
        };
        let (loss, sums) = dpo_objective(&lp, &means, &refs, &b, &p, n);
        close(
            &format!("{name} loss"),
            loss.double_value(&[]),
            &trl["loss"],
            1e-5,
        );
        for (metric, ours) in sums.metrics() {
            close(&format!("{name} {metric}"), ours, &trl[metric], 1e-5);
        }
    }
    // Conservative DPO: TRL 1.16 keeps label smoothing only in `robust` (and `aot`); our
    // sigmoid with label smoothing is cDPO's published form, which at 0 is TRL's sigmoid.
    let p = DpoParams {
        beta: 0.1,
        loss_type: DpoLoss::Sigmoid,
        label_smoothing: 0.2,
    };
    let (l, _) = dpo_objective(&lp, &means, &refs, &b, &p, n);
    let logps = lp.sum_dim_intlist(1, false, Kind::Float);
    let r = (&logps - &refs) * 0.1;
    let d = r.narrow(0, 0, n) - r.narrow(0, n, n);
    let want = (-(d.log_sigmoid()) * 0.8 - (-&d).log_sigmoid() * 0.2).mean(Kind::Float);
    assert!((l.double_value(&[]) - want.double_value(&[])).abs() < 1e-6);
}

#[test]
fn reward_loss_and_metrics_equal_trls() {
    let rewards = Tensor::from_slice(&[0.7f32, -1.25, 2.0, 0.1, 0.4, 2.5]);
    let margins = Tensor::from_slice(&[0.0f32, 0.5, 1.0]);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (None, false),
        (Some(0.01), false),
        (None, true),
        (Some(0.05), true),
    ];
    let mut spec = Vec::new();
    let mut ours = Vec::new();
    for (i, (center, margin)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("rm-{i}.safetensors"));
        let mut t = vec![("rewards".to_string(), rewards.shallow_clone())];
        if *margin {
            t.push(("margin".into(), margins.shallow_clone()));
        }
        janus::model::tensors_to_safetensors(&t, &file).unwrap();
        spec.push(serde_json::json!({"file": file, "center": center}));
        let m = if *margin {
            margins.shallow_clone()
        } else {
            margins.zeros_like()
        };
        ours.push(reward_objective(&rewards, &m, *center, 3));
    }
    let out = common::run_python(
        "trl_reference.py",
        &["reward", &serde_json::to_string(&spec).unwrap()],
    );
    let trl: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(trl.len(), ours.len());
    for ((loss, sums), trl) in ours.iter().zip(&trl) {
        close("reward loss", loss.double_value(&[]), &trl["loss"], 1e-5);
        for (metric, v) in sums.metrics() {
            close(&format!("reward {metric}"), v, &trl[metric], 1e-5);
        }
    }
}

#[test]
fn summed_sequence_logps_equal_a_transformers_forward() {
    let (vs, m, cfg) = model();
    let dir = tempfile::tempdir().unwrap();
    save_model_dir(dir.path(), &vs, &cfg, 1 << 30).unwrap();
    let ps = pairs();
    let b = PreferenceBatch::new(&ps.iter().collect::<Vec<_>>(), 2, false, Device::Cpu);
    let ours = janus::train::reference::batch_logps(&m, &b);
    let file = dir.path().join("batch.safetensors");
    janus::model::tensors_to_safetensors(
        &[
            ("input_ids".into(), b.input_ids.shallow_clone()),
            ("targets".into(), b.targets.shallow_clone()),
            ("response_mask".into(), b.response_mask.shallow_clone()),
        ],
        &file,
    )
    .unwrap();
    let out = common::run_python(
        "hf_preference.py",
        &[
            "seqlogps",
            "--model",
            dir.path().to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
        ],
    );
    let theirs: Vec<f64> = serde_json::from_str(&out).unwrap();
    let ours = Vec::<f32>::try_from(ours).unwrap();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 1e-4,
            "row {i}: ours {a} vs transformers {b}"
        );
    }
}

#[test]
fn a_saved_reward_model_loads_in_transformers_with_equal_rewards() {
    let (_vs, _m, cfg) = model();
    let rm_cfg = cfg.as_reward_model(2);
    tch::manual_seed(9);
    let vs = VarStore::new(Device::Cpu);
    let rm = Transformer::new(&vs.root(), &rm_cfg);
    let dir = tempfile::tempdir().unwrap();
    save_model_dir(dir.path(), &vs, &rm_cfg, 1 << 30).unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        saved["architectures"][0],
        "MistralForSequenceClassification"
    );
    assert_eq!(saved["id2label"].as_object().unwrap().len(), 1);
    // Our own loader reads it back too.
    let vs2 = VarStore::new(Device::Cpu);
    let again = Transformer::new(
        &vs2.root(),
        &ModelConfig::from_file(&dir.path().join("config.json")).unwrap(),
    );
    load_model_dir(dir.path(), &vs2, &rm_cfg).unwrap();
    let mut ps = pairs();
    // Rows without EOS, right-padded with the config's pad_token_id (EOS here), so that
    // transformers reads each row's last token, as we do. The reward method's own input
    // (EOS appended, a pad_token_id that is not EOS) is checked in preference_training.
    for p in &mut ps {
        p.chosen.tokens.retain(|&t| t != 2);
        p.rejected.tokens.retain(|&t| t != 2);
    }
    let b = RewardBatch::new(&ps.iter().collect::<Vec<_>>(), 2, Device::Cpu);
    let hidden =
        tch::no_grad(|| again.hidden_states(&b.input_ids, &b.positions, &AttentionLayout::Causal));
    let ours = Vec::<f32>::try_from(janus::train::rewards(&again, &hidden, &b)).unwrap();
    let h0 =
        tch::no_grad(|| rm.hidden_states(&b.input_ids, &b.positions, &AttentionLayout::Causal));
    let before = Vec::<f32>::try_from(janus::train::rewards(&rm, &h0, &b)).unwrap();
    assert_eq!(ours, before, "saving and loading changed the rewards");
    let file = dir.path().join("ids.safetensors");
    janus::model::tensors_to_safetensors(
        &[("input_ids".into(), b.input_ids.shallow_clone())],
        &file,
    )
    .unwrap();
    let out = common::run_python(
        "hf_preference.py",
        &[
            "rewards",
            "--model",
            dir.path().to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
        ],
    );
    let theirs: Vec<f64> = serde_json::from_str(&out).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 1e-4,
            "row {i}: ours {a} vs transformers {b}"
        );
    }
}

#[test]
fn orpo_step_equals_trls_orpo_trainer_before_and_after_one_adamw_step() {
    use janus::optim::AdamWConfig;
    use janus::train::Trainer;

    let cfg = ModelConfig::small("mistral", 60, 32, 64, 2, 4, 2);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let (lambda, lr, max_norm) = (0.1, 1e-3, 1.0);
    tch::manual_seed(3);
    let first = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, max_norm);
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model");
    save_model_dir(&weights, &first.vs, &cfg, 1 << 30).unwrap();
    // Sequences as training builds them: BOS, the shared prompt, the answer, EOS.
    let ps: Vec<Pair> = pairs()
        .into_iter()
        .map(|mut p| {
            for e in [&mut p.chosen, &mut p.rejected] {
                e.tokens.insert(0, 1);
                e.tokens.push(2);
                e.prompt_len += 1;
            }
            p
        })
        .collect();
    let spec = serde_json::json!({
        "pad": 2,
        "pairs": ps.iter().map(|p| serde_json::json!({
            "chosen": p.chosen.tokens,
            "rejected": p.rejected.tokens,
            "prompt_len": p.chosen.prompt_len,
        })).collect::<Vec<_>>(),
    });
    let file = dir.path().join("pairs.json");
    std::fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    // TRL's NLL covers prompt and response (`orpo_nll_on_prompt: true`); with false,
    // the reference is TRL's code with the NLL over the responses only (the original
    // ORPO code's `disable_prompt_loss`, our documented formula).
    let settings = [true, false];
    let cases: Vec<serde_json::Value> = settings
        .iter()
        .map(|&on| serde_json::json!({"beta": lambda, "nll_on_prompt": on, "lr": lr, "max_grad_norm": max_norm}))
        .collect();
    let out = common::run_python(
        "trl_reference.py",
        &[
            "orpo",
            weights.to_str().unwrap(),
            file.to_str().unwrap(),
            &serde_json::to_string(&cases).unwrap(),
        ],
    );
    let trl: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(trl.len(), settings.len());
    for (&on, trl) in settings.iter().zip(&trl) {
        let mut t = Trainer::new(&cfg, Kind::Float, Device::Cpu, adam, max_norm);
        load_model_dir(&weights, &t.vs, &cfg).unwrap();
        let b = PreferenceBatch::new(&ps.iter().collect::<Vec<_>>(), 2, on, Device::Cpu);
        let before = t.orpo_step(std::slice::from_ref(&b), lambda, lr).unwrap();
        let after = t.orpo_step(std::slice::from_ref(&b), lambda, lr).unwrap();
        let mut worst: f64 = 0.0;
        let mut check = |what: &str, ours: f64, theirs: &serde_json::Value| {
            close(&format!("nll_on_prompt={on} {what}"), ours, theirs, 1e-5);
            worst = worst.max((ours - theirs.as_f64().unwrap()).abs());
        };
        check("loss", before.loss, &trl["loss"]);
        let metrics: std::collections::HashMap<_, _> = before.metrics.iter().copied().collect();
        for name in [
            "nll_loss",
            "log_odds_ratio",
            "log_odds_chosen",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        ] {
            check(name, metrics[name], &trl[name]);
        }
        check("grad_norm", before.grad_norm, &trl["grad_norm"]);
        check("loss after one step", after.loss, &trl["loss_after_step"]);
        eprintln!(
            "orpo_nll_on_prompt={on}: loss {} (TRL {}), after a step {} (TRL {}); max |ours - TRL| = {worst:e}",
            before.loss, trl["loss"], after.loss, trl["loss_after_step"]
        );
        assert!(
            before.grad_norm > max_norm,
            "the step should clip: {}",
            before.grad_norm
        );
    }
}
