//! The trainer config document's types: the method, the sections and their keys, and
//! the checks of values that parse but cannot train; a stable hash of what changes the
//! trajectory of training.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bytes::ByteSize;
use super::prompt::PromptFormat;

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning on (system, prompt, output) records.
    Sft,
    /// Odds-ratio preference optimisation on (system, prompt, chosen, rejected) records.
    Orpo,
    /// Direct preference optimisation against a frozen reference model.
    Dpo,
    /// A reward model (a value head on the last token) with the Bradley-Terry loss.
    Reward,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Orpo => "orpo",
            Method::Dpo => "dpo",
            Method::Reward => "reward",
        }
    }

    /// Whether the method trains on preference pairs (chosen, rejected).
    pub fn uses_pairs(self) -> bool {
        !matches!(self, Method::Sft)
    }
}

/// Parameter (compute) dtype for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bf16 weights and activations (with fp32 master weights unless
    /// `optimizer.master_weights` is false).
    #[default]
    Bfloat16,
    /// fp32 everything.
    Float32,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float32 => "float32",
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Bfloat16 => 2,
            Dtype::Float32 => 4,
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// What to do with an example longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the whole prompt and cut the end of the response. Examples whose prompt
    /// leaves fewer than `min_response_tokens` for the response are dropped instead.
    TruncateResponse,
    /// Drop every example that does not fit.
    Drop,
}

/// The trainer config: one document, resolved from a preset, a file and overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Job name; checkpoints go to `<checkpoint.dir>/<job>/step-<N>`.
    pub job: String,
    pub method: Method,
    pub model: ModelSection,
    pub data: DataSection,
    pub hyperparameters: Hyperparameters,
    /// DPO's settings (read with `method: dpo`).
    pub dpo: DpoSection,
    /// The reward model's settings (read with `method: reward`).
    pub reward: RewardSection,
    pub optimizer: OptimizerSection,
    pub checkpoint: CheckpointSection,
    pub distributed: DistributedSection,
    pub memory: MemorySection,
    /// Directory that receives the final model in Hugging Face format.
    pub output_dir: PathBuf,
    /// Log a line (or update the progress bar's message) every this many steps.
    pub log_every_steps: u64,
}

/// The model training starts from, and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    pub path: PathBuf,
    /// `tokenizer.json` to use; defaults to the one in the model directory.
    pub tokenizer: Option<PathBuf>,
    pub dtype: Dtype,
    pub device: DeviceChoice,
    /// Recompute each decoder layer in the backward pass instead of keeping its
    /// activations (activation checkpointing): about a third more compute for a
    /// fraction of the activation memory.
    pub gradient_checkpointing: bool,
}

/// The training data and how records become token sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training files (JSONL or Parquet, chosen by extension; paths or URLs), or one
    /// sharded dataset. A source written `{path, weight}` makes a weighted mixture:
    /// each epoch draws `mixture_samples` units, each from a source chosen with
    /// probability proportional to its weight (every source then needs a weight).
    pub train: Vec<DataSource>,
    /// Units one epoch of a weighted mixture draws (a source that runs out starts over
    /// in a new order, as OpenRLHF's `all_exhausted` blending); `null`: all the
    /// sources' units together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture_samples: Option<usize>,
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

/// A training source: a path (or URL), or one with its weight in a mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum DataSource {
    /// A file, URL or sharded dataset read as it is.
    Path(PathBuf),
    /// A source of a weighted mixture.
    Weighted(WeightedSource),
}

/// `{path, weight}` in `data.train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WeightedSource {
    /// A data file (JSONL or Parquet; a path or URL).
    pub path: PathBuf,
    /// Relative sampling weight (> 0); weights need not sum to 1.
    pub weight: f64,
}

impl DataSource {
    pub fn path(&self) -> &Path {
        match self {
            DataSource::Path(p) => p,
            DataSource::Weighted(w) => &w.path,
        }
    }

    pub fn weight(&self) -> Option<f64> {
        match self {
            DataSource::Path(_) => None,
            DataSource::Weighted(w) => Some(w.weight),
        }
    }
}

