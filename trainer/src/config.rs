//! The trainer config: one typed document (YAML or JSON), built from a preset and the
//! user's overrides. Unknown keys and impossible values are errors naming the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::PromptFormat;
use crate::error::{Error, Result};

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning on (system, prompt, output) records.
    Sft,
    /// Odds-ratio preference optimisation on (system, prompt, chosen, rejected) records.
    Orpo,
}

/// Parameter dtype for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Bfloat16,
}

impl Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::Float32 => tch::Kind::Float,
            Dtype::Bfloat16 => tch::Kind::BFloat16,
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// What to do with an example longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the whole prompt and cut the end of the response. Examples whose prompt
    /// leaves fewer than `min_response_tokens` for the response are dropped instead.
    TruncateResponse,
    /// Drop every example that does not fit.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Job name; checkpoints go to `<checkpoint.dir>/<job>/step-<N>`.
    pub job: String,
    pub method: Method,
    pub model: ModelSection,
    pub data: DataSection,
    pub hyperparameters: Hyperparameters,
    pub checkpoint: CheckpointSection,
    pub distributed: DistributedSection,
    /// Directory that receives the final model in Hugging Face format.
    pub output_dir: PathBuf,
    /// Log a line (or update the progress bar's message) every this many steps.
    pub log_every_steps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    pub path: PathBuf,
    /// `tokenizer.json` to use; defaults to the one in the model directory.
    pub tokenizer: Option<PathBuf>,
    pub dtype: Dtype,
    pub device: DeviceChoice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training files (JSONL or Parquet, chosen by extension).
    pub train: Vec<PathBuf>,
    pub prompt_format: PromptFormat,
    /// Tokens per sequence (per packed row when packing).
    pub max_seq_len: usize,
    /// Pack several SFT examples into each row (no attention across examples).
    pub packing: bool,
    pub truncation: Truncation,
    /// With `truncate_response`, the fewest response tokens an example must keep.
    pub min_response_tokens: usize,
    /// Skip malformed records (counted and logged) instead of failing.
    pub skip_bad_records: bool,
    /// How a sharded dataset (`janus data shard` output) is streamed.
    pub streaming: StreamingSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingSection {
    /// Blocks (about 1 MiB of records each) read together and shuffled together.
    pub window_blocks: usize,
    /// Windows fetched ahead of the one being trained on (memory: window x (1 + this)).
    pub prefetch_windows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    pub learning_rate: f64,
    pub epochs: u64,
    /// Stop after this many optimizer steps (the schedule is sized for it) when set.
    pub max_steps: Option<u64>,
    pub micro_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub warmup_steps: u64,
    /// The cosine schedule decays to `learning_rate * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 disables it.
    pub max_grad_norm: f64,
    /// ORPO's lambda: weight of the odds-ratio term.
    pub orpo_lambda: f64,
    /// ORPO's NLL term over prompt + response tokens (as TRL does) instead of the
    /// response only (as the Janus recipe's loss masking does).
    pub orpo_nll_on_prompt: bool,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Where checkpoints go: a path or a URL (`s3://`, `gs://`, `az://`, `file://`).
    pub dir: String,
    /// Save every this many optimizer steps (0: only at the end).
    pub every_steps: u64,
    /// Keep the newest this many checkpoints (0: keep all).
    pub keep: usize,
    /// Resume from the newest complete checkpoint of this job when one exists.
    pub resume: bool,
    /// How long one storage request is retried (timeouts, 5xx) before the run fails
    /// with the retryable exit code.
    pub retry_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// `nccl` (CUDA), `ring` (TCP, CPU tensors) or `auto`: NCCL on GPUs, the ring on CPUs.
    pub backend: Backend,
    /// Gradients are all-reduced in buckets of about this many MiB.
    pub bucket_mib: usize,
    /// How long a rank waits for the others (rendezvous, collectives) before failing.
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Nccl,
    Ring,
}

/// Named starting points. Users override any key on top of one.
pub const PRESETS: &[&str] = &["tiny", "janus-7b-sft", "janus-7b-orpo"];

