//! What the decisions of every kind know of a pod, read the same way for every kind:
//! phase, the container that terminated and its termination message, why a pending pod
//! does not start (in the scheduler's or the kubelet's words), disruptions, its node's
//! state, and whether it is ours. The kind adds only the pod's role (a rank, a shard).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec};
use kube::ResourceExt;

use janus_crds::pods::reason;
pub use janus_crds::pods::PodPhase;

use super::nodes::{Kubelet, NodeState};

/// Which containers of its pods a kind reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containers {
    /// Only this one: its termination (whatever the exit code), its waiting reason.
    Only(&'static str),
    /// Every container, init containers first: the first that exited non-zero is the
    /// cause of a failure, the first waiting for a listed reason the cause of a wait.
    All,
}

impl Containers {
    fn statuses<'a>(&self, pod: &'a Pod) -> impl Iterator<Item = &'a ContainerStatus> + 'a {
        let only = match self {
            Containers::Only(name) => Some(*name),
            Containers::All => None,
        };
        let st = pod.status.as_ref();
        let init = st
            .and_then(|s| s.init_container_statuses.as_ref())
            .filter(|_| only.is_none());
        init.into_iter()
            .flatten()
            .chain(
                st.and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten(),
            )
            .filter(move |c| only.is_none_or(|n| c.name == n))
    }
}

/// A node that does not report Ready: no kubelet acts on its pods.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDown {
    pub node: String,
    /// Since when (its Ready condition's last transition, or the taint's `timeAdded`).
    pub since: Timestamp,
    /// What the node says (`Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting
    /// node status.)`, or the taint).
    pub why: String,
    /// Whether its kubelet may still run the pod.
    pub kubelet: Kubelet,
}

/// What the decisions need from one pod; `R` is its role in the job (a rank, a slot).
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts<R> {
    pub name: String,
    /// From the kind's labels; `None` for a pod with unreadable labels.
    pub role: Option<R>,
    pub attempt: Option<i32>,
    pub phase: PodPhase,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// The container that terminated (see [`Containers`]), once one did.
    pub container: Option<String>,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Its termination message (the `janus` error), if any.
    pub message: Option<String>,
    /// When it terminated.
    pub finished_at: Option<Timestamp>,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<Timestamp>,
    /// `status.reason` of the pod (`Evicted`, ...).
    pub reason: Option<String>,
    /// Why a pending pod does not start: (reason, the scheduler's or kubelet's message).
    pub waiting: Option<(&'static str, String)>,
    /// Its `DisruptionTarget` condition: (reason, message) of a preemption, an
    /// eviction, a drain or the kubelet's termination.
    pub disrupted: Option<(String, String)>,
    /// Bound to a node that no longer exists.
    pub node_lost: bool,
    /// Bound to a node that is NotReady or unreachable.
    pub node_down: Option<NodeDown>,
    /// Carries the job's labels but its controller is not this job (another object of
    /// the same name, e.g. a deleted job whose pods the garbage collector has not yet
    /// removed). Never counted; only blocks creating pods of the same names.
    pub foreign: bool,
}

impl<R> PodFacts<R> {
    pub fn finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// Evicted by the kubelet (node pressure).
    pub fn evicted(&self) -> bool {
        self.reason.as_deref() == Some("Evicted")
    }

    /// `": <message>"` for its termination message (trimmed, at most 1 KiB), else nothing.
    pub fn quoted_message(&self) -> String {
        let Some(m) = self
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        else {
            return String::new();
        };
        let mut end = m.len().min(1024);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        format!(": {}", &m[..end])
    }
}

/// Whether `pod`'s controller owner reference is the object with UID `uid`.
pub fn owned_by(pod: &Pod, uid: Option<&str>) -> bool {
    let Some(uid) = uid else {
        return false;
    };
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// `job_uid`: the UID of the job the pod is looked at for; a pod whose controller owner
/// reference names another UID is foreign. `node(name)`: the state of the pod's node.
pub fn pod_facts<R>(
    pod: &Pod,
    job_uid: Option<&str>,
    role: Option<R>,
    containers: Containers,
    node: impl Fn(&str) -> NodeState,
) -> PodFacts<R> {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    let terminated = terminated(pod, containers);
    let t = terminated.and_then(|c| Some((c, c.state.as_ref()?.terminated.as_ref()?)));
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let node_state = node_name.map(&node);
    PodFacts {
        name: pod.name_any(),
        role,
        attempt: pod
            .labels()
            .get(janus_crds::labels::ATTEMPT)
            .and_then(|v| v.parse().ok()),
        phase,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        container: t.map(|(c, _)| c.name.clone()),
        exit_code: t.map(|(_, t)| t.exit_code),
        message: t.and_then(|(_, t)| t.message.clone()),
        finished_at: t.and_then(|(_, t)| t.finished_at.as_ref()).map(|t| t.0),
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        reason: status.and_then(|s| s.reason.clone()),
        waiting: (phase == PodPhase::Pending)
            .then(|| waiting_reason(pod, containers))
            .flatten(),
        disrupted: disruption(pod),
        node_lost: node_state == Some(NodeState::Missing),
        node_down: match (node_name, node_state) {
            (Some(n), Some(NodeState::Down(since, why, kubelet))) => Some(NodeDown {
                node: n.to_string(),
                since,
                why,
                kubelet,
            }),
            _ => None,
        },
        foreign: !owned_by(pod, job_uid),
    }
}

/// The container whose termination speaks for the pod: the one container read, or the
/// first (init containers first) that exited non-zero.
fn terminated(pod: &Pod, containers: Containers) -> Option<&ContainerStatus> {
    let ended = |c: &&ContainerStatus| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| containers != Containers::All || t.exit_code != 0)
    };
    containers.statuses(pod).find(ended)
}