impl From<PathBuf> for DataSource {
    fn from(p: PathBuf) -> Self {
        DataSource::Path(p)
    }
}

impl From<&str> for DataSource {
    fn from(p: &str) -> Self {
        DataSource::Path(PathBuf::from(p))
    }
}

/// How a sharded dataset (`janus data shard` output) is streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamingSection {
    /// Blocks (about 1 MiB of records each) read together and shuffled together.
    pub window_blocks: usize,
    /// Windows fetched ahead of the one being trained on (memory: window x (1 + this)).
    pub prefetch_windows: usize,
}

section_with_overlay! {
    /// Optimisation settings: the schedule, the batch, AdamW and the method's own terms.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
    #[serde(deny_unknown_fields)]
    pub struct Hyperparameters;
    /// A job's optimisation settings: each set field replaces the preset's value for the
    /// job's method (the Janus recipe), each unset one keeps it.
    pub struct HyperparametersOverlay;
    {
        /// Peak learning rate, reached after the warm-up; must be > 0 (Janus recipe:
        /// 5e-6).
        learning_rate: f64
            [x_kube(validation = Rule::new("self > 0.0").message("spec.hyperparameters.learningRate must be > 0"))],
        /// Passes over the training data (the schedule's length when no step limit is
        /// set; recipe: 4 for sft, 2 for orpo).
        epochs: u64 [schemars(range(min = 1, max = 10000))],
        /// Stop after this many optimizer steps (the schedule is sized for it) when set.
        max_steps: Option<u64> [schemars(range(min = 1, max = 1_000_000_000_000u64))],
        /// Sequences (or pairs) per micro-batch per rank; a packed row counts as one
        /// (recipe: 2 for sft, 1 for orpo).
        micro_batch_size: usize [schemars(range(min = 1, max = 65536))],
        /// Micro-batches per rank per optimizer step (recipe: 4). The global batch is
        /// micro-batch size x these steps x ranks; a run resumed on another number of
        /// ranks keeps the checkpoint's global batch and changes this.
        gradient_accumulation_steps: usize [schemars(range(min = 1, max = 65536))],
        /// Linear warm-up steps from 0 to the peak learning rate, before the cosine
        /// decay (recipe: 10).
        warmup_steps: u64 [schemars(range(min = 0, max = 1_000_000_000_000u64))],
        /// Warm-up as a fraction of the run's optimizer steps (`ceil(ratio x steps)`, as
        /// OpenRLHF's `train_rm.py` sets it); replaces the warm-up steps when set.
        warmup_ratio: Option<f64>
            {serde(default, skip_serializing_if = "Option::is_none")}
            [schemars(range(min = 0.0, max = 1.0))],
        /// The cosine schedule decays to the peak learning rate times this (recipe: 0).
        min_lr_ratio: f64 [schemars(range(min = 0.0, max = 1.0))],
        /// AdamW's decoupled weight decay (0 in the Janus recipes).
        weight_decay: f64 [schemars(range(min = 0.0))],
        /// AdamW's first-moment decay, in [0, 1) (default 0.9).
        adam_beta1: f64
            [x_kube(validation = Rule::new("self >= 0.0 && self < 1.0").message("spec.hyperparameters.adamBeta1 must be in [0, 1)"))],
        /// AdamW's second-moment decay, in [0, 1) (default 0.999; Janus-RM: 0.95).
        adam_beta2: f64
            [x_kube(validation = Rule::new("self >= 0.0 && self < 1.0").message("spec.hyperparameters.adamBeta2 must be in [0, 1)"))],
        /// AdamW's epsilon, added to the second moment's square root; > 0 (default
        /// 1e-8).
        adam_epsilon: f64
            [x_kube(validation = Rule::new("self > 0.0").message("spec.hyperparameters.adamEpsilon must be > 0"))],
        /// Global gradient-norm clipping; 0 disables it (default 1.0).
        max_grad_norm: f64 [schemars(range(min = 0.0))],
        /// ORPO's lambda: weight of the odds-ratio term (recipe: 0.1).
        orpo_lambda: f64 [schemars(range(min = 0.0))],
        /// ORPO's NLL term over prompt + response tokens (as TRL's ORPOTrainer and the
        /// axolotl code the Janus ORPO run used do) instead of the response only.
        orpo_nll_on_prompt: bool,
        /// Seed of the data order (each epoch's shuffle) and of a new reward head
        /// (default 42).
        seed: u64 [schemars(range(min = 0, max = crate::contract::MAX_JSON_INTEGER))],
    }
}