fn preset_value(name: &str) -> Result<Value> {
    let recipe_sft = serde_json::json!({
        "learning_rate": 5e-6, "epochs": 4, "max_steps": null,
        "micro_batch_size": 2, "gradient_accumulation_steps": 4, "warmup_steps": 10,
        "min_lr_ratio": 0.0, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "orpo_lambda": 0.1,
        "orpo_nll_on_prompt": false, "seed": 42
    });
    let mut v = serde_json::json!({
        "job": "local",
        "method": "sft",
        "model": {"path": "models/mistral-7b-v0.2", "tokenizer": null, "dtype": "bfloat16", "device": "auto"},
        "data": {
            "train": ["data/multifaceted-collection.parquet"], "prompt_format": "mistral",
            "max_seq_len": 8192, "packing": true, "truncation": "truncate_response",
            "min_response_tokens": 16, "skip_bad_records": false,
            "streaming": {"window_blocks": 4, "prefetch_windows": 2}
        },
        "hyperparameters": recipe_sft,
        "checkpoint": {"dir": "checkpoints", "every_steps": 500, "keep": 3, "resume": true, "retry_timeout_seconds": 180},
        "distributed": {"backend": "auto", "bucket_mib": 25, "timeout_seconds": 1800},
        "output_dir": "output",
        "log_every_steps": 10
    });
    match name {
        "janus-7b-sft" => {}
        "janus-7b-orpo" => {
            merge(
                &mut v,
                serde_json::json!({
                    "method": "orpo",
                    "data": {"train": ["data/multifaceted-collection-orpo.parquet"],
                             "prompt_format": "chatml", "max_seq_len": 4096, "packing": false},
                    "hyperparameters": {"epochs": 2, "micro_batch_size": 1}
                }),
            );
        }
        "tiny" => {
            merge(
                &mut v,
                serde_json::json!({
                    "job": "tiny",
                    "model": {"path": "target/janus-demo/tiny-model", "dtype": "float32", "device": "cpu"},
                    "data": {"train": ["target/janus-demo/data/sft.parquet"], "max_seq_len": 256},
                    "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "max_steps": 40,
                                        "micro_batch_size": 4, "gradient_accumulation_steps": 2,
                                        "warmup_steps": 4, "min_lr_ratio": 0.1},
                    "checkpoint": {"dir": "target/janus-demo/checkpoints", "every_steps": 20, "keep": 2},
                    "output_dir": "target/janus-demo/output",
                    "log_every_steps": 5
                }),
            );
        }
        other => {
            return Err(Error::Config(format!(
                "unknown preset `{other}` (known: {})",
                PRESETS.join(", ")
            )))
        }
    }
    Ok(v)
}

