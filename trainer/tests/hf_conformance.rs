//! Our model's logits match Hugging Face transformers on the same weights (fp32, max
//! abs difference <= 1e-4), loading single-file and sharded safetensors, and a model
//! saved by us loads in transformers with the same logits.

mod common;

use std::path::Path;

use janus::model::{load_model_dir, save_model_dir, AttentionLayout, ModelConfig, Transformer};
use tch::{nn::VarStore, Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn our_logits(dir: &Path, input_ids: &Tensor) -> (VarStore, ModelConfig, Tensor) {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &cfg);
    load_model_dir(dir, &vs, &cfg).unwrap();
    let (b, t) = input_ids.size2().unwrap();
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([b, t], false);
    let logits = tch::no_grad(|| model.forward(input_ids, &positions, &AttentionLayout::Causal));
    (vs, cfg, logits)
}

fn conformance(arch: &str, shard_kb: u32, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let shard_kb = shard_kb.to_string();
    let mut args = vec![
        "make",
        "--arch",
        arch,
        "--out",
        hf.to_str().unwrap(),
        "--shard-kb",
        &shard_kb,
    ];
    args.extend(extra);
    common::run_python("hf_reference.py", &args);
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(hf.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let (vs, cfg, logits) = our_logits(&hf, &reference["input_ids"]);
    let diff = (&logits - &reference["logits"])
        .abs()
        .max()
        .double_value(&[]);
    eprintln!("{arch}: max |ours - transformers| = {diff:e}");
    assert!(diff <= TOL, "{arch}: max |ours - transformers| = {diff}");

    // Round trip: save sharded (small shards) and have transformers load it.
    let ours = dir.path().join("ours");
    let files = save_model_dir(&ours, &vs, &cfg, 16 << 10).unwrap();
    assert!(
        files.iter().any(|f| f == janus::model::SHARD_INDEX),
        "{files:?}"
    );
    let out = common::run_python(
        "hf_reference.py",
        &[
            "check",
            "--model",
            ours.to_str().unwrap(),
            "--reference",
            hf.join("reference.safetensors").to_str().unwrap(),
        ],
    );
    assert!(out.contains("max_abs_diff"), "{out}");
}

#[test]
fn mistral_logits_match_transformers_sharded() {
    conformance("mistral", 64, &[]);
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    // 13 tokens, window 5: the window really cuts attention.
    conformance("mistral", 0, &["--sliding-window", "5"]);
}

#[test]
fn llama_logits_match_transformers_tied_single_file() {
    conformance("llama", 0, &[]);
}

#[test]
fn bf16_forward_runs_and_stays_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    common::run_python(
        "hf_reference.py",
        &["make", "--arch", "mistral", "--out", hf.to_str().unwrap()],
    );
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(hf.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let cfg = ModelConfig::from_file(&hf.join("config.json")).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &cfg);
    vs.set_kind(Kind::BFloat16);
    load_model_dir(&hf, &vs, &cfg).unwrap();
    let ids = &reference["input_ids"];
    let positions = Tensor::arange(13, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .expand([2, 13], false);
    let logits = tch::no_grad(|| model.forward(ids, &positions, &AttentionLayout::Causal));
    assert_eq!(logits.kind(), Kind::BFloat16);
    let diff = (logits.to_kind(Kind::Float) - &reference["logits"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 0.1, "bf16 drifted from fp32 by {diff}");
}
