//! `JanusTrainingJob`: a gang of trainer pods that fine-tunes a model with the Janus
//! recipe. Field names follow the Kubeflow training operator where a user would look
//! for them (`runPolicy.backoffLimit`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
//! `suspend`, `cleanPodPolicy`, `replicas`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{self as trainer, TrainConfig};
pub use crate::config::{Dtype, Method, PromptFormat};
use crate::url::StorageUrl;

/// Longest job name: it names the headless Service (a DNS-1035 label) and the pods
/// `<name>-worker-<i>`, whose hostnames must stay within 63 characters.
pub const MAX_NAME_LENGTH: usize = 48;

/// Spec of a `JanusTrainingJob`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "janus.dev",
    version = "v1alpha1",
    kind = "JanusTrainingJob",
    namespaced,
    shortname = "jtj",
    category = "janus",
    status = "JanusTrainingJobStatus",
    derive = "PartialEq",
    doc = "A Janus fine-tuning job: a gang of trainer pods, restarted together from the latest checkpoint when a worker fails.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.progress.step"),
    printcolumn(name = "Loss", type_ = "number", json_path = ".status.progress.loss"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 48 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label of at most 48 characters (it names the headless Service and the pods <name>-worker-<i>)")
)]
#[x_kube(
    validation = Rule::new("!(self.method != 'sft' && has(self.hyperparameters.packing) && self.hyperparameters.packing)")
        .message("spec.hyperparameters.packing must be false with methods orpo, dpo and reward (pairs are scored per sequence)"),
    validation = Rule::new("!has(self.dpo) || self.method == 'dpo'")
        .message("spec.dpo is only read with method dpo"),
    validation = Rule::new("!has(self.reward) || self.method == 'reward'")
        .message("spec.reward is only read with method reward"),
    validation = Rule::new("has(self.networkPolicy) == has(oldSelf.networkPolicy)")
        .message("spec.networkPolicy is immutable (it cannot be added or removed either)")
)]
#[serde(rename_all = "camelCase")]
pub struct JanusTrainingJobSpec {
    /// Training objective: `sft` (supervised fine-tuning), `orpo` (odds-ratio
    /// preference optimisation), `dpo` (direct preference optimisation against a frozen
    /// reference) or `reward` (a reward model: value head, Bradley-Terry loss).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.method is immutable"))]
    pub method: Method,
    /// The base model: a Hugging Face format directory.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.model is immutable"))]
    pub model: ModelSpec,
    /// Training data.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.dataset is immutable"))]
    pub dataset: DatasetSpec,
    /// Optimisation settings. Every field left out takes the Janus recipe's value for
    /// the method (the trainer's `janus-7b-sft` / `janus-7b-orpo` presets), resolved by
    /// the operator when it renders the config.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.hyperparameters is immutable"))]
    pub hyperparameters: Hyperparameters,
    /// DPO's settings (method `dpo`); unset fields take the recipe's (beta 0.1,
    /// sigmoid loss, precomputed reference log-probabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.dpo is immutable"))]
    pub dpo: Option<DpoSpec>,
    /// The reward model's settings (method `reward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.reward is immutable"))]
    pub reward: Option<RewardSpec>,
    /// The worker pods: one per node, each running one trainer rank per GPU.
    pub workers: WorkersSpec,
    /// Where and how often checkpoints are written; a restarted gang resumes from the
    /// newest complete one.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.checkpoint is immutable"))]
    pub checkpoint: CheckpointSpec,
    /// Where the final model goes (Hugging Face format).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.output is immutable"))]
    pub output: OutputSpec,
    /// Secret whose keys become environment variables of every worker (for example
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_ref: Option<SecretRef>,
    /// Restart, deadline, clean-up and suspension policy (Kubeflow `runPolicy`).
    #[serde(default)]
    pub run_policy: RunPolicy,
    /// Scheduler and gang (pod group) settings.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// Isolate the workers: a NetworkPolicy `<name>-workers` (owned by the job) lets
    /// only the job's own pods reach them, on any port (the rendezvous port, NCCL's and
    /// the CPU ring's sockets), and the metrics port from `metricsFrom`. It takes
    /// effect where the network plugin enforces NetworkPolicy. Left out: no policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.networkPolicy is immutable"))]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Measure the all-reduce bus bandwidth of the whole gang before the first step
    /// (each start, a restart's included) over the collective training uses: NCCL on
    /// GPUs, the TCP ring on CPUs. The figure goes to `status.fabric`, the trainers'
    /// `janus_fabric_bus_bandwidth_gbps` and the operator's metrics. Below
    /// `minBusBandwidthGBps` the job Fails (reason `FabricCheckFailed`) or warns, as
    /// `action` says. Left out: no check. A job of one rank has no fabric to measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_check: Option<FabricCheckSpec>,
    /// Seconds a rank waits for the others (the rendezvous, and each collective without
    /// progress) before it gives up and exits 75, which restarts the gang (counted). A
    /// stalled collective (a hung link, a stopped or wedged peer) so ends in this time
    /// instead of never. Left out: the trainer's `distributed.timeout_seconds` (1800).
    /// Keep it above the longest pause a healthy gang takes between two collectives (a
    /// checkpoint, an evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = crate::contract::MAX_SECONDS))]
    pub collective_timeout_seconds: Option<u64>,
}