section_with_overlay! {
    /// DPO's settings (read with `method: dpo`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
    #[serde(deny_unknown_fields)]
    pub struct DpoSection;
    /// DPO's settings.
    pub struct DpoSpec;
    {
        /// beta: how strongly the policy is held to the reference (recipe: 0.1).
        beta: f64
            [
                schemars(description = "How strongly the policy is held to the reference (recipe: 0.1). Must be > 0."),
                x_kube(validation = Rule::new("self > 0.0").message("spec.dpo.beta must be > 0")),
            ],
        /// TRL's loss names: `sigmoid` (DPO), `ipo`, `hinge`, `robust` (rDPO).
        loss_type: DpoLoss
            [schemars(description = "TRL's loss names: sigmoid (DPO), ipo, hinge, robust (rDPO).")],
        /// The probability that a pair's preference is flipped: conservative DPO with
        /// `sigmoid`, rDPO's noise rate with `robust`; in [0, 0.5).
        label_smoothing: f64
            [
                schemars(description = "Probability that a pair's preference is flipped (conservative DPO with sigmoid,\nrDPO with robust), in [0, 0.5)."),
                x_kube(validation = Rule::new("self >= 0.0 && self < 0.5").message("spec.dpo.labelSmoothing must be in [0, 0.5)")),
            ],
        /// `precompute`: one pass of the reference model over the data before the first
        /// step, stored with the checkpoints (a resume never recomputes them); `model`: a
        /// frozen copy kept in memory and run on every micro-batch (streamed data).
        reference: DpoReference
            [schemars(description = "`precompute` (one pass before training, stored with the checkpoints) or `model`\n(a frozen copy in memory, for streamed data).")],
        /// The reference model (an HF directory, path or URL); `null`: `model.path`, the
        /// model training starts from.
        reference_model: Option<PathBuf> as crate::url::StorageUrl
            [
                serde(rename = "referenceModelUrl"),
                schemars(description = "The reference model; default: `spec.model.url`."),
            ],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// `-log sigmoid(beta * margin)` (with label smoothing: conservative DPO).
    Sigmoid,
    /// `(margin / response tokens - 1 / (2 beta))^2`, length-normalised as TRL does.
    Ipo,
    /// `relu(1 - beta * margin)` (SLiC).
    Hinge,
    /// rDPO: unbiased under label noise of rate `label_smoothing`.
    Robust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DpoReference {
    Precompute,
    Model,
}

section_with_overlay! {
    /// The reward model's settings (read with `method: reward`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
    #[serde(deny_unknown_fields)]
    pub struct RewardSection;
    /// The reward model's settings.
    pub struct RewardSpec;
    {
        /// TRL's `center_rewards_coefficient`: adds `c * mean((r_chosen + r_rejected)^2)`
        /// so rewards stay centred on 0; `null`: off.
        center_rewards_coefficient: Option<f64>
            [schemars(description = "TRL's center_rewards_coefficient (adds c * mean((r_chosen + r_rejected)^2)).", range(min = 0.0))],
    }
}

/// How the optimizer keeps its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// With `model.dtype: bfloat16`, keep fp32 master weights and fp32 Adam moments,
    /// compute the update in fp32 and copy the result to the bf16 weights (standard
    /// mixed precision). `false` updates the bf16 weights in place with bf16 moments,
    /// which loses most updates at the recipe's learning rates: only for comparison.
    pub master_weights: bool,
}

/// Where checkpoints go, how often, how many are kept, and how a run resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
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
    /// Who owns this job's checkpoint history (the operator sets the job's UID): a
    /// checkpoint another owner wrote is refused unless `resume_from` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A checkpoint history (`<dir>/<job>`, of this job or another) to continue from
    /// when this job has no checkpoint of its own: the way to take over another run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<String>,
    /// Write checkpoints in the background: the step loop stops only to copy the state
    /// into host buffers allocated once (on rank 0, the size of the checkpoint: weights
    /// and the whole optimizer state), then goes on while a thread hashes, writes and
    /// uploads the copy, manifest last. One save is in flight at a time; the next save,
    /// the end of training and a stop on SIGTERM wait for it, and its failure fails the
    /// run there. Off by default: the memory plan does not count that host copy yet
    /// (about 100 GiB on rank 0 for the 7B recipe).
    #[serde(rename = "async", default, skip_serializing_if = "std::ops::Not::not")]
    pub asynchronous: bool,
}

