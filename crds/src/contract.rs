//! The names and numbers the operator and the trainer agree on (`docs/design.md`):
//! the API group, environment variables, exit codes, labels, annotations and pod
//! defaults, and the bounds of the CRDs' numeric fields. Below the CRD types and the
//! trainer config, which both use them.

/// API group of the custom resources.
pub const GROUP: &str = "janus.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";

/// Largest integer a 64-bit field of the CRDs accepts (2^53 - 1): JSON numbers beyond it
/// lose precision in clients that read them as doubles, and the API server compares
/// `maximum` as a double too, so a larger bound would let 2^63 through to a Rust `i64`.
pub const MAX_JSON_INTEGER: u64 = 9_007_199_254_740_991;
/// Longest duration in seconds of a deadline or TTL field (ten years): far beyond any
/// job, and small enough that adding it to a timestamp cannot overflow.
pub const MAX_SECONDS: i32 = 315_360_000;

/// Environment variables the operator sets on every worker pod.
pub mod env {
    pub const JOB: &str = "JANUS_JOB";
    pub const NODE_RANK: &str = "JANUS_NODE_RANK";
    pub const NNODES: &str = "JANUS_NNODES";
    pub const NPROC_PER_NODE: &str = "JANUS_NPROC_PER_NODE";
    pub const MASTER_ADDR: &str = "JANUS_MASTER_ADDR";
    pub const MASTER_PORT: &str = "JANUS_MASTER_PORT";
    pub const ATTEMPT: &str = "JANUS_ATTEMPT";
    pub const CONFIG: &str = "JANUS_CONFIG";
    /// Name of the pod the process runs in (downward API).
    pub const POD_NAME: &str = "JANUS_POD_NAME";
    /// Namespace of that pod (downward API).
    pub const POD_NAMESPACE: &str = "JANUS_POD_NAMESPACE";
    /// Port on which the first trainer process of the pod serves `/metrics`.
    pub const METRICS_PORT: &str = "JANUS_METRICS_PORT";
    /// The pod's `terminationGracePeriodSeconds`: how long the trainer has after SIGTERM
    /// (a checkpoint of the last step is saved when it fits).
    pub const TERMINATION_GRACE_SECONDS: &str = "JANUS_TERMINATION_GRACE_SECONDS";
    /// The size limit of the pod's scratch volume (`spec.workers.scratchSizeLimit`) in
    /// bytes: the trainer checks that each download and staged upload fits in what is
    /// left of it before starting it, instead of the kubelet evicting the pod midway.
    pub const SCRATCH_LIMIT_BYTES: &str = "JANUS_SCRATCH_LIMIT_BYTES";
    /// Where a pod sends its progress reports (the operator's endpoint,
    /// [`crate::progress::publish`]); unset when the operator was not told its own
    /// address, and then the pod does not report.
    pub const REPORT_URL: &str = "JANUS_REPORT_URL";
    /// In the judge pod of a `JanusEvalJob`: the judge's API key (from
    /// `spec.judge.apiKeySecretRef`); the rendered eval config's `judge.api_key_env`
    /// names this variable.
    pub const JUDGE_API_KEY: &str = "JANUS_JUDGE_API_KEY";
}

/// Process exit codes of the `janus` trainer.
pub mod exit_code {
    /// Training finished.
    pub const SUCCESS: i32 = 0;
    /// Bad input (invalid config, malformed data, missing model files): retrying cannot
    /// help, so the operator fails the job at once instead of counting a retry.
    pub const BAD_INPUT: i32 = 64;
    /// Anything else (I/O, a lost peer, an out-of-memory kill) is retryable; the trainer
    /// uses this code for errors it recognises as transient.
    pub const RETRYABLE: i32 = 75;
    /// Stopped by SIGTERM (suspend, preemption, eviction, node drain), after saving a
    /// checkpoint of the last completed step when one fit in the grace period: 128 +
    /// SIGTERM, as a process killed by it would report. Retryable.
    pub const TERMINATED: i32 = 143;
}

/// Labels the operator puts on every child object.
pub mod labels {
    /// Name of the owning job (on pods, the Service, the ConfigMap, RBAC objects).
    pub const JOB: &str = "janus.dev/job";
    /// Worker index `i` of pod `J-worker-i`.
    pub const RANK: &str = "janus.dev/rank";
    /// Gang attempt the pod belongs to (0 for the first, +1 per gang restart); on an
    /// evaluation's pod, that pod's own attempt (+1 each time it is recreated).
    pub const ATTEMPT: &str = "janus.dev/attempt";
    /// Name of the owning `JanusEvalJob` (on its pods and other children). Not
    /// `janus.dev/job`: a training job and an evaluation may share a name.
    pub const EVAL_JOB: &str = "janus.dev/eval-job";
    /// Stage of an evaluation pod: `generate` or `judge`.
    pub const STAGE: &str = "janus.dev/stage";
    /// Shard index `i` of generation pod `J-generate-i`.
    pub const SHARD: &str = "janus.dev/shard";
    /// Kueue's queue label: a job carrying it is admitted by Kueue through `suspend`.
    pub const KUEUE_QUEUE_NAME: &str = "kueue.x-k8s.io/queue-name";
}

/// Annotations of the contract.
pub mod annotations {
    /// On the rank-0 pod: a JSON [`crate::Progress`] document written by the trainer.
    pub const PROGRESS: &str = "janus.dev/progress";
    /// On each pod of an evaluation: a JSON [`crate::progress::EvalReport`].
    pub const EVAL_PROGRESS: &str = "janus.dev/eval-progress";
}

/// Defaults of the worker pods that the trainer relies on too.
pub mod defaults {
    /// Port of the rank-0 rendezvous (`JANUS_MASTER_PORT`).
    pub const MASTER_PORT: i32 = 29500;
    /// Where the operator mounts the trainer config (`JANUS_CONFIG`).
    pub const CONFIG_PATH: &str = "/etc/janus/config.yaml";
    /// Name of the trainer container in each worker pod.
    pub const CONTAINER_NAME: &str = "trainer";
    /// Port of the trainer's `/metrics` (`JANUS_METRICS_PORT`, container port `metrics`).
    pub const METRICS_PORT: i32 = 9400;
    /// `terminationGracePeriodSeconds` of worker pods unless the spec says: Kubernetes'
    /// own default, so that deleting a job is as quick as users expect. A 7B job's
    /// checkpoint on SIGTERM needs minutes; the trainer warns at start when the grace
    /// period is too short for one.
    pub const TERMINATION_GRACE_SECONDS: i64 = 30;
}