fn disruption(pod: &Pod) -> Option<(String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Why a pending pod does not start, in the words of the component that knows: the
/// kubelet's waiting reason of a container (image pulls, a missing Secret or key), or
/// the scheduler's Unschedulable message.
pub fn waiting_reason(pod: &Pod, containers: Containers) -> Option<(&'static str, String)> {
    let status = pod.status.as_ref()?;
    let container = containers.statuses(pod).find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let r = reason::CONTAINER_WAITING
            .iter()
            .find(|r| w.reason.as_deref() == Some(**r))?;
        Some((*r, w.message.clone().unwrap_or_default()))
    });
    container.or_else(|| {
        let c = status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        (c.reason.as_deref() == Some("Unschedulable")).then(|| {
            (
                reason::WORKERS_PENDING,
                format!(
                    "cannot be scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ),
            )
        })
    })
}

/// `"<noun> <pod> <why>"`: a waiting reason in a condition message.
pub fn waiting_text(noun: &str, pod: &str, reason: &str, message: &str) -> String {
    if reason == reason::WORKERS_PENDING {
        format!("{noun} {pod} {message}")
    } else {
        format!("{noun} {pod} cannot start ({reason}): {message}")
    }
}

/// Keep in a pod cache only what decisions read (memory: 1,600 pods of 200 jobs): the
/// node it is bound to, the scheduler's verdict of a pod it cannot place and a
/// disruption, the statuses of the containers read, and the progress annotation.
pub fn slim_pod(p: &mut Pod, annotation: &str, containers: Containers) {
    p.metadata.managed_fields = None;
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.retain(|k, _| k == annotation);
    }
    if let Some(spec) = p.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(st) = p.status.as_mut() {
        if let Some(c) = st.conditions.as_mut() {
            // Ready is what Kueue's PodsReady reads (a gang is started once every
            // pod is Ready); the cache keeps it so that a pod turning Ready (or not)
            // reconciles its job with the fact in hand.
            c.retain(|c| {
                (c.type_ == "PodScheduled" && c.status == "False")
                    || (c.type_ == "DisruptionTarget" && c.status == "True")
                    || c.type_ == "Ready"
            });
        }
        st.pod_ips = None;
        st.host_ips = None;
        if let Containers::Only(name) = containers {
            if let Some(cs) = st.container_statuses.as_mut() {
                cs.retain(|c| c.name == name);
            }
        }
    }
}

#[cfg(test)]
mod tests;
