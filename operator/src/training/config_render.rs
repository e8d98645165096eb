//! Renders a job's training fields into the trainer's config document: the very
//! `TrainConfig` the trainer parses (crds `config`), starting from the recipe preset
//! of the job's method, so every field the job leaves out has the recipe's value.
//! Mounted from the job's ConfigMap at `JANUS_CONFIG`.

use std::path::PathBuf;

use janus_crds::config::{presets, DeviceChoice, TrainConfig};
use janus_crds::training::DataFormat;
use janus_crds::JanusTrainingJob;
use kube::ResourceExt;

/// The resolved trainer config of `job`.
pub fn trainer_config(job: &JanusTrainingJob) -> TrainConfig {
    let spec = &job.spec;
    let mut c = presets::for_method(spec.method);
    c.job = job.name_any();
    spec.hyperparameters.apply_to(&mut c);
    if let Some(d) = &spec.dpo {
        d.apply_to(&mut c.dpo);
    }
    if let Some(r) = &spec.reward {
        r.apply_to(&mut c.reward);
    }
    c.model.path = PathBuf::from(spec.model.url.as_str());
    c.model.tokenizer = spec
        .model
        .tokenizer_url
        .as_ref()
        .map(|u| PathBuf::from(u.as_str()));
    c.model.dtype = spec.model.dtype;
    c.model.device = if spec.workers.gpus_per_worker > 0 {
        DeviceChoice::Cuda
    } else {
        DeviceChoice::Cpu
    };
    if let Some(g) = spec.model.gradient_checkpointing {
        c.model.gradient_checkpointing = g;
    }
    // The trainer picks the reader by extension; `format` is enforced by the API server.
    let _: DataFormat = spec.dataset.format;
    c.data.train = spec
        .dataset
        .urls
        .iter()
        .map(|u| PathBuf::from(u.as_str()).into())
        .collect();
    if let Some(f) = spec.dataset.prompt_format {
        c.data.prompt_format = f;
    }
    c.data.truncation = spec.dataset.truncation.into();
    c.data.min_response_tokens = spec.dataset.min_response_tokens as usize;
    c.data.skip_bad_records = spec.dataset.skip_bad_records;
    // `<url>/<namespace>/<name>`: same-name jobs of two namespaces keep apart, and the
    // UID tells a job from an earlier one of its name.
    c.checkpoint.dir = format!(
        "{}/{}",
        spec.checkpoint.url.as_str().trim_end_matches('/'),
        job.namespace().unwrap_or_default()
    );
    c.checkpoint.owner = job.uid();
    c.checkpoint.resume_from = spec
        .checkpoint
        .resume_from
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_string());
    c.checkpoint.every_steps = spec.checkpoint.every_steps;
    c.checkpoint.keep = spec.checkpoint.keep as usize;
    // A restarted gang always continues from the newest complete checkpoint.
    c.checkpoint.resume = true;
    c.checkpoint.retry_timeout_seconds = spec.checkpoint.retry_timeout_seconds;
    c.output_dir = PathBuf::from(spec.output.url.as_str());
    c.distributed.fabric_check = spec.fabric_check.as_ref().map(|f| f.to_trainer());
    if let Some(t) = spec.collective_timeout_seconds {
        c.distributed.timeout_seconds = t;
    }
    c
}

/// The config as the YAML document stored in the ConfigMap.
pub fn render(job: &JanusTrainingJob) -> Result<String, serde_yaml::Error> {
    let header = format!(
        "# Trainer config of JanusTrainingJob {}/{}, rendered by janus-operator.\n",
        job.namespace().unwrap_or_default(),
        job.name_any()
    );
    Ok(header + &serde_yaml::to_string(&trainer_config(job))?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use janus_crds::JanusTrainingJobSpec;

    /// The representative job of the golden file (also used by other unit tests).
    pub fn representative_job() -> JanusTrainingJob {
        let spec: JanusTrainingJobSpec = serde_yaml::from_str(
            r#"
method: sft
model:
  url: s3://models/mistral-7b-v0.2
dataset:
  urls:
    - s3://data/multifaceted-collection/train-00000.parquet
    - s3://data/multifaceted-collection/train-00001.parquet
  format: parquet
hyperparameters:
  learningRate: 1.0e-5
  maxSteps: 3000
workers:
  replicas: 4
  gpusPerWorker: 8
  image: ghcr.io/janus/trainer:0.1.0
checkpoint:
  url: s3://checkpoints
  everySteps: 250
output:
  url: s3://models/janus-7b-sft
storageSecretRef:
  name: s3-credentials
"#,
        )
        .unwrap();
        let job = JanusTrainingJob::new("janus-7b-sft", spec);
        crate::controller::testing::stored(job, "4f1c2d7e-0000-4000-8000-000000000001")
    }

    const GOLDEN: &str = "tests/fixtures/trainer-config.yaml";

    /// `operator/tests/fixtures/trainer-config.yaml` is the renderer's output for the
    /// representative job; `JANUS_UPDATE_GOLDEN=1` rewrites it.
    #[test]
    fn rendered_config_matches_the_golden_file() {
        let rendered = render(&representative_job()).unwrap();
        crate::controller::testing::assert_golden(GOLDEN, &rendered);
    }

    #[test]
    fn unset_hyperparameters_come_from_the_method_recipe() {
        let mut job = representative_job();
        job.spec.method = janus_crds::config::Method::Orpo;
        job.spec.hyperparameters = Default::default();
        let c = trainer_config(&job);
        let recipe = presets::janus_7b_orpo();
        assert_eq!(c.method, janus_crds::config::Method::Orpo);
        assert_eq!(c.hyperparameters, recipe.hyperparameters);
        assert_eq!(c.data.max_seq_len, 4096);
        assert!(!c.data.packing);
        assert_eq!(
            c.data.prompt_format,
            janus_crds::config::PromptFormat::Chatml
        );
        assert!(c.model.gradient_checkpointing);
    }

    #[test]
    fn urls_are_passed_through_and_device_follows_gpus() {
        let mut job = representative_job();
        let c = trainer_config(&job);
        assert_eq!(c.model.path, PathBuf::from("s3://models/mistral-7b-v0.2"));
        assert_eq!(c.checkpoint.dir, "s3://checkpoints/research");
        assert_eq!(
            c.checkpoint.owner.as_deref(),
            Some("4f1c2d7e-0000-4000-8000-000000000001")
        );
        assert_eq!(c.checkpoint.resume_from, None);
        assert_eq!(c.output_dir, PathBuf::from("s3://models/janus-7b-sft"));
        assert_eq!(c.model.device, DeviceChoice::Cuda);
        assert!(c.checkpoint.resume);
        job.spec.workers.gpus_per_worker = 0;
        assert_eq!(trainer_config(&job).model.device, DeviceChoice::Cpu);
    }

    /// The collective deadline comes from the job when it sets one, else the recipe's.
    #[test]
    fn the_collective_timeout_is_the_jobs_or_the_recipes() {
        let mut job = representative_job();
        assert_eq!(job.spec.collective_timeout_seconds, None);
        let recipe = trainer_config(&job).distributed.timeout_seconds;
        assert_eq!(recipe, 1800);
        job.spec.collective_timeout_seconds = Some(20);
        assert_eq!(trainer_config(&job).distributed.timeout_seconds, 20);
    }

    /// What the operator renders, the trainer accepts as it is (same type, validated).
    #[test]
    fn the_rendered_document_parses_as_the_trainer_config() {
        let text = render(&representative_job()).unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let parsed = TrainConfig::from_value(v, "rendered").unwrap();
        assert_eq!(parsed, trainer_config(&representative_job()));
    }
}
