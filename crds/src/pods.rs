//! What every kind says about its pods, in the same words: the phase of one pod, and the
//! condition and reasons of a pod that cannot start or is lost. A training job's worker
//! and an evaluation's generation or judge pod in the same state get the same reason
//! (the operator's controller layer detects these states once, for every kind).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Phase of one pod of the evaluation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PodPhase {
    /// Not created yet, or not running yet.
    #[default]
    Pending,
    Running,
    /// Exited 0: the stage of this pod is done (kept even after the pod is deleted).
    Succeeded,
    /// Failed; recreated (attempt + 1) unless the job failed.
    Failed,
}

/// Condition types every kind with pods has.
pub mod condition {
    /// False while a pod cannot start (the reason says why), True once the pods run.
    pub const RUNNING: &str = "Running";
}

/// Reasons of a pod that cannot start or was lost (conditions and Events of every kind).
pub mod reason {
    /// A pod cannot be scheduled; the message quotes the scheduler's (for example
    /// `0/4 nodes are available: 4 Insufficient nvidia.com/gpu`).
    pub const WORKERS_PENDING: &str = "WorkersPending";
    /// Reasons of the kubelet for a container that cannot start, used verbatim as the
    /// reason of the Running=False condition (the message quotes the kubelet's).
    pub const CONTAINER_WAITING: [&str; 5] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    ];
    /// The API server refused a pod (Pod Security or a quota: 403, a missing namespace
    /// or ServiceAccount: 404, a template it rejects: 422); the message quotes it and
    /// the create is retried.
    pub const FAILED_CREATE: &str = "FailedCreate";
    /// An object with the name of one of the job's children (its ConfigMap, Service,
    /// ServiceAccount, NetworkPolicy or a pod) exists and the job does not control it:
    /// it is left alone, the message names it, and no pod is made until it is gone.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
    /// `spec.scheduling.podGroup` names a scheduler whose PodGroup CRD is not installed.
    pub const POD_GROUP_NOT_INSTALLED: &str = "PodGroupNotInstalled";
    /// A pod's node no longer exists.
    pub const NODE_LOST: &str = "NodeLost";
    /// A pod's node was unreachable (`Ready=Unknown`: its kubelet silent) for longer
    /// than `runPolicy.unreachableNodeTolerationSeconds`, or tainted
    /// `node.kubernetes.io/out-of-service`: the pod is force-deleted and made again
    /// without counting towards `backoffLimit`; the message names the node.
    pub const NODE_UNREACHABLE: &str = "NodeUnreachable";
    /// A pod's node was `Ready=False` (its kubelet reports, so the old containers may
    /// still run) for longer than `runPolicy.unreachableNodeTolerationSeconds`: the pod
    /// is deleted with its grace period, never forced, and made again (without counting
    /// towards `backoffLimit`) once its kubelet has confirmed it gone.
    pub const NODE_NOT_READY: &str = "NodeNotReady";
    /// The pods were not running within `runPolicy.schedulingTimeoutSeconds`.
    pub const SCHEDULING_TIMEOUT: &str = "SchedulingTimeout";
}

/// Default of `runPolicy.unreachableNodeTolerationSeconds` (Kubernetes' default
/// `tolerationSeconds` of taint-based eviction).
pub fn default_unreachable_node_toleration() -> i64 {
    300
}

/// Schema of a pod template override (`spec.workers.template` of a training job,
/// `spec.worker.template` of an evaluation: one shape, merged by one function of the
/// operator). The fields the kinds' CEL rules read are declared (CEL cannot select
/// undeclared fields of an open object); everything else is kept as given.
pub fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "A partial PodTemplateSpec merged over the generated pod.",
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "description": "Labels and annotations merged into each pod's metadata."
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "description": "A partial PodSpec merged over the generated one (containers, env, volumes and volumeMounts merge by name).",
                "properties": {
                    "serviceAccountName": {"type": "string", "description": "Refused: the pods run as the job's own ServiceAccount."},
                    "serviceAccount": {"type": "string", "description": "Refused (the deprecated name of serviceAccountName)."},
                    "automountServiceAccountToken": {"type": "boolean", "description": "Refused: the pods get no API token."}
                }
            }
        }
    })
}