/// The fabric check before training.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FabricCheckSpec {
    /// The least bus bandwidth in GB/s (10^9 bytes per second, nccl-tests' `busbw`) the
    /// job accepts. Left out: measure and report only.
    #[serde(
        default,
        rename = "minBusBandwidthGBps",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 0.0").message("spec.fabricCheck.minBusBandwidthGBps must be >= 0"))]
    pub min_bus_bandwidth_gbps: Option<f64>,
    /// Below the threshold: `Fail` the job before its first step (exit code 65, not
    /// retried, reason `FabricCheckFailed`) or `Warn` (condition `FabricCheck` False
    /// and a Warning Event; training goes on).
    #[serde(default)]
    pub action: FabricCheckAction,
    /// Bytes each rank all-reduces per iteration (default 64 MiB; a multiple of 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 17179869184u64))]
    #[x_kube(validation = Rule::new("self % 4 == 0").message("spec.fabricCheck.sizeBytes must be a multiple of 4 (fp32 elements)"))]
    pub size_bytes: Option<u64>,
    /// Timed iterations, the median of which is the figure (default 10); 3 untimed ones
    /// come first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub iterations: Option<u32>,
}

/// What a fabric below `minBusBandwidthGBps` does to the job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FabricCheckAction {
    /// The trainers exit 65 before the first step; the job Fails with reason
    /// `FabricCheckFailed`, naming the measured and required figures.
    #[default]
    Fail,
    /// Condition `FabricCheck` False (reason `FabricBelowThreshold`) and a Warning
    /// Event naming both figures; training goes on.
    Warn,
}

impl FabricCheckSpec {
    /// The trainer config's section for this spec.
    pub fn to_trainer(&self) -> trainer::FabricCheckSection {
        let mut s = trainer::FabricCheckSection {
            min_bus_bandwidth_gbps: self.min_bus_bandwidth_gbps,
            action: match self.action {
                FabricCheckAction::Fail => trainer::FabricAction::Fail,
                FabricCheckAction::Warn => trainer::FabricAction::Warn,
            },
            ..Default::default()
        };
        if let Some(b) = self.size_bytes {
            s.size_bytes = b;
        }
        if let Some(i) = self.iterations {
            s.iterations = i;
        }
        s
    }

    /// Whether `measured` GB/s is below this check's threshold.
    pub fn is_below(&self, measured: f64) -> bool {
        self.min_bus_bandwidth_gbps.is_some_and(|m| measured < m)
    }
}

/// RDMA devices for the trainer container, and the `IPC_LOCK` capability NCCL's
/// InfiniBand / RoCE transport needs to pin its buffers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RdmaSpec {
    /// The extended resource the cluster's RDMA device plugin advertises (for example
    /// `rdma/hca`, `rdma/rdma_shared_device_a` or `nvidia.com/hostdev`), requested and
    /// limited at `count` per worker.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
    ))]
    pub resource_name: String,
    /// Devices per worker (default 1).
    #[serde(default = "default_rdma_count")]
    #[schemars(range(min = 1, max = 64))]
    pub count: i32,
}

fn default_rdma_count() -> i32 {
    1
}

