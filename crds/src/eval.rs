//! `JanusEvalJob`: generate answers for a benchmark (Multifaceted Bench) with system
//! messages and grade them with a judge model (docs/design.md, "Evaluation flow").
//!
//! The operator runs `worker.replicas` generation pods (`janus eval generate`, shard i of
//! N), then one judge pod (`janus eval judge`, then `janus eval score`), all reading the
//! [`crate::config::EvalConfig`] it renders from this resource. Every default here is the
//! protocol's default of that config ([`crate::config::EvalConfig::janus_bench`]), so the two cannot
//! drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::eval::JudgeSection;
pub use crate::pods::PodPhase;
use crate::training::{CleanPodPolicy, Dtype, OutputSpec, PromptFormat, SecretRef};
use crate::url::StorageUrl;

/// Longest job name: it is the value of the `janus.dev/eval-job` label of the pods.
pub const MAX_NAME_LENGTH: usize = 63;

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
    doc = "Evaluation of a model on a Multifaceted-Bench-style benchmark: generation pods answer every item, one judge pod grades each (answer, rubric) pair with a judge model and scores the results.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.scores.mean"),
    printcolumn(
        name = "Win+Tie",
        type_ = "number",
        json_path = ".status.scores.versusBaseline.winPlusTie"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("metadata.name must be at most 63 characters (it is the janus.dev/eval-job label of the pods)"),
    validation = Rule::new("!has(self.spec.baseline) || !has(self.spec.baseline.evalJob) || self.spec.baseline.evalJob != self.metadata.name")
        .message("spec.baseline.evalJob cannot name the job itself")
)]
#[serde(rename_all = "camelCase")]
pub struct JanusEvalJobSpec {
    /// The model to evaluate: a URL, or a `JanusTrainingJob` whose output it waits for.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.model is immutable"))]
    pub model: EvalModelSpec,
    /// The benchmark file (records with system, prompt, reference answer and rubrics).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.benchmark is immutable"))]
    pub benchmark: BenchmarkSpec,
    /// Sampling settings; defaults are the Janus evaluation's.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.generation is immutable"))]
    pub generation: GenerationSpec,
    /// The judge model that grades each (response, rubric) pair.
    pub judge: JudgeSpec,
    /// Scores of another evaluation to compare with (win / tie / lose per item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.baseline is immutable"))]
    pub baseline: Option<BaselineSpec>,
    /// Where answers, grades and scores go: `<url>/<namespace>/<job>/` receives
    /// `answers/shard-<i>.jsonl`, `grades.jsonl`, `summary.json`, `results.json` and
    /// `report.md`.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.output is immutable"))]
    pub output: OutputSpec,
    /// Secret whose keys become environment variables of every pod (object-store
    /// credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_ref: Option<SecretRef>,
    /// The generation pods (the judge pod uses the same image and tolerations).
    pub worker: EvalWorkerSpec,
    /// Retry, deadline, clean-up and suspension policy (Kubeflow `runPolicy`).
    #[serde(default)]
    pub run_policy: EvalRunPolicy,
}

/// The model to evaluate: exactly one of `url` and `trainingJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.trainingJob)")
        .message("spec.model needs exactly one of url and trainingJob")
)]
#[serde(rename_all = "camelCase")]
pub struct EvalModelSpec {
    /// URL of a Hugging Face format directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<StorageUrl>,
    /// A `JanusTrainingJob` in this namespace: the evaluation waits until it Succeeded,
    /// then evaluates its output (`spec.output.url`); it fails if the training job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub training_job: Option<String>,
    /// `tokenizer.json` to use instead of the model directory's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_url: Option<StorageUrl>,
    /// Inference dtype.
    #[serde(default)]
    pub dtype: Dtype,
    /// Prompt format the model was trained with (the system message goes in it);
    /// default: the training job's (its `dataset.promptFormat`, else its method's
    /// recipe), or `mistral` for a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<PromptFormat>,
}