/// Data parallelism: the collective backend, bucketing, ZeRO-1 and timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// `nccl` (CUDA), `ring` (TCP, CPU tensors) or `auto`: NCCL on GPUs, the ring on CPUs.
    pub backend: Backend,
    /// Gradients are reduced in buckets of about this many MiB.
    pub bucket_mib: usize,
    /// How long a rank waits for the others (rendezvous, collectives) before failing.
    pub timeout_seconds: u64,
    /// ZeRO stage 1: partition the fp32 master weights and Adam moments across the
    /// ranks (gradients reduce-scattered, parameters all-gathered). `null`: on with more
    /// than one rank.
    pub shard_optimizer: Option<bool>,
    /// dtype gradients are summed in across ranks. `float32` (the default) sums bf16
    /// gradients without rounding each partial sum to 8 bits of mantissa, for twice the
    /// bytes on the wire; `bfloat16` halves the traffic.
    pub reduce_dtype: ReduceDtype,
    /// Overlap the collectives with compute, as DDP does: reduce each gradient bucket as
    /// soon as the backward pass of the step's last micro-batch has finished its
    /// parameters, and (ZeRO-1) all-gather each bucket beside the next bucket's update.
    /// The same sums and updates as without. Off by default (unset) until measured on GPUs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlap: bool,
    /// Measure the collective's all-reduce bus bandwidth across every rank before the
    /// first step, and fail or warn below a threshold (`null`: no check). Measured on
    /// each start, a resume's included: a restarted gang may run on other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_check: Option<FabricCheckSection>,
}

/// The fabric check before training: an all-reduce of `size_bytes` (fp32) over the
/// job's collective (NCCL on GPUs, the ring on CPUs), `warmup_iterations` untimed and
/// `iterations` timed; its figure is the median time's bus bandwidth as nccl-tests
/// computes it (algorithm bandwidth times 2(n-1)/n).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FabricCheckSection {
    /// Bytes each rank all-reduces per iteration (a multiple of 4).
    #[serde(default = "default_fabric_size")]
    pub size_bytes: u64,
    /// Untimed iterations first (connections, NCCL's channel set-up).
    #[serde(default = "default_fabric_warmup")]
    pub warmup_iterations: u32,
    /// Timed iterations; the median is the figure.
    #[serde(default = "default_fabric_iterations")]
    pub iterations: u32,
    /// The least bus bandwidth in GB/s (10^9 bytes per second) the job accepts;
    /// `null`: measure and report only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bus_bandwidth_gbps: Option<f64>,
    /// Below the threshold: `fail` (exit 65, not retried) or `warn` (log and train).
    #[serde(default)]
    pub action: FabricAction,
}

impl Default for FabricCheckSection {
    fn default() -> Self {
        Self {
            size_bytes: default_fabric_size(),
            warmup_iterations: default_fabric_warmup(),
            iterations: default_fabric_iterations(),
            min_bus_bandwidth_gbps: None,
            action: FabricAction::default(),
        }
    }
}

/// Default size of the fabric check's all-reduce: 64 MiB, large enough that NCCL
/// reaches its bus bandwidth on NVLink and InfiniBand, small enough for a CPU ring.
pub const DEFAULT_FABRIC_SIZE_BYTES: u64 = 64 << 20;