/// One environment variable of the trainer container for the collective: NCCL's
/// (`NCCL_*`) or UCX's (`UCX_*`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.name.matches('^(NCCL|UCX)_[A-Z0-9_]+$')")
        .message("spec.workers.env[].name must be an NCCL_* or UCX_* variable (upper case, digits, _); other variables go in spec.workers.template")
)]
pub struct FabricEnvVar {
    /// `NCCL_*` or `UCX_*` (for example `NCCL_SOCKET_IFNAME`, `NCCL_IB_HCA`,
    /// `NCCL_IB_GID_INDEX`, `UCX_NET_DEVICES`).
    #[schemars(length(min = 6, max = 128))]
    pub name: String,
    /// The value, as given.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Prefixes `spec.workers.env` accepts.
pub const FABRIC_ENV_PREFIXES: [&str; 2] = ["NCCL_", "UCX_"];

/// The first entry of `env` that is not an NCCL/UCX setting, or a repeated one, as
/// the error the field's users read (the API server's CEL rule says the same).
pub fn check_fabric_env(env: &[FabricEnvVar]) -> Result<(), String> {
    for (i, v) in env.iter().enumerate() {
        let rest = FABRIC_ENV_PREFIXES
            .iter()
            .find_map(|p| v.name.strip_prefix(p));
        let ok = rest.is_some_and(|r| {
            !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if !ok {
            return Err(format!(
                "spec.workers.env[{i}].name: `{}` is not an NCCL_* or UCX_* variable (upper case, digits, _); other variables go in spec.workers.template",
                v.name
            ));
        }
        if let Some(j) = env[..i].iter().position(|w| w.name == v.name) {
            return Err(format!(
                "spec.workers.env[{i}].name: `{}` is already set by spec.workers.env[{j}]",
                v.name
            ));
        }
    }
    Ok(())
}

/// The workers' NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Who may reach the workers' metrics port (Prometheus), as NetworkPolicy peers
    /// (e.g. a `namespaceSelector` of the monitoring namespace). Left out: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub metrics_from: Option<Vec<NetworkPolicyPeer>>,
}

/// The base model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// URL of a Hugging Face format directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`): s3://, gs://, az://, file:// (and s3a://, abfs://, abfss://)
    /// or an absolute path; https:// is refused (the trainer cannot read it).
    pub url: StorageUrl,
    /// `tokenizer.json` to use instead of the model directory's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_url: Option<StorageUrl>,
    /// Parameter dtype for training (`bfloat16` keeps fp32 master weights and moments).
    #[serde(default)]
    pub dtype: Dtype,
    /// Recompute each decoder layer in the backward pass (activation checkpointing);
    /// default: the recipe's (on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing: Option<bool>,
}

/// File format of the training data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Chosen per URL by its extension (`.jsonl` or `.parquet`).
    #[default]
    Auto,
    /// JSON lines; every URL must end in `.jsonl`.
    Jsonl,
    /// Parquet; every URL must end in `.parquet`.
    Parquet,
}

/// What to do with an example longer than `maxSeqLen`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Truncation {
    /// Keep the whole prompt and cut the end of the response (examples whose prompt
    /// leaves fewer than `minResponseTokens` are dropped).
    #[default]
    TruncateResponse,
    /// Drop every example that does not fit.
    Drop,
}

/// Training data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.format == 'auto' || self.urls.all(u, u.endsWith('.' + self.format))")
        .message("spec.dataset.urls must all end in .<format> when spec.dataset.format is jsonl or parquet")
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Training files (Multifaceted-Collection-style records): s3://, gs://, az://,
    /// file:// (and s3a://, abfs://, abfss://) URLs or absolute paths.
    #[schemars(length(min = 1, max = 256))]
    pub urls: Vec<StorageUrl>,
    /// File format of every URL.
    #[serde(default)]
    pub format: DataFormat,
    /// Prompt format; default: `mistral` for sft, `chatml` for orpo (the Janus recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<PromptFormat>,
    /// What to do with examples longer than `hyperparameters.maxSeqLen`.
    #[serde(default)]
    pub truncation: Truncation,
    /// With `TruncateResponse`, the fewest response tokens an example must keep.
    #[serde(default = "default_min_response_tokens")]
    #[schemars(range(min = 1, max = 1048576))]
    pub min_response_tokens: u32,
    /// Skip malformed records (counted and logged) instead of failing the job.
    #[serde(default)]
    pub skip_bad_records: bool,
}

fn default_min_response_tokens() -> u32 {
    16
}

/// Optimisation settings (the trainer config's `hyperparameters`, declared there once)
/// and the sequence shape. Unset fields take the Janus recipe's value for the method.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hyperparameters {
    #[serde(flatten)]
    pub optimisation: trainer::HyperparametersOverlay,
    /// Tokens per sequence (recipe: 8192 for sft, 4096 for orpo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1048576))]
    pub max_seq_len: Option<u32>,
    /// Pack several SFT examples per sequence (recipe: true for sft; orpo cannot pack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,
}

/// DPO's settings and the reward model's: the trainer config's `dpo` and `reward`
/// sections, declared there once (unset fields keep the recipe's).
pub use crate::config::{DpoSpec, RewardSpec};