/// Recursively overlay `patch` on `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, pv) in p {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_object() && pv.is_object() => merge(bv, pv),
                    _ => {
                        b.insert(k, pv);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// Parse `a.b.c=value` into a nested object; the value is read as YAML so numbers,
/// booleans and lists keep their types.
pub fn parse_override(s: &str) -> Result<Value> {
    let (key, raw) = s.split_once('=').ok_or_else(|| {
        Error::Config(format!("override `{s}` is not of the form key.path=value"))
    })?;
    let value: Value = serde_yaml::from_str(raw)
        .map_err(|e| Error::Config(format!("override `{key}`: value `{raw}`: {e}")))?;
    let mut out = value;
    for part in key.split('.').rev() {
        if part.is_empty() {
            return Err(Error::Config(format!(
                "override `{s}` has an empty key segment"
            )));
        }
        let mut m = serde_json::Map::new();
        m.insert(part.to_string(), out);
        out = Value::Object(m);
    }
    Ok(out)
}

impl TrainConfig {
    /// Resolve a config: preset (from `preset` or the file's `preset:` key, default
    /// `tiny`), then the file, then `key=value` overrides, then validation.
    pub fn resolve(
        preset: Option<&str>,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self> {
        let mut doc = Value::Object(Default::default());
        let mut origin = "the resolved config".to_string();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            doc = serde_yaml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if !doc.is_object() {
                return Err(Error::Config(format!(
                    "{}: expected a mapping at the top level",
                    path.display()
                )));
            }
            origin = path.display().to_string();
        }
        let file_preset = doc.as_object_mut().and_then(|m| m.remove("preset"));
        let preset_name = match (preset, &file_preset) {
            (Some(p), _) => p.to_string(),
            (None, Some(Value::String(p))) => p.clone(),
            (None, Some(other)) => {
                return Err(Error::Config(format!(
                    "{origin}: `preset` must be a string, found {other}"
                )))
            }
            (None, None) => "tiny".to_string(),
        };
        let mut value = preset_value(&preset_name)?;
        merge(&mut value, doc);
        for o in overrides {
            merge(&mut value, parse_override(o)?);
            origin = format!("{origin} (with overrides)");
        }
        Self::from_value(value, &origin)
    }

    /// Deserialize a complete document (as mounted by the operator) and validate it.
    pub fn from_value(value: Value, origin: &str) -> Result<Self> {
        let cfg: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            Error::Config(format!("{origin}: `{path}`: {}", e.into_inner()))
        })?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Check values that parse but cannot train. Messages name the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let h = &self.hyperparameters;
        let checks: [(bool, &str, String); 14] = [
            (
                !self.job.is_empty()
                    && self
                        .job
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
                "job",
                format!(
                    "must be a non-empty name of [A-Za-z0-9._-], found `{}`",
                    self.job
                ),
            ),
            (
                h.learning_rate > 0.0 && h.learning_rate.is_finite(),
                "hyperparameters.learning_rate",
                format!("must be > 0, found {}", h.learning_rate),
            ),
            (
                h.micro_batch_size >= 1,
                "hyperparameters.micro_batch_size",
                "must be >= 1, found 0".into(),
            ),
            (
                h.gradient_accumulation_steps >= 1,
                "hyperparameters.gradient_accumulation_steps",
                "must be >= 1, found 0".into(),
            ),
            (
                h.epochs >= 1 || h.max_steps.is_some(),
                "hyperparameters.epochs",
                "must be >= 1 (or set max_steps)".into(),
            ),
            (
                h.max_steps != Some(0),
                "hyperparameters.max_steps",
                "must be >= 1 when set, found 0".into(),
            ),
            (
                (0.0..=1.0).contains(&h.min_lr_ratio),
                "hyperparameters.min_lr_ratio",
                format!("must be in [0, 1], found {}", h.min_lr_ratio),
            ),
            (
                h.weight_decay >= 0.0,
                "hyperparameters.weight_decay",
                format!("must be >= 0, found {}", h.weight_decay),
            ),
            (
                (0.0..1.0).contains(&h.adam_beta1) && (0.0..1.0).contains(&h.adam_beta2),
                "hyperparameters.adam_beta1/adam_beta2",
                format!(
                    "must be in [0, 1), found {} and {}",
                    h.adam_beta1, h.adam_beta2
                ),
            ),
            (
                h.adam_epsilon > 0.0 && h.max_grad_norm >= 0.0 && h.orpo_lambda >= 0.0,
                "hyperparameters.adam_epsilon/max_grad_norm/orpo_lambda",
                "adam_epsilon must be > 0; max_grad_norm and orpo_lambda >= 0".into(),
            ),
            (
                !self.data.train.is_empty(),
                "data.train",
                "must list at least one file".into(),
            ),
            (
                self.data.streaming.window_blocks >= 1,
                "data.streaming.window_blocks",
                "must be >= 1".into(),
            ),
            (
                self.data.max_seq_len >= MIN_SEQ_LEN,
                "data.max_seq_len",
                format!("must be >= {MIN_SEQ_LEN}, found {}", self.data.max_seq_len),
            ),
            (
                self.distributed.bucket_mib >= 1 && self.distributed.timeout_seconds >= 1,
                "distributed.bucket_mib/timeout_seconds",
                "must both be >= 1".into(),
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                return Err(format!("`{key}` {msg}"));
            }
        }
        if self.method == Method::Orpo && self.data.packing {
            return Err("`data.packing` is not supported with method `orpo` (pairs are scored per sequence); set it to false".into());
        }
        Ok(())
    }

    /// A stable hash of everything that changes the trajectory of training, so a
    /// resume with a different config is caught.
    pub fn trajectory_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut v = serde_json::to_value(self).expect("config serializes");
        // Where things are written, how often we log, and how many to keep do not
        // change the weights.
        if let Value::Object(m) = &mut v {
            for k in ["output_dir", "log_every_steps"] {
                m.remove(k);
            }
            m.remove("distributed");
            if let Some(Value::Object(s)) = m.get_mut("data").and_then(|d| d.get_mut("streaming")) {
                s.remove("prefetch_windows");
            }
            if let Some(Value::Object(c)) = m.get_mut("checkpoint") {
                c.remove("keep");
                c.remove("retry_timeout_seconds");
                c.remove("resume");
                c.remove("dir");
            }
        }
        hex::encode(Sha256::digest(v.to_string().as_bytes()))[..16].to_string()
    }
}