fn default_fabric_size() -> u64 {
    DEFAULT_FABRIC_SIZE_BYTES
}
fn default_fabric_warmup() -> u32 {
    3
}
fn default_fabric_iterations() -> u32 {
    10
}

/// What a fabric below its threshold does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FabricAction {
    /// Stop before the first step with exit code 65 (`exit_code::FABRIC_CHECK_FAILED`).
    #[default]
    Fail,
    /// Log a warning and train.
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Nccl,
    Ring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReduceDtype {
    Float32,
    Bfloat16,
}

/// The memory plan's check before the first step (`janus plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    /// Bytes one rank may use (`80GiB`, or a number); `null`: the device's own (a
    /// GPU's total memory, or the memory available to the process on CPU).
    pub limit: Option<ByteSize>,
    /// Check the memory plan (`janus plan`) before the first step and fail with its
    /// breakdown when the run cannot fit.
    pub check: bool,
}

impl Hyperparameters {
    /// Warm-up steps of a run of `total_steps` optimizer steps.
    pub fn warmup_steps_of(&self, total_steps: u64) -> u64 {
        match self.warmup_ratio {
            Some(r) => (r * total_steps as f64).ceil() as u64,
            None => self.warmup_steps,
        }
    }
}

/// The first check that does not hold, as "`key` what it must be".
fn first_failure<const N: usize>(
    checks: [(bool, &str, String); N],
) -> std::result::Result<(), String> {
    match checks.into_iter().find(|(ok, _, _)| !ok) {
        Some((_, key, msg)) => Err(format!("`{key}` {msg}")),
        None => Ok(()),
    }
}