impl Hyperparameters {
    /// Overlay the fields this job sets on the trainer config `c` (the recipe preset of
    /// its method), leaving the recipe's values for the others.
    pub fn apply_to(&self, c: &mut TrainConfig) {
        self.optimisation.apply_to(&mut c.hyperparameters);
        if let Some(v) = self.max_seq_len {
            c.data.max_seq_len = v as usize;
        }
        if let Some(v) = self.packing {
            c.data.packing = v;
        }
    }
}

/// The CRD's values are PascalCase (`TruncateResponse`, as stored in every job) and the
/// config's snake_case (`truncate_response`, as written in config files): both are
/// published, so two enums, mapped here and only here.
impl From<Truncation> for trainer::Truncation {
    fn from(t: Truncation) -> Self {
        match t {
            Truncation::TruncateResponse => trainer::Truncation::TruncateResponse,
            Truncation::Drop => trainer::Truncation::Drop,
        }
    }
}

/// The worker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.replicas == oldSelf.replicas").message("spec.workers.replicas is immutable"),
    validation = Rule::new("self.gpusPerWorker == oldSelf.gpusPerWorker").message("spec.workers.gpusPerWorker is immutable")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Number of worker pods (nodes). Must be >= 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.workers.replicas must be >= 1"))]
    pub replicas: i32,
    /// GPUs per worker (`nvidia.com/gpu`); the trainer starts one rank per GPU. 0 runs
    /// one CPU rank per worker.
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus_per_worker: i32,
    /// Container image with the `janus` trainer.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// Secrets in the job's namespace to pull the image with (Kubernetes'
    /// `imagePullSecrets`), set on every worker pod and on the job's ServiceAccount.
    /// Workers run as that per-job account, so the namespace `default` account's pull
    /// secrets are not inherited: name them here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// CPU / memory requests and limits of the trainer container (the GPU count comes
    /// from `gpusPerWorker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the workers must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Seconds a worker has after SIGTERM (suspend, preemption, eviction, drain) before
    /// it is killed; the trainer saves a checkpoint of the last completed step in it when
    /// the save is expected to fit, and warns at start when it is not. Default 30 (Kubernetes'
    /// own); a 7B job needs a few hundred seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Size limit of the scratch `emptyDir` mounted at `/tmp` (model and data downloads;
    /// a 7B model is about 15 GB). None: no limit beyond the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_size_limit: Option<Quantity>,
    /// Size limit of `/dev/shm`, a memory-backed `emptyDir` (NCCL's shared-memory
    /// transport between the ranks of a pod lives there; a container runtime's own
    /// `/dev/shm` is 64 MiB). What is used counts against the pod's memory. Left out:
    /// 1Gi per GPU (`gpusPerWorker`, at least 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_limit: Option<Quantity>,
    /// RDMA devices per worker (an extended resource of the cluster's device plugin)
    /// and the `IPC_LOCK` capability, for NCCL over InfiniBand or RoCE. `IPC_LOCK` is
    /// in neither the `restricted` nor the `baseline` Pod Security Standard: the job's
    /// namespace must allow `privileged`. Left out: no devices, every capability dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaSpec>,
    /// NCCL and UCX settings of the trainer container (`NCCL_SOCKET_IFNAME`,
    /// `NCCL_IB_HCA`, `UCX_NET_DEVICES`, ...), as Kubeflow Trainer's `env`; only
    /// `NCCL_*` and `UCX_*` names, each once. Set after the operator's own variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<FabricEnvVar>,
    /// Rendezvous port of rank 0 (`JANUS_MASTER_PORT`).
    #[serde(default = "default_master_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub master_port: i32,
    /// A partial PodTemplateSpec merged over the generated pod: maps merge, lists of
    /// named items (containers, env, volumes, volumeMounts) merge by `name` (the
    /// generated container is named `trainer`), anything else replaces.
    /// It may not set `serviceAccountName` or `automountServiceAccountToken`: workers run
    /// as the job's own ServiceAccount without an API token; the operator knows rank 0
    /// by that account when it reports progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::pods::pod_template_schema")]
    #[x_kube(validation = Rule::new("!has(self.spec) || (!has(self.spec.serviceAccountName) && !has(self.spec.serviceAccount) && !has(self.spec.automountServiceAccountToken))").message("spec.workers.template may not set serviceAccountName or automountServiceAccountToken: worker pods run as the job's own ServiceAccount"))]
    pub template: Option<serde_json::Value>,
}

fn default_replicas() -> i32 {
    1
}
fn default_gpus() -> i32 {
    1
}
fn default_master_port() -> i32 {
    crate::contract::defaults::MASTER_PORT
}

