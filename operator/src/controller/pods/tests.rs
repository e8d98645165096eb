//! Unit tests of `controller::pods` (and of the node states pods are looked at with).

use super::*;
use crate::controller::nodes::{node_state, Kubelet};
use janus_crds::pods::reason;
use k8s_openapi::api::core::v1::Node;

/// A training worker's one container.
const TRAINER: Containers = Containers::Only("trainer");

fn pending_pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j-worker-1", "labels": {"janus.dev/rank": "1", "janus.dev/attempt": "0"}},
        "status": status
    }))
    .unwrap()
}

#[test]
fn the_kubelets_and_the_schedulers_words_say_why_a_worker_waits() {
    for r in [
        "ErrImagePull",
        "ImagePullBackOff",
        "CreateContainerConfigError",
    ] {
        let p = pending_pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [
            {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": r, "message": "secret \"s3\" not found"}}}]}),
        );
        let f = pod_facts(&p, None, None::<i32>, TRAINER, |_| NodeState::Ready);
        assert_eq!(
            f.waiting,
            Some((r_static(r), "secret \"s3\" not found".into()))
        );
    }
    let p = pending_pod(serde_json::json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}));
    let (r, m) = waiting_reason(&p, TRAINER).unwrap();
    assert_eq!(r, "WorkersPending");
    assert!(m.contains("Insufficient nvidia.com/gpu"), "{m}");
    // ContainerCreating is normal progress, not a stuck state.
    let p = pending_pod(
        serde_json::json!({"phase": "Pending", "containerStatuses": [
        {"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
    );
    assert_eq!(waiting_reason(&p, TRAINER), None);
}

fn r_static(r: &str) -> &'static str {
    reason::CONTAINER_WAITING.iter().find(|x| **x == r).unwrap()
}

#[test]
fn a_node_not_ready_or_tainted_unreachable_is_down_since_the_earliest_sign() {
    let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
    let ready = node(serde_json::json!({"metadata": {"name": "n"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    assert_eq!(node_state(&ready), NodeState::Ready);
    let unknown = node(serde_json::json!({"metadata": {"name": "n"},
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                             "timeAdded": "2026-01-01T12:00:05Z"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown",
            "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
            "lastTransitionTime": "2026-01-01T12:00:03Z"}]}}));
    assert_eq!(
        node_state(&unknown),
        NodeState::Down(
            "2026-01-01T12:00:03Z".parse().unwrap(),
            "Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".into(),
            Kubelet::Silent
        )
    );
    let tainted = node(serde_json::json!({"metadata": {"name": "n"},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule",
                             "timeAdded": "2026-01-01T12:00:05Z"}]}}));
    assert!(
        matches!(node_state(&tainted), NodeState::Down(_, w, Kubelet::Alive) if w == "taint node.kubernetes.io/not-ready:NoSchedule")
    );
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j-worker-0"}, "spec": {"nodeName": "n", "containers": []}}))
    .unwrap();
    let f = pod_facts(&pod, None, None::<i32>, TRAINER, |_| node_state(&unknown));
    assert_eq!(f.node_down.map(|d| d.node), Some("n".to_string()));
    assert!(!f.node_lost);
}

#[test]
fn a_node_is_judged_by_its_gravest_sign_kubelet_reporting_silent_or_out_of_service() {
    let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
    let not_ready = node(serde_json::json!({"metadata": {"name": "n"},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                             "timeAdded": "2026-01-01T12:00:05Z"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False",
            "reason": "KubeletNotReady", "message": "PLEG is not healthy",
            "lastTransitionTime": "2026-01-01T12:00:03Z"}]}}));
    assert_eq!(
        node_state(&not_ready),
        NodeState::Down(
            "2026-01-01T12:00:03Z".parse().unwrap(),
            "Ready=False (KubeletNotReady: PLEG is not healthy)".into(),
            Kubelet::Alive
        )
    );
    // NotReady first, then silent: the toleration counts from the silence.
    let silent = node(serde_json::json!({"metadata": {"name": "n"},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                             "timeAdded": "2026-01-01T12:00:05Z"},
                            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                             "timeAdded": "2026-01-01T12:10:00Z"}]}}));
    assert_eq!(
        node_state(&silent),
        NodeState::Down(
            "2026-01-01T12:10:00Z".parse().unwrap(),
            "taint node.kubernetes.io/unreachable:NoExecute".into(),
            Kubelet::Silent
        )
    );
    let out = node(serde_json::json!({"metadata": {"name": "n"},
        "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                             "effect": "NoSchedule"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False",
            "reason": "KubeletNotReady", "message": "shutting down",
            "lastTransitionTime": "2026-01-01T12:00:03Z"}]}}));
    assert!(
        matches!(node_state(&out), NodeState::Down(_, w, Kubelet::OutOfService) if w == "taint node.kubernetes.io/out-of-service:NoSchedule"),
        "{:?}",
        node_state(&out)
    );
    // What the node watch keeps of it still says so.
    let mut slim = out.clone();
    crate::controller::nodes::slim_node(&mut slim);
    assert_eq!(node_state(&slim), node_state(&out));
}

#[test]
fn with_every_container_read_an_init_container_that_cannot_start_says_why() {
    let p = pending_pod(serde_json::json!({"phase": "Pending",
        "initContainerStatuses": [{"name": "judge", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}],
        "containerStatuses": [{"name": "score", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "PodInitializing"}}}]}));
    assert_eq!(
        waiting_reason(&p, Containers::All),
        Some(("ErrImagePull", "not found".into()))
    );
    assert_eq!(
        waiting_reason(&p, TRAINER),
        None,
        "a trainer pod reads its trainer only"
    );
}

#[test]
fn a_termination_message_is_quoted_trimmed_and_at_most_a_kibibyte() {
    let mut f = pod_facts(
        &pending_pod(serde_json::json!({})),
        None,
        None::<i32>,
        TRAINER,
        |_| NodeState::Ready,
    );
    assert_eq!(f.quoted_message(), "");
    f.message = Some("  bad input\n".into());
    assert_eq!(f.quoted_message(), ": bad input");
    f.message = Some("é".repeat(700));
    assert!(f.quoted_message().len() <= 1026);
}

#[test]
fn a_refused_create_quotes_the_api_server_in_the_kinds_words() {
    use crate::controller::stuck::refused;
    assert_eq!(
        refused("worker", "j-worker-0", "forbidden: exceeded quota"),
        "creating worker pod j-worker-0 was refused: forbidden: exceeded quota"
    );
    assert_eq!(
        refused("pod", "e-generate-0", "forbidden"),
        "creating pod e-generate-0 was refused: forbidden"
    );
}

#[test]
fn the_slim_pod_cache_keeps_the_ready_condition_kueues_pods_ready_reads() {
    let mut p = pending_pod(serde_json::json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"}
    ]}));
    slim_pod(&mut p, "janus.dev/progress", TRAINER);
    let kept: Vec<(String, String)> = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert_eq!(kept, vec![("Ready".to_string(), "True".to_string())]);
}
