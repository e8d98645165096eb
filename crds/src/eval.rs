//! `JanusEvalJob`: generate answers for a benchmark (Multifaceted Bench) with system
//! messages and grade them with a judge model. Types only; the controller comes later.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::training::{Dtype, JobPhase, PromptFormat, SecretRef};
use crate::url::StorageUrl;

/// Spec of a `JanusEvalJob`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "janus.dev",
    version = "v1alpha1",
    kind = "JanusEvalJob",
    namespaced,
    shortname = "jej",
    category = "janus",
    status = "JanusEvalJobStatus",
    derive = "PartialEq",
    doc = "Evaluation of a model on a Multifaceted-Bench-style benchmark, graded by a judge model.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.progress.completed"
    ),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.scores.mean"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct JanusEvalJobSpec {
    /// The model to evaluate (Hugging Face format directory).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.model is immutable"))]
    pub model: EvalModelSpec,
    /// The benchmark file (records with system, prompt, reference answer and rubrics).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.benchmark is immutable"))]
    pub benchmark: BenchmarkSpec,
    /// Sampling settings; defaults are the Janus evaluation's.
    #[serde(default)]
    pub generation: GenerationSpec,
    /// The judge model that grades each (response, rubric) pair.
    pub judge: JudgeSpec,
    /// Scores of another evaluation to compare with (win / tie / lose per item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSpec>,
    /// Where answers, grades and the score summary go.
    pub output: crate::training::OutputSpec,
    /// Secret whose keys become environment variables (object-store credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_ref: Option<SecretRef>,
    /// The evaluation pod.
    pub worker: EvalWorkerSpec,
}

/// The model to evaluate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalModelSpec {
    /// URL of a Hugging Face format directory.
    pub url: StorageUrl,
    /// Inference dtype.
    #[serde(default)]
    pub dtype: Dtype,
    /// Prompt format the model was trained with.
    #[serde(default = "default_prompt_format")]
    pub prompt_format: PromptFormat,
}

fn default_prompt_format() -> PromptFormat {
    PromptFormat::Mistral
}

/// The benchmark.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkSpec {
    /// URL of the benchmark file (JSONL or Parquet).
    pub url: StorageUrl,
    /// Evaluate only the first this many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// Sampling settings (defaults: the Janus evaluation).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    /// Sampling temperature (0 = greedy).
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.0))]
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1].
    #[serde(default = "default_top_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f64,
    /// Repetition penalty (1 = none).
    #[serde(default = "default_repetition_penalty")]
    #[schemars(range(min = 1.0))]
    pub repetition_penalty: f64,
    /// Most tokens generated per answer.
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: u32,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
}

fn default_temperature() -> f64 {
    1.0
}
fn default_top_p() -> f64 {
    0.9
}
fn default_repetition_penalty() -> f64 {
    1.03
}
fn default_max_new_tokens() -> u32 {
    1024
}

impl Default for GenerationSpec {
    fn default() -> Self {
        GenerationSpec {
            temperature: default_temperature(),
            top_p: default_top_p(),
            repetition_penalty: default_repetition_penalty(),
            max_new_tokens: default_max_new_tokens(),
            seed: 0,
        }
    }
}

/// The judge: an OpenAI-compatible chat completions endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeSpec {
    /// Base URL of the OpenAI-compatible API (`http://` or `https://`).
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub endpoint: String,
    /// Model name sent to the endpoint.
    #[schemars(length(min = 1))]
    pub model: String,
    /// Secret key holding the API key (sent as a bearer token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Independent grading runs to average (the paper averages 3).
    #[serde(default = "default_runs")]
    #[schemars(range(min = 1, max = 10))]
    pub runs: u32,
    /// Show the judge the system message too (off in the paper).
    #[serde(default)]
    pub show_system_message: bool,
}

fn default_runs() -> u32 {
    3
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// What to compare with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSpec {
    /// A `JanusEvalJob` in the same namespace whose grades to compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_job: Option<String>,
    /// Or the URL of another run's grades file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grades_url: Option<StorageUrl>,
}

/// The evaluation pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalWorkerSpec {
    /// Container image with the `janus` binary.
    #[schemars(length(min = 1))]
    pub image: String,
    /// GPUs for generation.
    #[serde(default = "default_eval_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus: i32,
    /// CPU / memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pod must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

fn default_eval_gpus() -> i32 {
    1
}

/// Observed state of a `JanusEvalJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JanusEvalJobStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Standard conditions with reason and message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Items generated and graded so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<EvalProgress>,
    /// Scores, once grading finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<EvalScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Evaluation progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalProgress {
    /// Items fully graded.
    pub completed: u32,
    /// Items in the benchmark (after `limit`).
    pub total: u32,
    /// Judge answers without a parsable 1-5 score.
    #[serde(default)]
    pub judge_parse_failures: u32,
}

/// Scores (1-5 scale).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalScores {
    /// Mean over items of the per-item mean over rubrics.
    pub mean: f64,
    /// Mean per rubric dimension (style, background_knowledge, ...).
    #[serde(default)]
    pub per_dimension: BTreeMap<String, f64>,
    /// Against the baseline: fraction of items won, tied, lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_baseline: Option<HeadToHead>,
}

/// Head-to-head result against the baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadToHead {
    pub win: f64,
    pub tie: f64,
    pub lose: f64,
}