/// Checkpointing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Checkpoints go to `<url>/<namespace>/<job name>/step-<N>`, recorded with the
    /// job's UID: a job refuses a history another job (UID) wrote unless `resumeFrom`
    /// names it.
    pub url: StorageUrl,
    /// A checkpoint history (`<url>/<namespace>/<job name>` of an earlier job) to
    /// continue from when this job has no checkpoint of its own: to take over a run
    /// whose job was deleted, or to continue another job's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<StorageUrl>,
    /// Save every this many optimizer steps (0: only at the end).
    #[serde(default = "default_every_steps")]
    #[schemars(range(min = 0, max = 1_000_000_000_000u64))]
    pub every_steps: u64,
    /// Keep the newest this many checkpoints (0: keep all).
    #[serde(default = "default_keep")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub keep: u32,
    /// How long one storage request is retried before the attempt fails (retryable).
    #[serde(default = "default_retry_timeout")]
    #[schemars(range(min = 1, max = 604800))]
    pub retry_timeout_seconds: u64,
}

fn default_every_steps() -> u64 {
    500
}
fn default_keep() -> u32 {
    3
}
fn default_retry_timeout() -> u64 {
    180
}

/// The final model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// Directory URL that receives the final model in Hugging Face format.
    pub url: StorageUrl,
}

/// Reference to a Secret in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Which pods are deleted when the job finishes (Kubeflow `cleanPodPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum CleanPodPolicy {
    /// Delete the pods that are still running; keep finished ones for their logs.
    #[default]
    Running,
    /// Delete every pod.
    All,
    /// Keep every pod.
    None,
}

/// Restart, deadline and clean-up policy (Kubeflow `runPolicy`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Gang restarts allowed before the job is Failed (BackoffLimitExceeded).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10000))]
    pub backoff_limit: i32,
    /// Seconds the job may run (since it last started or resumed) before it is Failed
    /// with DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::contract::MAX_SECONDS))]
    pub active_deadline_seconds: Option<i64>,
    /// Delete the job this many seconds after it Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = crate::contract::MAX_SECONDS))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Delete the worker pods and keep the checkpoint; false resumes from it. Kueue
    /// admits jobs by flipping this field.
    #[serde(default)]
    pub suspend: bool,
    /// Which pods are deleted when the job finishes.
    #[serde(default)]
    pub clean_pod_policy: CleanPodPolicy,
    /// Seconds a gang may take from its first pod's creation until every worker runs;
    /// past it the job Fails with reason `SchedulingTimeout`, quoting why a worker waits
    /// (as Kueue's `waitForPodsReady` does). Unset: wait as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::contract::MAX_SECONDS))]
    pub scheduling_timeout_seconds: Option<i64>,
    /// Seconds a worker's node may be NotReady or unreachable (its `Ready` condition
    /// not `True`, or the `node.kubernetes.io/unreachable` / `not-ready` taint) before
    /// the gang restarts without counting towards `backoffLimit`, naming the node. On an
    /// unreachable node (`Ready=Unknown`: no kubelet confirms a deletion; reason
    /// `NodeUnreachable`) the worker pods are force-deleted, as they are at once on a
    /// node tainted `node.kubernetes.io/out-of-service`. On a NotReady node
    /// (`Ready=False`: its kubelet reports, the old containers may still run; reason
    /// `NodeNotReady`) they are deleted with their grace period, never forced, and the
    /// new gang, which reuses their names, waits until they are gone. Like the default
    /// `tolerationSeconds` of Kubernetes' taint-based eviction.
    #[serde(default = "crate::pods::default_unreachable_node_toleration")]
    #[schemars(range(min = 1, max = 86400))]
    pub unreachable_node_toleration_seconds: i64,
    /// What a failed worker does to the job (JobSet's `failurePolicy`, Kubernetes'
    /// `podFailurePolicy`). Without a matching rule: exit code 64 (bad input) fails the
    /// job, a disruption restarts the gang without counting towards `backoffLimit`,
    /// anything else restarts it and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// How long a restarted gang waits before its pods are created, so a job that
    /// fails at once does not restart hot. Left out: the defaults (10 s doubling to
    /// 300 s, reset after 600 s of running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_backoff: Option<RestartBackoff>,
}

