//! Nodes as the decisions see them: does a pod's node exist, is it Ready, and since
//! when not. Every kind watches the nodes its pods run on: a node deleted, or whose
//! readiness changed, reconciles the jobs with a pod there.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// What the decisions know of a pod's node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    /// No such node (any more).
    Missing,
    Ready,
    /// Not Ready since then, for this reason; whether its kubelet may still run pods.
    Down(Timestamp, String, Kubelet),
}

/// Whether the kubelet of a node that is not Ready may still run its pods: what
/// decides if they may be force-deleted (grace period 0) while the new ones are made
/// under the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kubelet {
    /// `Ready=False` or the `not-ready` taint: the kubelet reports, so the old
    /// containers may still run (and write checkpoints); a deletion is confirmed by it
    /// once they have stopped. Never force-deleted.
    Alive,
    /// `Ready=Unknown` or the `unreachable` taint: nothing has reported since; past the
    /// toleration its pods are force-deleted, as taint-based eviction would.
    Silent,
    /// The `out-of-service` taint: an administrator says the node is shut down (the
    /// non-graceful node shutdown); its pods are force-deleted at once.
    OutOfService,
}

/// Taints the node lifecycle controller puts on a node whose kubelet does not report
/// Ready (and the taint-based eviction reads), and the administrator's out-of-service.
const DOWN_TAINTS: [(&str, Kubelet); 3] = [
    ("node.kubernetes.io/unreachable", Kubelet::Silent),
    ("node.kubernetes.io/not-ready", Kubelet::Alive),
    ("node.kubernetes.io/out-of-service", Kubelet::OutOfService),
];

/// Whether `node` is Ready, or since when it is not and why: its `Ready` condition not
/// `True` (kubelet reporting NotReady, or `Unknown`: no kubelet reports at all), or a
/// not-ready / unreachable / out-of-service taint. The gravest sign counts (an
/// out-of-service taint over a silent kubelet over one reporting NotReady), from the
/// earliest time of that sign.
pub fn node_state(node: &Node) -> NodeState {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let mut down: Vec<(Timestamp, String, Kubelet)> = vec![];
    if let Some(c) = ready.filter(|c| c.status != "True") {
        let why = format!(
            "Ready={} ({}: {})",
            c.status,
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or("")
        );
        let since = c
            .last_transition_time
            .as_ref()
            .or(c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let kubelet = if c.status == "False" {
            Kubelet::Alive
        } else {
            Kubelet::Silent
        };
        // Without a time it cannot say how long (down since 1970 would force-delete at
        // once); the taints, which carry one, still count.
        if let Some(since) = since {
            down.push((since, why, kubelet));
        }
    }
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        let Some((_, kubelet)) = DOWN_TAINTS.iter().find(|(k, _)| *k == t.key) else {
            continue;
        };
        // The API server stamps NoExecute taints; an out-of-service NoSchedule one may
        // come without a time, and is acted on at once whatever its time.
        let at = t
            .time_added
            .as_ref()
            .map(|t| t.0)
            .or((*kubelet == Kubelet::OutOfService).then_some(Timestamp::UNIX_EPOCH));
        if let Some(at) = at {
            down.push((at, format!("taint {}:{}", t.key, t.effect), *kubelet));
        }
    }
    let Some(gravest) = down.iter().map(|(_, _, k)| *k).max() else {
        return NodeState::Ready;
    };
    down.retain(|(_, _, k)| *k == gravest);
    // The Ready condition's words when it is of that sign (they say the most).
    let why = down[0].1.clone();
    let since = down.iter().map(|(t, _, _)| *t).min().expect("one sign");
    NodeState::Down(since, why, gravest)
}

/// The state of node `name` in `nodes`.
pub fn state_in(nodes: &Store<Node>, name: &str) -> NodeState {
    match nodes.get(&ObjectRef::new(name)) {
        Some(node) => node_state(&node),
        None => NodeState::Missing,
    }
}

/// Only what [`node_state`] reads: does the node exist, is it Ready, since when not
/// (its Ready condition and the not-ready / unreachable / out-of-service taints).
pub fn slim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.metadata.labels = None;
    let taints = n.spec.as_mut().and_then(|s| s.taints.take()).map(|mut t| {
        t.retain(|t| t.key.starts_with("node.kubernetes.io/"));
        t
    });
    n.spec = Some(NodeSpec {
        taints,
        ..Default::default()
    });
    let ready = n
        .status
        .as_mut()
        .and_then(|s| s.conditions.take())
        .map(|mut c| {
            c.retain(|c| c.type_ == "Ready");
            // The heartbeat changes every few seconds; decisions never read it.
            for c in &mut c {
                c.last_heartbeat_time = None;
            }
            c
        });
    n.status = Some(NodeStatus {
        conditions: ready,
        ..Default::default()
    });
}

type NodeEvent = std::result::Result<watcher::Event<Node>, watcher::Error>;
type NodeItem = std::result::Result<Node, watcher::Error>;

/// Nodes whose jobs to reconcile: those deleted, and those whose readiness changed
/// (became NotReady, unreachable or out of service, or Ready again); heartbeats pass
/// unnoticed.
pub fn transitions() -> impl FnMut(NodeEvent) -> futures::future::Ready<Option<NodeItem>> {
    let mut seen: HashMap<String, NodeState> = Default::default();
    move |ev| {
        let out = match ev {
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                Some(Ok(n))
            }
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let state = node_state(&n);
                let changed = seen
                    .insert(n.name_any(), state.clone())
                    .map_or(state != NodeState::Ready, |old| old != state);
                changed.then_some(Ok(n))
            }
            _ => None,
        };
        futures::future::ready(out)
    }
}

/// Jobs (named by label `label` on their pods) with a pod on `node`.
pub fn jobs_on_node<K>(pods: &Store<Pod>, label: &str, node: &Node) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let name = node.name_any();
    let mut out: Vec<ObjectRef<K>> = pods
        .state()
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
        .filter_map(|p| {
            let job = p.labels().get(label)?;
            Some(ObjectRef::new(job).within(&p.namespace()?))
        })
        .collect();
    out.sort_by(|a, b| {
        (a.namespace.as_deref(), a.name.as_str()).cmp(&(b.namespace.as_deref(), b.name.as_str()))
    });
    out.dedup();
    out
}
