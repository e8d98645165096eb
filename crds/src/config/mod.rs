//! The trainer config: one typed document (YAML or JSON), built from a preset and the
//! user's overrides. Unknown keys and impossible values are errors naming the key.
//!
//! This is the one definition of the document: the trainer parses it, the operator
//! renders it from a `JanusTrainingJob` (starting from the same presets), and the
//! recipe numbers of docs/method.md live only in [`presets`]. The types are in `train`,
//! the overlay of a preset, a file and overrides in `overrides`, the resolution here.

use std::path::Path;

use serde_json::Value;

mod bytes;
#[macro_use]
mod overlay;
mod error;
pub mod eval;
mod overrides;
pub mod presets;
mod prompt;
pub mod synth;
mod train;

pub use bytes::ByteSize;
pub use error::ConfigError;
use error::Result;
pub use eval::EvalConfig;
pub use overrides::{merge, parse_override};
pub use presets::{preset, PRESETS};
pub use prompt::PromptFormat;
pub use synth::SynthConfig;
pub use train::*;

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
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            doc = serde_yaml::from_str(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            if !doc.is_object() {
                return Err(ConfigError(format!(
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
                return Err(ConfigError(format!(
                    "{origin}: `preset` must be a string, found {other}"
                )))
            }
            (None, None) => "tiny".to_string(),
        };
        let mut value =
            serde_json::to_value(presets::preset(&preset_name)?).expect("a preset serializes");
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
            ConfigError(format!("{origin}: `{path}`: {}", e.into_inner()))
        })?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_validates() {
        for p in PRESETS {
            TrainConfig::resolve(Some(p), None, &[]).unwrap();
        }
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
        let e = err(&["optimizer.master_weight=true"]);
        assert!(e.contains("master_weight"), "{e}");
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
            ("method=ppo", "method"),
            ("dpo.beta=0", "dpo.beta"),
            ("dpo.label_smoothing=0.5", "dpo.label_smoothing"),
            ("dpo.loss_type=kto", "dpo.loss_type"),
            (
                "hyperparameters.micro_batch_size=-2",
                "hyperparameters.micro_batch_size",
            ),
            ("memory.limit=lots", "memory.limit"),
            ("distributed.reduce_dtype=int8", "distributed.reduce_dtype"),
        ] {
            let e = err(&[o]);
            assert!(e.contains(key), "{o}: {e}");
        }
    }

    #[test]
    fn memory_limit_takes_units() {
        let c = TrainConfig::resolve(Some("tiny"), None, &["memory.limit=80GiB".into()]).unwrap();
        assert_eq!(c.memory.limit, Some(ByteSize(80 << 30)));
    }

    #[test]
    fn file_overrides_preset_and_cli_overrides_file() {
        let dir = std::env::temp_dir().join(format!("janus-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("job.yaml");
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

        std::fs::write(&f, "data:\n  packing: maybe\n").unwrap();
        let e = TrainConfig::resolve(None, Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.yaml") && e.contains("data.packing"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn accumulation_and_checkpointing_do_not_change_the_trajectory_hash() {
        let base = TrainConfig::resolve(Some("tiny"), None, &[]).unwrap();
        let same = TrainConfig::resolve(
            Some("tiny"),
            None,
            &[
                "hyperparameters.gradient_accumulation_steps=7".into(),
                "model.gradient_checkpointing=true".into(),
                "distributed.shard_optimizer=false".into(),
                // Another job continuing this one's checkpoints.
                "job=other".into(),
                "checkpoint.owner=4f1c2d7e-0000-4000-8000-000000000002".into(),
                "checkpoint.resume_from=s3://checkpoints/research/sft".into(),
            ],
        )
        .unwrap();
        assert_eq!(base.trajectory_hash(), same.trajectory_hash());
        let other =
            TrainConfig::resolve(Some("tiny"), None, &["hyperparameters.seed=1".into()]).unwrap();
        assert_ne!(base.trajectory_hash(), other.trajectory_hash());
    }
}