/// The delays of gang restarts in a row, as the kubelet's `CrashLoopBackOff`: the first
/// restart after a healthy run starts the new gang at once; the second in a row waits
/// `initialSeconds`, each further one twice the one before, at most `maxSeconds`. A
/// restart that does not count (`RestartJobAndIgnoreBackoff`, a disruption) never
/// doubles, but in a row it still waits `initialSeconds`. The wait is in the
/// `Restarting` condition and its Event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartBackoff {
    /// Seconds the second restart in a row waits (and every uncounted one in a row).
    #[serde(default = "default_restart_initial")]
    #[schemars(range(min = 1, max = 3600))]
    pub initial_seconds: i64,
    /// The longest wait.
    #[serde(default = "default_restart_max")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_seconds: i64,
    /// Seconds every worker must have been running for the run to count as healthy:
    /// the next restart is the first in a row again.
    #[serde(default = "default_restart_reset")]
    #[schemars(range(min = 1, max = crate::contract::MAX_SECONDS))]
    pub reset_after_seconds: i64,
}

fn default_restart_initial() -> i64 {
    10
}

fn default_restart_max() -> i64 {
    300
}

fn default_restart_reset() -> i64 {
    600
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self {
            initial_seconds: default_restart_initial(),
            max_seconds: default_restart_max(),
            reset_after_seconds: default_restart_reset(),
        }
    }
}

/// Rules deciding what a failed worker does to the job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Evaluated in order, the first rule that matches decides (as JobSet's
    /// `failurePolicy`), for the gang's first failure: a worker on a node down past the
    /// toleration, else a disrupted one, else the one that failed first by time. The
    /// peers that then lose it (exit 75, an NCCL error) are not judged: their exits
    /// cannot turn a restart into `FailJob`.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub rules: Vec<FailurePolicyRule>,
}

/// What a matching rule does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicyAction {
    /// Fail the job at once (reason `PodFailurePolicy`), without a restart.
    FailJob,
    /// Restart the gang; the restart counts towards `backoffLimit`.
    RestartJob,
    /// Restart the gang without counting towards `backoffLimit`.
    RestartJobAndIgnoreBackoff,
}

impl FailurePolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicyAction::FailJob => "FailJob",
            FailurePolicyAction::RestartJob => "RestartJob",
            FailurePolicyAction::RestartJobAndIgnoreBackoff => "RestartJobAndIgnoreBackoff",
        }
    }
}

/// One rule: an action and one requirement (exit codes or pod conditions), as in
/// Kubernetes' `podFailurePolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.onExitCodes) != has(self.onPodConditions)")
        .message("a failurePolicy rule needs exactly one of onExitCodes and onPodConditions")
)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicyRule {
    /// What to do when the rule matches.
    pub action: FailurePolicyAction,
    /// Matches a worker whose trainer container exited with a code In (or NotIn) these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_codes: Option<OnExitCodes>,
    /// Matches a worker with any of these pod conditions (status True).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    pub on_pod_conditions: Option<Vec<OnPodCondition>>,
}

/// How `onExitCodes.values` is read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExitCodeOperator {
    /// The exit code is one of the values.
    In,
    /// The exit code is none of the values.
    NotIn,
}

/// A requirement on the trainer container's exit code.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.operator == 'NotIn' || !self.values.exists(v, v == 0)")
        .message("onExitCodes with operator In cannot list 0 (a worker exiting 0 did not fail)")
)]
pub struct OnExitCodes {
    /// `In`: the exit code is one of `values`; `NotIn`: none of them.
    pub operator: ExitCodeOperator,
    /// Exit codes (0-255), each once (a set).
    #[schemars(length(min = 1, max = 255), inner(range(min = 0, max = 255)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub values: Vec<i32>,
}

/// Pod condition types a rule can match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodConditionType {
    /// The worker was disrupted: preempted, evicted (Eviction API, drain, the kubelet's
    /// node pressure), or its node was lost or unreachable.
    DisruptionTarget,
}

/// A requirement on the worker pod's conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct OnPodCondition {
    /// The condition type (with status True); `DisruptionTarget` for now.
    #[serde(rename = "type")]
    pub type_: PodConditionType,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_backoff_limit() -> i32 {
    3
}

impl Default for RunPolicy {
    fn default() -> Self {
        RunPolicy {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            suspend: false,
            clean_pod_policy: CleanPodPolicy::default(),
            scheduling_timeout_seconds: None,
            unreachable_node_toleration_seconds: crate::pods::default_unreachable_node_toleration(),
            failure_policy: None,
            restart_backoff: None,
        }
    }
}

/// Scheduler and gang settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Scheduler of the worker pods (for example `volcano` or `scheduler-plugins-scheduler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Gang scheduling through a PodGroup; absent: no PodGroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_group: Option<PodGroupSpec>,
}