/// No prompt format fits in fewer tokens than this with room for a response.
pub const MIN_SEQ_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_validates() {
        for p in PRESETS {
            TrainConfig::resolve(Some(p), None, &[]).unwrap();
        }
    }

    #[test]
    fn recipe_presets_match_the_paper() {
        let sft = TrainConfig::resolve(Some("janus-7b-sft"), None, &[]).unwrap();
        let h = &sft.hyperparameters;
        assert_eq!(
            (
                h.learning_rate,
                h.epochs,
                h.micro_batch_size,
                h.gradient_accumulation_steps
            ),
            (5e-6, 4, 2, 4)
        );
        assert_eq!(
            (sft.data.max_seq_len, sft.data.packing, h.warmup_steps),
            (8192, true, 10)
        );
        let orpo = TrainConfig::resolve(Some("janus-7b-orpo"), None, &[]).unwrap();
        assert_eq!(orpo.method, Method::Orpo);
        assert_eq!(
            (
                orpo.hyperparameters.epochs,
                orpo.data.max_seq_len,
                orpo.data.packing
            ),
            (2, 4096, false)
        );
        assert_eq!(orpo.hyperparameters.orpo_lambda, 0.1);
        assert_eq!(orpo.data.prompt_format, PromptFormat::Chatml);
    }

    fn err(overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::resolve(Some("tiny"), None, &o)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        let e = err(&["hyperparameters.learning_rat=0.1"]);
        assert!(e.contains("learning_rat"), "{e}");
        let e = err(&["bogus=1"]);
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn impossible_values_are_rejected_naming_the_key() {
        for (o, key) in [
            (
                "hyperparameters.learning_rate=0",
                "hyperparameters.learning_rate",
            ),
            (
                "hyperparameters.learning_rate=-1e-5",
                "hyperparameters.learning_rate",
            ),
            (
                "hyperparameters.micro_batch_size=0",
                "hyperparameters.micro_batch_size",
            ),
            ("data.max_seq_len=4", "data.max_seq_len"),
            ("method=dpo", "method"),
            (
                "hyperparameters.micro_batch_size=-2",
                "hyperparameters.micro_batch_size",
            ),
        ] {
            let e = err(&[o]);
            assert!(e.contains(key), "{o}: {e}");
        }
    }

    #[test]
    fn file_overrides_preset_and_cli_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("job.yaml");
        std::fs::write(
            &f,
            "preset: janus-7b-orpo\nhyperparameters:\n  learning_rate: 1.0e-5\n",
        )
        .unwrap();
        let c = TrainConfig::resolve(None, Some(&f), &["hyperparameters.epochs=3".into()]).unwrap();
        assert_eq!(c.method, Method::Orpo);
        assert_eq!(c.hyperparameters.learning_rate, 1e-5);
        assert_eq!(c.hyperparameters.epochs, 3);
        assert_eq!(c.hyperparameters.micro_batch_size, 1);
    }

    #[test]
    fn a_bad_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("job.yaml");
        std::fs::write(&f, "data:\n  packing: maybe\n").unwrap();
        let e = TrainConfig::resolve(None, Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.yaml") && e.contains("data.packing"), "{e}");
    }
}