/// The benchmark.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkSpec {
    /// URL of the benchmark file (Multifaceted Bench records, JSONL or Parquet; item ids
    /// are row indices).
    pub url: StorageUrl,
    /// Evaluate only the first this many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub limit: Option<u32>,
}

/// Sampling settings: the eval config's `generation` section, declared there once
/// (defaults: the Janus evaluation's).
pub use crate::config::eval::GenerationSpec;
/// The judge's settings: the eval config's `judge` section, declared there once.
pub use crate::config::eval::JudgeSettings;

/// The judge: an OpenAI-compatible chat completions endpoint, and the judge pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeSpec {
    /// Base URL of the OpenAI-compatible API (`http(s)://host/v1`).
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub endpoint: String,
    /// Model name sent to the endpoint.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.judge.model is immutable"))]
    pub model: String,
    /// Secret key holding the API key (sent as a bearer token). The judge pod waits,
    /// with the `SecretsReady` condition False, while the Secret or the key is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Runs, limits, sampling, parser and mode of the judge (the eval config's).
    #[serde(flatten)]
    pub settings: JudgeSettings,
    /// CPU / memory of the judge pod (it needs no GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the judge pod must match (the generation pods' are not inherited:
    /// the judge need not run on a GPU node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
}

impl JudgeSpec {
    /// The eval config's `judge` section of this job: its settings, its endpoint and
    /// model, and the variable the judge pod gets the API key in (when it has one).
    pub fn apply_to(&self, judge: &mut JudgeSection) {
        self.settings.apply_to(judge);
        judge.url = self.endpoint.clone();
        judge.model = self.model.clone();
        judge.api_key_env = self
            .api_key_secret_ref
            .as_ref()
            .map(|_| crate::contract::env::JUDGE_API_KEY.to_string());
    }
}

/// A key of a Secret in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What to compare with: exactly one of `evalJob` and `resultsUrl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.evalJob) != has(self.resultsUrl)")
        .message("spec.baseline needs exactly one of evalJob and resultsUrl")
)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSpec {
    /// A `JanusEvalJob` in the same namespace (for example the base model's): the
    /// judge pod waits until it Succeeded and compares with its `results.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub eval_job: Option<String>,
    /// Or the URL of another evaluation's `results.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_url: Option<StorageUrl>,
}

/// The generation pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.replicas == oldSelf.replicas").message("spec.worker.replicas is immutable (the bench is sharded by it)")
)]
#[serde(rename_all = "camelCase")]
pub struct EvalWorkerSpec {
    /// Generation pods: pod i of N answers shard i of the bench (split by item id) and
    /// writes `answers/shard-<i>.jsonl`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.worker.replicas must be >= 1"))]
    pub replicas: i32,
    /// Container image with the `janus` binary.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// GPUs per generation pod (`nvidia.com/gpu`); 0 generates on CPU.
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus_per_worker: i32,
    /// CPU / memory requests and limits of a generation pod (the GPUs come from
    /// `gpusPerWorker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the generation pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of every pod of the job (generation and judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the generation pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of every pod of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn default_replicas() -> i32 {
    1
}
fn default_gpus() -> i32 {
    1
}