/// Which PodGroup API the gang scheduler reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PodGroupProvider {
    /// `scheduling.volcano.sh/v1beta1` PodGroup; pods carry the
    /// `scheduling.k8s.io/group-name` annotation.
    Volcano,
    /// scheduler-plugins coscheduling `scheduling.x-k8s.io/v1alpha1` PodGroup; pods carry
    /// the `scheduling.x-k8s.io/pod-group` label.
    Coscheduling,
}

/// A PodGroup that makes the scheduler place all workers or none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupSpec {
    /// The gang scheduler's API.
    pub provider: PodGroupProvider,
    /// Pods that must be placed together; default: `workers.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub min_member: Option<i32>,
    /// Volcano queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Coscheduling: seconds to wait for the whole gang before rejecting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub schedule_timeout_seconds: Option<i32>,
}

/// Lifecycle phase of a training job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum JobPhase {
    /// Children created, waiting for the workers to run.
    #[default]
    Pending,
    /// Every worker is running.
    Running,
    /// The gang is being deleted and recreated after a failure.
    Restarting,
    /// Suspended: no pods; resumes from the checkpoint.
    Suspended,
    /// Every rank exited 0.
    Succeeded,
    /// Failed for the reason in the Failed condition.
    Failed,
}

impl JobPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Running => "Running",
            JobPhase::Restarting => "Restarting",
            JobPhase::Suspended => "Suspended",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }

    pub const ALL: [JobPhase; 6] = [
        JobPhase::Pending,
        JobPhase::Running,
        JobPhase::Restarting,
        JobPhase::Suspended,
        JobPhase::Succeeded,
        JobPhase::Failed,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }
}

/// Condition types of a training job.
pub mod condition {
    pub const CREATED: &str = "Created";
    pub use crate::pods::condition::RUNNING;
    pub const RESTARTING: &str = "Restarting";
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    /// The fabric check's outcome (`spec.fabricCheck`): True at or above the threshold
    /// (or without one), False below it with action `Warn`.
    pub const FABRIC_CHECK: &str = "FabricCheck";
}

/// Condition reasons (CamelCase constants tests match on).
pub mod reason {
    pub use crate::pods::reason::*;
    pub const JOB_CREATED: &str = "JobCreated";
    pub const ALL_WORKERS_RUNNING: &str = "AllWorkersRunning";
    pub const WORKER_FAILED: &str = "WorkerFailed";
    pub const WORKER_EVICTED: &str = "WorkerEvicted";
    /// A worker was disrupted (its pod has a `DisruptionTarget` condition: preempted,
    /// evicted through the Eviction API, drained, or killed by the kubelet); the gang
    /// restarts without counting towards `backoffLimit`.
    pub const WORKER_DISRUPTED: &str = "WorkerDisrupted";
    /// A rank of a gang that had started is missing (its pod disappeared).
    pub const WORKER_LOST: &str = "WorkerLost";
    /// A worker was deleted by someone other than the operator.
    pub const WORKER_DELETED: &str = "WorkerDeleted";
    pub const GANG_RECREATED: &str = "GangRecreated";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const NON_RETRYABLE_EXIT: &str = "NonRetryableExit";
    /// A `FailJob` rule of `runPolicy.failurePolicy` matched a failed worker; the
    /// message names the rule.
    pub const POD_FAILURE_POLICY: &str = "PodFailurePolicy";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const JOB_SUSPENDED: &str = "JobSuspended";
    pub const JOB_RESUMED: &str = "JobResumed";
    pub const ALL_WORKERS_SUCCEEDED: &str = "AllWorkersSucceeded";
    /// `spec.workers.template` cannot be merged into a valid pod.
    pub const INVALID_POD_TEMPLATE: &str = "InvalidPodTemplate";
    /// The fabric check measured a bus bandwidth below `spec.fabricCheck`'s threshold
    /// with action `Fail` (the trainers exited 65); the message names both figures.
    pub const FABRIC_CHECK_FAILED: &str = "FabricCheckFailed";
    /// Condition `FabricCheck` False: below the threshold, action `Warn`.
    pub const FABRIC_BELOW_THRESHOLD: &str = "FabricBelowThreshold";
    /// Condition `FabricCheck` True: at or above the threshold.
    pub const FABRIC_CHECK_PASSED: &str = "FabricCheckPassed";
    /// Condition `FabricCheck` True: measured, no threshold set.
    pub const FABRIC_MEASURED: &str = "FabricMeasured";
}

