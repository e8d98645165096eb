//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use janus::model::ModelConfig;
use janus::sample::{self, TokenizerSource};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The project venv's Python (or `JANUS_PYTHON`), which has torch and transformers.
pub fn python() -> PathBuf {
    let p = std::env::var_os("JANUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run the tests with `make test`, which creates the venv",
        p.display()
    );
    p
}

/// Run a script under tests/python; returns stdout, panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python starts");
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

pub fn janus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_janus"))
}

/// Sample data and a tiny random model with a trained tokenizer under `dir`.
pub fn tiny_setup(dir: &Path, instructions: usize) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    sample::write_sample_data(&data, instructions, 0).unwrap();
    let model = dir.join("model");
    let values: Vec<serde_json::Value> = janus::data::read_rows(&data.join("sft.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    let corpus = sample::tokenizer_corpus(&values);
    let cfg = ModelConfig::small("mistral", 512, 64, 136, 2, 4, 2);
    sample::init_model(
        &model,
        cfg,
        TokenizerSource::Train {
            corpus,
            vocab_size: 512,
        },
        tch::Kind::Float,
        0,
    )
    .unwrap();
    (data, model)
}

/// `key=value` overrides for a short tiny run in `dir`.
pub fn tiny_overrides(dir: &Path, model: &Path, train: &Path, extra: &[&str]) -> Vec<String> {
    let mut o = vec![
        format!("model.path={}", model.display()),
        format!("data.train=[{}]", train.display()),
        format!("checkpoint.dir={}", dir.join("ckpt").display()),
        format!("output_dir={}", dir.join("out").display()),
        "data.max_seq_len=128".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

pub fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