/// Retry, deadline and clean-up policy (Kubeflow `runPolicy`). Pods are retried one by
/// one (a generation shard or the judge), each resuming from what the output holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalRunPolicy {
    /// Pod failures (a retryable exit code, an eviction), over all pods of the job,
    /// retried before the job is Failed (BackoffLimitExceeded). Exit code 64 (bad
    /// input) fails the job at once.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10000))]
    pub backoff_limit: i32,
    /// Seconds the evaluation may run (since its first pod was created, or since it
    /// resumed) before it is Failed with DeadlineExceeded. Waiting for the model does not
    /// count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::contract::MAX_SECONDS))]
    pub active_deadline_seconds: Option<i64>,
    /// Delete the job this many seconds after it Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = crate::contract::MAX_SECONDS))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Delete the pods and keep the output; false resumes from it (Kueue admits jobs by
    /// flipping this field).
    #[serde(default)]
    pub suspend: bool,
    /// Which pods are deleted when the job finishes.
    #[serde(default)]
    pub clean_pod_policy: CleanPodPolicy,
    /// Seconds a pod may take from its creation until it runs; past it the evaluation
    /// Fails with reason `SchedulingTimeout`, quoting why the pod waits (the scheduler's
    /// or the kubelet's words). Unset: wait as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::contract::MAX_SECONDS))]
    pub scheduling_timeout_seconds: Option<i64>,
    /// Seconds a pod's node may be NotReady or unreachable (its `Ready` condition not
    /// `True`, or the `node.kubernetes.io/unreachable` / `not-ready` taint) before the
    /// pod is created again without counting towards `backoffLimit`, naming the node.
    /// On an unreachable node (`Ready=Unknown`; reason `NodeUnreachable`) it is
    /// force-deleted first, as it is at once on a node tainted
    /// `node.kubernetes.io/out-of-service`: no kubelet confirms its deletion, and the
    /// new pod reuses its name. On a NotReady node (`Ready=False`: its kubelet reports;
    /// reason `NodeNotReady`) it is deleted with its grace period, never forced, and the
    /// new pod waits until it is gone.
    #[serde(default = "crate::pods::default_unreachable_node_toleration")]
    #[schemars(range(min = 1, max = 86400))]
    pub unreachable_node_toleration_seconds: i64,
}

fn default_backoff_limit() -> i32 {
    3
}

impl Default for EvalRunPolicy {
    fn default() -> Self {
        EvalRunPolicy {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            suspend: false,
            clean_pod_policy: CleanPodPolicy::default(),
            scheduling_timeout_seconds: None,
            unreachable_node_toleration_seconds: crate::pods::default_unreachable_node_toleration(),
        }
    }
}

/// Lifecycle phase of an evaluation: the stage it is in (conditions say why it waits).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EvalPhase {
    /// Waiting for the model (a training job), a Secret, or the first generation pod.
    #[default]
    Pending,
    /// Generation pods are answering the bench.
    Generating,
    /// Every shard is generated; the judge pod grades and scores.
    Judging,
    /// Suspended: no pods; resumes from the output.
    Suspended,
    /// Scores are in `status.scores`.
    Succeeded,
    /// Failed for the reason in the Failed condition.
    Failed,
}

impl EvalPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            EvalPhase::Pending => "Pending",
            EvalPhase::Generating => "Generating",
            EvalPhase::Judging => "Judging",
            EvalPhase::Suspended => "Suspended",
            EvalPhase::Succeeded => "Succeeded",
            EvalPhase::Failed => "Failed",
        }
    }

    pub const ALL: [EvalPhase; 6] = [
        EvalPhase::Pending,
        EvalPhase::Generating,
        EvalPhase::Judging,
        EvalPhase::Suspended,
        EvalPhase::Succeeded,
        EvalPhase::Failed,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, EvalPhase::Succeeded | EvalPhase::Failed)
    }
}

