//! The SFT and ORPO losses equal an independent Python/PyTorch computation of the
//! published formulas on fixed tensors (within 1e-5), and ORPO's log odds ratio is
//! log sigmoid(0) = -0.693 when chosen = rejected at a random initialisation.

mod common;

use janus::data::{Batch, Example, Pair, PreferenceBatch};
use janus::loss::{orpo_loss, sft_loss};
use janus::model::{AttentionLayout, ModelConfig, Transformer};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn example(len: usize, prompt_len: usize) -> Example {
    let t = Tensor::randint_low(3, 50, [len as i64], (Kind::Int64, Device::Cpu));
    Example {
        tokens: Vec::<i64>::try_from(t).unwrap(),
        prompt_len,
    }
}

#[test]
fn sft_and_orpo_losses_match_the_python_reference() {
    tch::manual_seed(11);
    let dir = tempfile::tempdir().unwrap();
    let lambda = 0.1;
    let mut tensors: Vec<(String, Tensor)> = vec![];

    // SFT over two micro-batches of different shapes, normalised by the step's tokens.
    let micro = [
        vec![example(9, 4), example(6, 2)],
        vec![example(12, 7), example(5, 1), example(8, 3)],
    ];
    let batches: Vec<Batch> = micro
        .iter()
        .map(|m| Batch::unpacked(&m.iter().collect::<Vec<_>>(), 2, Device::Cpu))
        .collect();
    let step_tokens: i64 = batches.iter().map(|b| b.loss_tokens).sum();
    let mut ours_sft = 0.0;
    for (i, b) in batches.iter().enumerate() {
        let (r, t) = b.input_ids.size2().unwrap();
        let logits = Tensor::randn([r, t, 50], (Kind::Float, Device::Cpu)) * 3.0;
        ours_sft += sft_loss(&logits, &b.targets, step_tokens).double_value(&[]);
        tensors.push((format!("sft_logits_{i}"), logits));
        tensors.push((format!("sft_targets_{i}"), b.targets.shallow_clone()));
    }

    // ORPO on three pairs sharing their prompts, NLL on the response only.
    let pairs: Vec<Pair> = (0..3)
        .map(|i| {
            let c = example(10 + i as usize, 4);
            let mut r = example(7 + 2 * i as usize, 4);
            r.tokens[..4].copy_from_slice(&c.tokens[..4]);
            Pair {
                chosen: c,
                rejected: r,
                margin: 0.0,
                id: 0,
            }
        })
        .collect();
    let pb = PreferenceBatch::new(&pairs.iter().collect::<Vec<_>>(), 2, false, Device::Cpu);
    let (r, t) = pb.input_ids.size2().unwrap();
    let logits = Tensor::randn([r, t, 50], (Kind::Float, Device::Cpu)) * 2.0;
    let (loss, sums) = orpo_loss(&logits, &pb, lambda, pb.nll_tokens, pb.pairs);
    tensors.extend([
        ("orpo_logits".to_string(), logits),
        ("orpo_targets".to_string(), pb.targets.shallow_clone()),
        (
            "orpo_response_mask".to_string(),
            pb.response_mask.shallow_clone(),
        ),
        ("orpo_nll_mask".to_string(), pb.nll_mask.shallow_clone()),
    ]);
    let file = dir.path().join("losses.safetensors");
    janus::model::tensors_to_safetensors(&tensors, &file).unwrap();

    let out = common::run_python(
        "reference_losses.py",
        &[file.to_str().unwrap(), &lambda.to_string()],
    );
    let reference: serde_json::Value = serde_json::from_str(&out).unwrap();
    let close = |name: &str, ours: f64| {
        let want = reference[name].as_f64().unwrap();
        assert!(
            (ours - want).abs() <= 1e-5,
            "{name}: ours {ours} vs reference {want}"
        );
    };
    close("sft_loss", ours_sft);
    close("orpo_loss", loss.double_value(&[]));
    let metrics: std::collections::HashMap<_, _> = sums.metrics(lambda).into_iter().collect();
    for name in [
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
    ] {
        close(name, metrics[name]);
    }
}

#[test]
fn orpo_nll_can_cover_the_prompt_as_trl_does() {
    let pairs = [Pair {
        chosen: example(10, 4),
        rejected: example(10, 4),
        margin: 0.0,
        id: 0,
    }];
    let refs: Vec<&Pair> = pairs.iter().collect();
    let response_only = PreferenceBatch::new(&refs, 2, false, Device::Cpu);
    let with_prompt = PreferenceBatch::new(&refs, 2, true, Device::Cpu);
    // 9 targets in the chosen row; the response covers targets 3..9 (tokens 4..10).
    assert_eq!(response_only.nll_tokens, 6);
    assert_eq!(with_prompt.nll_tokens, 9);
}

#[test]
fn log_odds_ratio_is_log_sigmoid_zero_when_chosen_equals_rejected() {
    tch::manual_seed(3);
    let cfg = ModelConfig::small("mistral", 64, 32, 40, 2, 4, 2);
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &cfg);
    let pairs: Vec<Pair> = (0..4)
        .map(|_| {
            let e = example(12, 5);
            Pair {
                chosen: e.clone(),
                rejected: e,
                margin: 0.0,
                id: 0,
            }
        })
        .collect();
    let pb = PreferenceBatch::new(&pairs.iter().collect::<Vec<_>>(), 2, false, Device::Cpu);
    let logits =
        tch::no_grad(|| model.forward(&pb.input_ids, &pb.positions, &AttentionLayout::Causal));
    let (_, sums) = orpo_loss(&logits, &pb, 0.1, pb.nll_tokens, pb.pairs);
    let m: std::collections::HashMap<_, _> = sums.metrics(0.1).into_iter().collect();
    assert!(
        (m["log_odds_ratio"] + std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        m["log_odds_ratio"]
    );
    assert!(m["log_odds_chosen"].abs() < 1e-6);
}
