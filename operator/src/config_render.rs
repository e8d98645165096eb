//! Renders a job's training fields into the trainer's config document (the
//! `TrainConfig` of `trainer/src/config.rs`, which rejects unknown keys), with every
//! hyperparameter resolved from the Janus recipe. Mounted from the job's ConfigMap at
//! `JANUS_CONFIG`.

use janus_crds::recipe;
use janus_crds::training::{DataFormat, Dtype, Method, PromptFormat, Truncation};
use janus_crds::JanusTrainingJob;
use kube::ResourceExt;
use serde::Serialize;

/// Distributed settings the CR does not expose (trainer defaults).
const BUCKET_MIB: u64 = 25;
const RENDEZVOUS_TIMEOUT_SECONDS: u64 = 1800;
const LOG_EVERY_STEPS: u64 = 10;
/// Blocks read and shuffled together (the trainer's preset, rendered explicitly).
const STREAMING_WINDOW_BLOCKS: u32 = 4;
/// Windows fetched ahead of the one being trained on.
const STREAMING_PREFETCH_WINDOWS: u32 = 2;

#[derive(Debug, Serialize)]
pub struct TrainerConfig {
    pub job: String,
    pub method: &'static str,
    pub model: ModelSection,
    pub data: DataSection,
    pub hyperparameters: HyperparametersSection,
    pub checkpoint: CheckpointSection,
    pub distributed: DistributedSection,
    pub output_dir: String,
    pub log_every_steps: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelSection {
    pub path: String,
    pub tokenizer: Option<String>,
    pub dtype: &'static str,
    pub device: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DataSection {
    pub train: Vec<String>,
    pub prompt_format: &'static str,
    pub max_seq_len: u32,
    pub packing: bool,
    pub truncation: &'static str,
    pub min_response_tokens: u32,
    pub skip_bad_records: bool,
    pub streaming: StreamingSection,
}

/// How the trainer streams a sharded dataset (its `data.streaming`).
#[derive(Debug, Serialize)]
pub struct StreamingSection {
    pub window_blocks: u32,
    pub prefetch_windows: u32,
}

#[derive(Debug, Serialize)]
pub struct HyperparametersSection {
    pub learning_rate: f64,
    pub epochs: u32,
    pub max_steps: Option<u64>,
    pub micro_batch_size: u32,
    pub gradient_accumulation_steps: u32,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub orpo_lambda: f64,
    pub orpo_nll_on_prompt: bool,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct CheckpointSection {
    pub dir: String,
    pub every_steps: u64,
    pub keep: u32,
    pub resume: bool,
    pub retry_timeout_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct DistributedSection {
    pub backend: &'static str,
    pub bucket_mib: u64,
    pub timeout_seconds: u64,
}

/// The resolved trainer config of `job`.
pub fn trainer_config(job: &JanusTrainingJob) -> TrainerConfig {
    let spec = &job.spec;
    let h = spec.hyperparameters.resolve(spec.method);
    let prompt_format = spec
        .dataset
        .prompt_format
        .unwrap_or_else(|| recipe::prompt_format(spec.method));
    // The trainer picks the reader by extension; `format` is enforced by the API server.
    let _: DataFormat = spec.dataset.format;
    TrainerConfig {
        job: job.name_any(),
        method: match spec.method {
            Method::Sft => "sft",
            Method::Orpo => "orpo",
        },
        model: ModelSection {
            path: spec.model.url.to_string(),
            tokenizer: spec.model.tokenizer_url.as_ref().map(|u| u.to_string()),
            dtype: match spec.model.dtype {
                Dtype::Bfloat16 => "bfloat16",
                Dtype::Float32 => "float32",
            },
            device: if spec.workers.gpus_per_worker > 0 {
                "cuda"
            } else {
                "cpu"
            },
        },
        data: DataSection {
            train: spec.dataset.urls.iter().map(|u| u.to_string()).collect(),
            prompt_format: match prompt_format {
                PromptFormat::Mistral => "mistral",
                PromptFormat::Chatml => "chatml",
            },
            max_seq_len: h.max_seq_len,
            packing: h.packing,
            truncation: match spec.dataset.truncation {
                Truncation::TruncateResponse => "truncate_response",
                Truncation::Drop => "drop",
            },
            min_response_tokens: spec.dataset.min_response_tokens,
            skip_bad_records: spec.dataset.skip_bad_records,
            streaming: StreamingSection {
                window_blocks: STREAMING_WINDOW_BLOCKS,
                prefetch_windows: STREAMING_PREFETCH_WINDOWS,
            },
        },
        hyperparameters: HyperparametersSection {
            learning_rate: h.learning_rate,
            epochs: h.epochs,
            max_steps: h.max_steps,
            micro_batch_size: h.micro_batch_size,
            gradient_accumulation_steps: h.gradient_accumulation_steps,
            warmup_steps: h.warmup_steps,
            min_lr_ratio: h.min_lr_ratio,
            weight_decay: h.weight_decay,
            adam_beta1: h.adam_beta1,
            adam_beta2: h.adam_beta2,
            adam_epsilon: h.adam_epsilon,
            max_grad_norm: h.max_grad_norm,
            orpo_lambda: h.orpo_lambda,
            orpo_nll_on_prompt: h.orpo_nll_on_prompt,
            seed: h.seed,
        },
        checkpoint: CheckpointSection {
            dir: spec.checkpoint.url.to_string(),
            every_steps: spec.checkpoint.every_steps,
            keep: spec.checkpoint.keep,
            // A restarted gang always continues from the newest complete checkpoint.
            resume: true,
            retry_timeout_seconds: spec.checkpoint.retry_timeout_seconds,
        },
        distributed: DistributedSection {
            backend: "auto",
            bucket_mib: BUCKET_MIB,
            timeout_seconds: RENDEZVOUS_TIMEOUT_SECONDS,
        },
        output_dir: spec.output.url.to_string(),
        log_every_steps: LOG_EVERY_STEPS,
    }
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
        let mut job = JanusTrainingJob::new("janus-7b-sft", spec);
        job.metadata.namespace = Some("research".into());
        job.metadata.uid = Some("4f1c2d7e-0000-4000-8000-000000000001".into());
        job
    }

    const GOLDEN: &str = "tests/fixtures/trainer-config.yaml";

    /// `operator/tests/fixtures/trainer-config.yaml` is the renderer's output for the
    /// representative job; `JANUS_UPDATE_GOLDEN=1` rewrites it.
    #[test]
    fn rendered_config_matches_the_golden_file() {
        let rendered = render(&representative_job()).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        if std::env::var_os("JANUS_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            rendered == golden,
            "renderer output differs from {GOLDEN}; if the change is intended, rerun with JANUS_UPDATE_GOLDEN=1\n--- rendered ---\n{rendered}"
        );
    }

    #[test]
    fn unset_hyperparameters_come_from_the_method_recipe() {
        let mut job = representative_job();
        job.spec.method = Method::Orpo;
        job.spec.hyperparameters = Default::default();
        let c = trainer_config(&job);
        assert_eq!(c.method, "orpo");
        assert_eq!(c.hyperparameters.learning_rate, 5e-6);
        assert_eq!(c.hyperparameters.epochs, 2);
        assert_eq!(c.hyperparameters.micro_batch_size, 1);
        assert_eq!((c.data.max_seq_len, c.data.packing), (4096, false));
        assert_eq!(c.data.prompt_format, "chatml");
        assert_eq!(c.hyperparameters.orpo_lambda, 0.1);
    }

    #[test]
    fn urls_are_passed_through_and_device_follows_gpus() {
        let mut job = representative_job();
        let c = trainer_config(&job);
        assert_eq!(c.model.path, "s3://models/mistral-7b-v0.2");
        assert_eq!(c.checkpoint.dir, "s3://checkpoints");
        assert_eq!(c.output_dir, "s3://models/janus-7b-sft");
        assert_eq!(c.model.device, "cuda");
        assert!(c.checkpoint.resume);
        job.spec.workers.gpus_per_worker = 0;
        assert_eq!(trainer_config(&job).model.device, "cpu");
    }

    /// Every key the trainer requires is present and no other (its deny_unknown_fields).
    #[test]
    fn rendered_keys_are_exactly_the_trainer_config_keys() {
        let v = serde_json::to_value(trainer_config(&representative_job())).unwrap();
        let keys = |o: &serde_json::Value| {
            let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k.join(",")
        };
        assert_eq!(
            keys(&v),
            "checkpoint,data,distributed,hyperparameters,job,log_every_steps,method,model,output_dir"
        );
        assert_eq!(keys(&v["model"]), "device,dtype,path,tokenizer");
        assert_eq!(
            keys(&v["data"]),
            "max_seq_len,min_response_tokens,packing,prompt_format,skip_bad_records,streaming,train,truncation"
        );
        assert_eq!(
            v["data"]["streaming"],
            serde_json::json!({"window_blocks": 4, "prefetch_windows": 2})
        );
        assert_eq!(
            keys(&v["checkpoint"]),
            "dir,every_steps,keep,resume,retry_timeout_seconds"
        );
        assert_eq!(
            keys(&v["distributed"]),
            "backend,bucket_mib,timeout_seconds"
        );
        assert_eq!(keys(&v["hyperparameters"]).split(',').count(), 15);
    }
}