/// Condition types of an evaluation.
pub mod condition {
    pub const CREATED: &str = "Created";
    /// False while a pod the current stage needs cannot start or was refused (the
    /// reasons of [`crate::pods::reason`], as for a training job's workers); True once
    /// those pods run again. Absent while no pod was ever stuck.
    pub use crate::pods::condition::RUNNING;
    /// The model is known (True) or still awaited (False, with the reason).
    pub const MODEL_READY: &str = "ModelReady";
    /// The baseline evaluation (`spec.baseline.evalJob`) has its results.
    pub const BASELINE_READY: &str = "BaselineReady";
    /// The Secrets the pods use exist and hold the named keys.
    pub const SECRETS_READY: &str = "SecretsReady";
    /// Every generation shard is done.
    pub const GENERATED: &str = "Generated";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// Condition and Event reasons (CamelCase constants tests match on).
pub mod reason {
    pub use crate::pods::reason::*;
    pub const JOB_CREATED: &str = "JobCreated";
    /// `spec.model.url` names the model.
    pub const MODEL_URL: &str = "ModelUrl";
    pub const WAITING_FOR_TRAINING_JOB: &str = "WaitingForTrainingJob";
    pub const TRAINING_JOB_NOT_FOUND: &str = "TrainingJobNotFound";
    pub const TRAINING_JOB_SUCCEEDED: &str = "TrainingJobSucceeded";
    pub const TRAINING_JOB_FAILED: &str = "TrainingJobFailed";
    pub const WAITING_FOR_BASELINE: &str = "WaitingForBaseline";
    pub const BASELINE_NOT_FOUND: &str = "BaselineNotFound";
    pub const BASELINE_SUCCEEDED: &str = "BaselineSucceeded";
    pub const BASELINE_FAILED: &str = "BaselineFailed";
    pub const SECRETS_FOUND: &str = "SecretsFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    /// Every generation pod of the job is running.
    pub const GENERATION_RUNNING: &str = "GenerationRunning";
    /// The pods of the current stage run again after one could not start (Running=True).
    pub const PODS_RUNNING: &str = "PodsRunning";
    pub const ALL_SHARDS_GENERATED: &str = "AllShardsGenerated";
    pub const JUDGE_STARTED: &str = "JudgeStarted";
    /// A pod failed with a retryable exit code; it is recreated and resumes.
    pub const POD_FAILED: &str = "PodFailed";
    /// A pod was evicted; it is recreated and resumes.
    pub const POD_EVICTED: &str = "PodEvicted";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const NON_RETRYABLE_EXIT: &str = "NonRetryableExit";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const JOB_SUSPENDED: &str = "JobSuspended";
    pub const JOB_RESUMED: &str = "JobResumed";
    /// The judge pod finished and reported the scores.
    pub const SCORES_REPORTED: &str = "ScoresReported";
    /// The judge pod exited 0 without reporting scores on its annotation.
    pub const SCORES_MISSING: &str = "ScoresMissing";
    /// The spec renders into an eval config that `janus eval` refuses (the message
    /// names the key).
    pub const INVALID_CONFIG: &str = "InvalidConfig";
}

/// Observed state of a `JanusEvalJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JanusEvalJobStatus {
    /// Pending, Generating, Judging, Suspended, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EvalPhase>,
    /// Created, ModelReady, BaselineReady, SecretsReady, Generated, Suspended,
    /// Succeeded, Failed (with reason and message).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The model evaluated, once known (`spec.model.url`, or the training job's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_url: Option<String>,
    /// The prompt format the answers are generated with, once the model is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<PromptFormat>,
    /// The baseline's `results.json`, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_results_url: Option<String>,
    /// Where this evaluation writes: `<spec.output.url>/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    /// The generation pods, one per shard.
    #[serde(default)]
    pub shards: Vec<ShardStatus>,
    /// The judge pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeStatus>,
    /// Pods recreated after a retryable failure so far (bounded by `backoffLimit`).
    #[serde(default)]
    pub restarts: i32,
    /// Items generated and calls judged, mirrored from the pods' `janus.dev/eval-progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<EvalProgress>,
    /// Scores, once the judge pod reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<EvalScores>,
    /// When the first pod was created (or the job resumed); `activeDeadlineSeconds`
    /// counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One generation shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard index i (`JANUS_NODE_RANK`); its pod is `<job>-generate-<i>`.
    pub index: i32,
    /// Pods of this shard recreated after a failure (the current pod's attempt).
    #[serde(default)]
    pub attempt: i32,
    #[serde(default)]
    pub phase: PodPhase,
    /// Items answered, as the pod last reported.
    #[serde(default)]
    pub items_done: u64,
    /// Items of this shard to answer, as the pod last reported.
    #[serde(default)]
    pub items_total: u64,
}