/// Observed state of a `JanusTrainingJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JanusTrainingJobStatus {
    /// Pending, Running, Restarting, Suspended, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Created, Running, Restarting, Suspended, Succeeded, Failed (with reason and message).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Worker pods by phase, for the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// Gang restarts so far (the current attempt number).
    #[serde(default)]
    pub restarts: i32,
    /// Of `restarts`, those that count towards `runPolicy.backoffLimit`: disruptions
    /// (preemption, eviction, node drain or loss) restart the gang without counting.
    #[serde(default)]
    pub restarts_counted_towards_backoff: i32,
    /// Restarts in a row since the gang last ran healthy (see `runPolicy.restartBackoff`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_restarts: i32,
    /// The restarted gang's pods are created from then on (restart backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_not_before: Option<Time>,
    /// When the job (last) started or resumed; `activeDeadlineSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Training progress mirrored from the rank-0 pod's `janus.dev/progress` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// URL of the newest complete checkpoint reported by rank 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<String>,
    /// The latest fabric check (`spec.fabricCheck`; each attempt measures again), as rank
    /// 0 reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<crate::progress::Fabric>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Worker pods of the current attempt by phase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Worker pods the gang has (`spec.workers.replicas`).
    pub desired: i32,
    /// Created and not yet running (scheduling, pulling the image, starting).
    pub pending: i32,
    /// Running.
    pub running: i32,
    /// Exited 0.
    pub succeeded: i32,
    /// Exited non-zero, or lost.
    pub failed: i32,
}

/// Training progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Optimizer steps completed.
    pub step: u64,
    /// Optimizer steps in the schedule.
    pub total_steps: u64,
    /// Latest logged loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Tokens per second over all ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Estimated seconds to the last step, from the step rate between two reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// When rank 0 wrote the report (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl JanusTrainingJob {
    /// Current phase (Pending before the first status write).
    pub fn phase(&self) -> JobPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both spellings of truncation are public (PascalCase in the CRD, snake_case in
    /// the config), so each CRD value maps to the config value of the same meaning.
    #[test]
    fn each_crd_truncation_is_the_config_truncation_of_its_name() {
        for (crd, config) in [
            (Truncation::TruncateResponse, "truncate_response"),
            (Truncation::Drop, "drop"),
        ] {
            let pascal = serde_json::to_value(crd).unwrap();
            let want: trainer::Truncation = serde_json::from_value(config.into()).unwrap();
            assert_eq!(trainer::Truncation::from(crd), want, "{pascal}");
            assert_eq!(
                pascal.as_str().unwrap().to_lowercase(),
                config.replace('_', ""),
                "the CRD value and the config value name the same behaviour"
            );
        }
    }

    /// The job's `hyperparameters` and the trainer config's are one declaration: a job
    /// naming every config field (in the config's own JSON, camelCased) renders exactly
    /// that config section onto another preset, the sequence shape included.
    #[test]
    fn a_job_can_set_every_config_hyperparameter_and_the_render_carries_each() {
        let mut want = trainer::preset("janus-rm-7b").unwrap();
        // Every field set (a job cannot unset an optional field: null keeps the preset's).
        want.hyperparameters.max_steps = Some(1000);
        let camel = |k: &str| {
            let mut out = String::new();
            let mut up = false;
            for ch in k.chars() {
                match (ch, up) {
                    ('_', _) => up = true,
                    (c, true) => {
                        out.extend(c.to_uppercase());
                        up = false
                    }
                    (c, false) => out.push(c),
                }
            }
            out
        };
        let h = serde_json::to_value(&want.hyperparameters).unwrap();
        let fields = h.as_object().unwrap();
        let mut spec: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|(k, v)| (camel(k), v.clone())).collect();
        // warmup_ratio is the field a hand-written CRD once missed.
        assert!(spec.contains_key("warmupRatio"), "{spec:?}");
        spec.insert("maxSeqLen".into(), serde_json::json!(want.data.max_seq_len));
        spec.insert("packing".into(), serde_json::json!(want.data.packing));
        let job: Hyperparameters = serde_json::from_value(spec.clone().into()).unwrap();
        let set = serde_json::to_value(&job.optimisation).unwrap();
        assert_eq!(
            set.as_object().unwrap().len(),
            fields.len(),
            "a config field the job cannot set: {set}"
        );
        let mut c = trainer::preset("tiny").unwrap();
        assert_ne!(c.hyperparameters, want.hyperparameters);
        job.apply_to(&mut c);
        assert_eq!(c.hyperparameters, want.hyperparameters);
        assert_eq!(
            (c.data.max_seq_len, c.data.packing),
            (want.data.max_seq_len, want.data.packing)
        );
    }
}