impl TrainConfig {
    /// Check values that parse but cannot train. Messages name the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(f) = &self.distributed.fabric_check {
            f.validate()?;
        }
        let job = [(
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
        )];
        first_failure(job)?;
        first_failure(self.hyperparameter_checks())?;
        first_failure(self.data_and_distributed_checks())?;
        self.validate_sources()?;
        let h = &self.hyperparameters;
        if let Some(r) = h.warmup_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!(
                    "`hyperparameters.warmup_ratio` must be in [0, 1], found {r}"
                ));
            }
        }
        if self.method.uses_pairs() && self.data.packing {
            return Err(format!(
                "`data.packing` is not supported with method `{}` (pairs are scored per sequence); set it to false",
                self.method.as_str()
            ));
        }
        self.validate_method_sections()
    }

    /// `hyperparameters`' values, each (holds, key, what it must be).
    fn hyperparameter_checks(&self) -> [(bool, &'static str, String); 9] {
        let h = &self.hyperparameters;
        [
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
        ]
    }

    /// `data`'s and `distributed`'s values, each (holds, key, what it must be).
    fn data_and_distributed_checks(&self) -> [(bool, &'static str, String); 4] {
        [
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
        ]
    }

    /// The sections of the methods: `dpo` and `reward`.
    fn validate_method_sections(&self) -> std::result::Result<(), String> {
        let d = &self.dpo;
        if !(d.beta > 0.0 && d.beta.is_finite()) {
            return Err(format!("`dpo.beta` must be > 0, found {}", d.beta));
        }
        if !(0.0..0.5).contains(&d.label_smoothing) {
            return Err(format!(
                "`dpo.label_smoothing` must be in [0, 0.5), found {}",
                d.label_smoothing
            ));
        }
        if let Some(c) = self.reward.center_rewards_coefficient {
            if !(c >= 0.0 && c.is_finite()) {
                return Err(format!(
                    "`reward.center_rewards_coefficient` must be >= 0, found {c}"
                ));
            }
        }
        Ok(())
    }

    /// `data.train`'s weights: all or none, each > 0; no packing with a mixture.
    fn validate_sources(&self) -> std::result::Result<(), String> {
        let d = &self.data;
        let weights: Vec<Option<f64>> = d.train.iter().map(DataSource::weight).collect();
        let weighted = weights.iter().filter(|w| w.is_some()).count();
        if weighted == 0 {
            return match d.mixture_samples {
                Some(_) => Err("`data.mixture_samples` needs weighted sources in `data.train` ({path, weight})".into()),
                None => Ok(()),
            };
        }
        if weighted != weights.len() {
            return Err(format!(
                "`data.train`: {weighted} of {} sources have a `weight`; give every source a weight (a mixture) or none",
                weights.len()
            ));
        }
        if let Some((i, w)) = weights
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, w)| !(**w > 0.0 && w.is_finite()))
        {
            return Err(format!("`data.train[{i}].weight` must be > 0, found {w}"));
        }
        if d.packing {
            return Err("`data.packing` is not supported with a weighted mixture in `data.train`; set it to false".into());
        }
        if d.mixture_samples == Some(0) {
            return Err("`data.mixture_samples` must be >= 1 when set".into());
        }
        Ok(())
    }

    /// Whether the optimizer keeps fp32 master weights apart from the model's.
    pub fn uses_master_weights(&self) -> bool {
        self.optimizer.master_weights && self.model.dtype != Dtype::Float32
    }

    /// Whether ZeRO-1 partitions the optimizer state in a job of `world` ranks.
    pub fn shards_optimizer(&self, world: usize) -> bool {
        world > 1 && self.distributed.shard_optimizer.unwrap_or(true)
    }

    /// A stable hash of everything that changes the trajectory of training, so a
    /// resume with a different config is caught. The gradient accumulation steps are
    /// left out: the global batch they make with the rank count is checked on resume
    /// instead, so a job can continue on another number of ranks.
    pub fn trajectory_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut v = serde_json::to_value(self).expect("config serializes");
        // The job's name, where things are written, how often we log, how many to
        // keep, how memory is checked and how ranks talk do not change the weights (a
        // job may continue another job's checkpoints: `checkpoint.resume_from`).
        if let Value::Object(m) = &mut v {
            for k in [
                "job",
                "output_dir",
                "log_every_steps",
                "distributed",
                "memory",
            ] {
                m.remove(k);
            }
            if let Some(Value::Object(md)) = m.get_mut("model") {
                md.remove("gradient_checkpointing");
            }
            if let Some(Value::Object(h)) = m.get_mut("hyperparameters") {
                h.remove("gradient_accumulation_steps");
            }
            if let Some(Value::Object(s)) = m.get_mut("data").and_then(|d| d.get_mut("streaming")) {
                s.remove("prefetch_windows");
            }
            if let Some(Value::Object(c)) = m.get_mut("checkpoint") {
                c.remove("keep");
                c.remove("retry_timeout_seconds");
                c.remove("resume");
                c.remove("dir");
                c.remove("owner");
                c.remove("async");
                c.remove("resume_from");
            }
        }
        hex::encode(Sha256::digest(v.to_string().as_bytes()))[..16].to_string()
    }
}

impl FabricCheckSection {
    /// Values that parse but cannot measure; messages name the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let key = "distributed.fabric_check";
        if self.size_bytes < 4 || !self.size_bytes.is_multiple_of(4) || self.size_bytes > 1 << 34 {
            return Err(format!(
                "`{key}.size_bytes` must be a multiple of 4 in [4, 16GiB], found {}",
                self.size_bytes
            ));
        }
        if self.iterations < 1 || self.iterations > 1000 || self.warmup_iterations > 1000 {
            return Err(format!(
                "`{key}.iterations` must be in [1, 1000] and `warmup_iterations` in [0, 1000], found {} and {}",
                self.iterations, self.warmup_iterations
            ));
        }
        if let Some(m) = self.min_bus_bandwidth_gbps {
            if !(m >= 0.0 && m.is_finite()) {
                return Err(format!(
                    "`{key}.min_bus_bandwidth_gbps` must be >= 0, found {m}"
                ));
            }
        }
        Ok(())
    }
}

/// No prompt format fits in fewer tokens than this with room for a response.
pub const MIN_SEQ_LEN: usize = 16;