/// The judge pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeStatus {
    /// Judge pods recreated after a failure (the current pod's attempt).
    #[serde(default)]
    pub attempt: i32,
    #[serde(default)]
    pub phase: PodPhase,
    /// `judge` or `score`, as the pod last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// Evaluation progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvalProgress {
    /// Items answered over all shards.
    pub items_generated: u64,
    /// Items in the bench (after `limit`), over the shards that reported.
    pub items_total: u64,
    /// Judge calls answered (with a score or counted as failures).
    #[serde(default)]
    pub calls_judged: u64,
    /// Judge calls to make (items x rubrics x runs).
    #[serde(default)]
    pub calls_total: u64,
    /// Judge answers without a parsable 1-5 score after the retries.
    #[serde(default)]
    pub judge_failures: u64,
    /// When the newest report was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// The status' scores are the judge pod's report as it is (one type, defined with the
/// report the trainer writes).
pub use crate::progress::{EvalScores, HeadToHead};

impl JanusEvalJob {
    /// Current phase (Pending before the first status write).
    pub fn phase(&self) -> EvalPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EvalConfig;

    /// The CRD's defaults are the eval config's protocol defaults (one definition).
    #[test]
    fn defaults_are_the_protocol_defaults_of_the_eval_config() {
        let spec: JanusEvalJobSpec = serde_json::from_value(serde_json::json!({
            "model": {"url": "s3://m"},
            "benchmark": {"url": "s3://b/bench.jsonl"},
            "judge": {"endpoint": "http://judge/v1", "model": "gpt-4-turbo"},
            "output": {"url": "s3://out"},
            "worker": {"image": "i"}
        }))
        .unwrap();
        let p = EvalConfig::janus_bench();
        let g = &spec.generation;
        assert_eq!(
            (g.temperature, g.top_p, g.repetition_penalty),
            (
                p.generation.temperature,
                p.generation.top_p,
                p.generation.repetition_penalty
            )
        );
        assert_eq!(g.max_new_tokens as usize, p.generation.max_new_tokens);
        assert_eq!(g.seed, p.generation.seed);
        assert_eq!(g.batch_size as usize, p.generation.batch_size);
        assert_eq!(spec.generation, GenerationSpec::default());
        let j = &spec.judge.settings;
        assert_eq!(j.runs as usize, p.judge.runs);
        assert_eq!(j.concurrency as usize, p.judge.concurrency);
        assert_eq!(j.requests_per_minute, p.judge.requests_per_minute);
        assert_eq!(j.timeout_seconds, p.judge.timeout_seconds);
        assert_eq!(j.max_retries as usize, p.judge.max_retries);
        assert_eq!(j.max_parse_retries as usize, p.judge.max_parse_retries);
        assert_eq!(j.show_system, p.judge.show_system);
        assert_eq!(j.max_tokens as usize, p.judge.max_tokens);
        assert_eq!(spec.worker.replicas, 1);
        assert_eq!(spec.run_policy, EvalRunPolicy::default());
    }

    #[test]
    fn the_schema_carries_the_cel_rules_naming_their_fields() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_string(&JanusEvalJob::crd()).unwrap();
        for msg in [
            "spec.model needs exactly one of url and trainingJob",
            "spec.baseline needs exactly one of evalJob and resultsUrl",
            "spec.baseline.evalJob cannot name the job itself",
            "spec.worker.replicas must be >= 1",
            "spec.worker.replicas is immutable",
            "spec.generation.topP must be in (0, 1]",
            "spec.judge.model is immutable",
        ] {
            assert!(crd.contains(msg), "missing rule {msg}");
        }
    }
}
