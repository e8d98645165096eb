//! Stuck states against the real control plane, for both kinds (issue 24): a training
//! job's workers and an evaluation's generation pods in the same state get the same
//! condition reasons and Events. Each test runs as `<test>::training` and
//! `<test>::eval`, each in its own namespace with its own operator process.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use super::kinds::{for_each_kind, Ask, Kind};
use super::{wait_warnings, warnings};
use crate::support::*;

const T: Duration = Duration::from_secs(60);

/// The `Running` condition of `job` once its reason is `reason`.
async fn wait_running_reason(
    kind: Kind,
    c: &Client,
    ns: &str,
    job: &str,
    reason: &str,
) -> Condition {
    wait_for(&format!("the {reason} condition"), T, || async {
        let cond = kind.condition(c, ns, job, "Running").await?;
        (cond.reason == reason).then_some(cond)
    })
    .await
}

/// What a kubelet reports of a started pod (the test's node has no kubelet, nor kwok).
async fn report_running(kind: Kind, c: &Client, ns: &str, pod: &str) {
    let patch = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": kind.container(), "image": "ghcr.io/janus/trainer:test",
            "imageID": "", "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}});
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

/// The words of `job`'s restart for `reason`: a training job's Restarting condition
/// (with that reason), an evaluation's Warning Event (it restarts one pod at a time
/// and has no such condition).
async fn restart_words(kind: Kind, c: &Client, ns: &str, job: &str, reason: &str) -> String {
    match kind {
        Kind::Training => {
            let cond = kind.condition(c, ns, job, "Restarting").await.unwrap();
            assert_eq!(cond.reason, reason);
            cond.message
        }
        Kind::Eval => {
            let ev = wait_warnings(c, ns, reason).await;
            ev[0].note.clone().unwrap_or_default()
        }
    }
}

/// A pod the scheduler cannot place: Running=False, reason WorkersPending, quoting
/// the scheduler, and a Warning Event with the same words.
async fn an_unschedulable_worker_is_a_condition_and_a_warning_quoting_the_scheduler(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("unschedulable")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    // The fake nodes have 8 GPUs each.
    let ask = Ask {
        gpus: Some(64),
        ..Ask::pods(2)
    };
    kind.create(&c, &ns, "big", &ask).await;
    let cond = wait_running_reason(kind, &c, &ns, "big", "WorkersPending").await;
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains(&kind.pod_prefix("big"))
            && cond.message.contains("cannot be scheduled")
            && cond.message.contains("Insufficient nvidia.com/gpu"),
        "{}",
        cond.message
    );
    let first = wait_warnings(&c, &ns, "WorkersPending").await;
    let note = first[0].note.as_deref().unwrap_or("");
    assert!(note.contains("Insufficient nvidia.com/gpu"), "{note}");
}
for_each_kind!(an_unschedulable_worker_is_a_condition_and_a_warning_quoting_the_scheduler);

/// A pod the API server refuses (here a ResourceQuota of 0 pods: 403): Running
/// False with reason FailedCreate quoting the API server, one Warning Event, and the
/// pods are created once the quota is lifted.
async fn a_refused_pod_create_is_a_condition_and_a_warning_and_is_retried(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("quota")).await;
    let quotas: Api<ResourceQuota> = Api::namespaced(c.clone(), &ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    kind.create(&c, &ns, "refused", &Ask::pods(2)).await;
    let cond = wait_running_reason(kind, &c, &ns, "refused", "FailedCreate").await;
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains(&kind.pod_prefix("refused"))
            && cond.message.contains("forbidden")
            && cond.message.contains("quota"),
        "{}",
        cond.message
    );
    assert!(kind.pods(&c, &ns, "refused").await.is_empty());
    let first = wait_warnings(&c, &ns, "FailedCreate").await;
    assert!(
        first[0].note.as_deref().unwrap_or("").contains("quota"),
        "{:?}",
        first[0].note
    );
    quotas.delete("no-pods", &Default::default()).await.unwrap();
    kind.wait_phase(
        &c,
        &ns,
        "refused",
        kind.running_phase(),
        Duration::from_secs(120),
    )
    .await;
    // Retries of the same refusal did not repeat the Event (the quota's first words
    // may be "status unknown" before its controller counted the namespace).
    let n: i32 = warnings(&c, &ns, "FailedCreate")
        .await
        .iter()
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum();
    assert!(n <= 2, "{n} FailedCreate events for one refusal");
}
for_each_kind!(a_refused_pod_create_is_a_condition_and_a_warning_and_is_retried);

/// `runPolicy.schedulingTimeoutSeconds`: pods the scheduler cannot place fail the
/// job with reason SchedulingTimeout quoting the scheduler once the timeout passed.
async fn a_gang_not_running_within_the_scheduling_timeout_fails_quoting_the_scheduler(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("sched-timeout")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let ask = Ask {
        gpus: Some(64),
        scheduling_timeout_seconds: Some(3),
        ..Ask::pods(2)
    };
    kind.create(&c, &ns, "late", &ask).await;
    kind.wait_phase(&c, &ns, "late", "Failed", T).await;
    let cond = kind.condition(&c, &ns, "late", "Failed").await.unwrap();
    assert_eq!(cond.reason, "SchedulingTimeout");
    assert!(
        cond.message.contains("3s") && cond.message.contains("Insufficient nvidia.com/gpu"),
        "{}",
        cond.message
    );
}
for_each_kind!(a_gang_not_running_within_the_scheduling_timeout_fails_quoting_the_scheduler);

/// A pod whose image cannot be pulled, or whose container cannot be configured (a
/// missing Secret): kwok's `pod-container-waiting` stage reports it as a kubelet
/// does (tests/controlplane/kwok-stages.yaml) for a pod annotated with the reason,
/// annotated here while no node may take it yet. The job says Running=False with
/// the kubelet's reason and words, and publishes a Warning Event with them.
async fn a_worker_the_kubelet_cannot_start_is_a_condition_and_a_warning_in_its_words(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("container-waiting")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let cases = [
        (
            "pull",
            "ImagePullBackOff",
            "Back-off pulling image \"ghcr.io/janus/trainer:no-such-tag\": ErrImagePull: failed to pull and unpack image \"ghcr.io/janus/trainer:no-such-tag\": not found",
        ),
        (
            "pull-err",
            "ErrImagePull",
            "failed to pull image \"ghcr.io/janus/trainer:no-such-tag\": rpc error: code = NotFound",
        ),
        (
            "config",
            "CreateContainerConfigError",
            "secret \"missing-credentials\" not found",
        ),
    ];
    // Only a node labelled for this test takes the pods, and none is until they
    // carry the annotation (kwok would start them first). No GPUs: the shared
    // cluster's are for the tests that run on them.
    let pool = format!("test.janus.dev/{ns}");
    let ask = Ask {
        gpus: Some(0),
        pool: Some((pool.clone(), "true".into())),
        ..Ask::pods(2)
    };
    for (job, _, _) in cases {
        kind.create(&c, &ns, job, &ask).await;
    }
    let pods_api: Api<Pod> = Api::namespaced(c.clone(), &ns);
    for (job, why, words) in cases {
        let ps = wait_for(&format!("the pods of {job}"), T, || async {
            let ps = kind.pods(&c, &ns, job).await;
            (ps.len() == 2).then_some(ps)
        })
        .await;
        let waiting = json!({"metadata": {"annotations": {
            "test.janus.dev/container-waiting": why,
            "test.janus.dev/container-waiting-message": words}}});
        for p in ps {
            pods_api
                .patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&waiting),
                )
                .await
                .unwrap();
        }
    }
    let nodes: Api<Node> = Api::all(c.clone());
    let label = |v: Value| json!({"metadata": {"labels": {&pool: v}}});
    nodes
        .patch(
            "kwok-node-0",
            &PatchParams::default(),
            &Patch::Merge(label(json!("true"))),
        )
        .await
        .unwrap();
    for (job, why, words) in cases {
        let cond = wait_running_reason(kind, &c, &ns, job, why).await;
        assert_eq!(cond.status, "False");
        assert!(
            cond.message
                .starts_with(&format!("{} {}", kind.noun(), kind.pod_prefix(job)))
                && cond
                    .message
                    .contains(&format!("cannot start ({why}): {words}")),
            "{}",
            cond.message
        );
        let ev = wait_warnings(&c, &ns, why).await;
        assert!(
            ev.iter()
                .any(|e| e.note.as_deref().unwrap_or("").contains(words)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job)),
            "{ev:?}"
        );
        assert_eq!(kind.phase(&c, &ns, job).await, "Pending");
    }
    nodes
        .patch(
            "kwok-node-0",
            &PatchParams::default(),
            &Patch::Merge(label(Value::Null)),
        )
        .await
        .unwrap();
}
for_each_kind!(a_worker_the_kubelet_cannot_start_is_a_condition_and_a_warning_in_its_words);

/// A node whose kubelet stops reporting (Ready=Unknown and the unreachable taints,
/// as the node lifecycle controller leaves it; nothing completes a deletion of its
/// pods then, so they would stay Terminating forever and block the names of the new
/// ones): after `runPolicy.unreachableNodeTolerationSeconds` the pods restart
/// without counting towards `backoffLimit: 0`, the restart's words and a Warning
/// Event name the node, the pods there are force-deleted and the new ones are
/// created under the same names.
async fn pods_on_an_unreachable_node_are_force_deleted_after_the_toleration(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("unreachable")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    // A node of this test's own (no kwok annotation: the test plays its kubelet),
    // that only this job's pods tolerate and select.
    let node_name = format!("{ns}-node");
    let nodes: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name, "labels": {"janus.dev/test-pool": ns}},
        "spec": {"taints": [{"key": "janus.dev/test-pool", "value": ns, "effect": "NoSchedule"}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = || jiff::Timestamp::now().to_string();
    let ready = json!({"status": {
        "capacity": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
        "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now(),
            "lastTransitionTime": now()}]}});
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Strategic(ready),
        )
        .await
        .unwrap();

    let ask = Ask {
        backoff_limit: Some(0),
        unreachable_node_toleration_seconds: Some(3),
        pool: Some(("janus.dev/test-pool".into(), ns.clone())),
        ..Ask::pods(2)
    };
    kind.create(&c, &ns, "far", &ask).await;
    let old = wait_for("both pods bound to the test's node", T, || async {
        let ps = kind.pods(&c, &ns, "far").await;
        let bound = ps.len() == 2
            && ps.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
            });
        bound.then_some(ps)
    })
    .await;
    for p in &old {
        report_running(kind, &c, &ns, &p.name_any()).await;
    }
    kind.wait_running(&c, &ns, "far", 2, 0).await;

    // The kubelet goes silent.
    let unknown = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown",
        "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
        "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Strategic(unknown),
        )
        .await
        .unwrap();
    let taints = json!({"spec": {"taints": [
        {"key": "janus.dev/test-pool", "value": ns, "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": now()},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now()}]}});
    nodes
        .patch(&node_name, &PatchParams::default(), &Patch::Merge(taints))
        .await
        .unwrap();
    let down = std::time::Instant::now();

    let s = wait_for("the restart after the toleration", T, || async {
        let s = kind.status(&c, &ns, "far").await;
        (kind.attempt(&s) == 1).then_some(s)
    })
    .await;
    assert!(
        down.elapsed() >= Duration::from_secs(2),
        "restarted {:?} after the node went down, within the 3 s toleration",
        down.elapsed()
    );
    assert_eq!(kind.counted_restarts(&s), 0);
    let words = restart_words(kind, &c, &ns, "far", "NodeUnreachable").await;
    assert!(
        words.contains(&format!(
            "node {node_name} of {} {}",
            kind.noun(),
            kind.pod_prefix("far")
        )) && words.contains("Kubelet stopped posting node status.")
            && words.contains("unreachableNodeTolerationSeconds (3s)"),
        "{words}"
    );
    let ev = wait_warnings(&c, &ns, "NodeUnreachable").await;
    assert!(
        ev[0].note.as_deref().unwrap_or("").contains(&node_name),
        "{:?}",
        ev[0].note
    );
    // The old pods are gone (no kubelet could have confirmed a graceful deletion),
    // and the new ones hold the same names.
    let old_uids: Vec<_> = old.iter().map(|p| p.metadata.uid.clone()).collect();
    let new = wait_for("the pods of attempt 1", T, || async {
        let ps = kind.pods(&c, &ns, "far").await;
        let fresh = ps.len() == 2
            && ps.iter().all(|p| {
                p.labels().get("janus.dev/attempt").map(String::as_str) == Some("1")
                    && !old_uids.contains(&p.metadata.uid)
            });
        fresh.then_some(ps)
    })
    .await;
    let names: Vec<_> = new.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, kind.pod_names("far", 2));
    for p in &old {
        let now_there = Api::<Pod>::namespaced(c.clone(), &ns)
            .get(&p.name_any())
            .await
            .unwrap();
        assert_ne!(now_there.metadata.uid, p.metadata.uid);
    }
    nodes.delete(&node_name, &Default::default()).await.unwrap();
}
for_each_kind!(pods_on_an_unreachable_node_are_force_deleted_after_the_toleration);

/// The pods pass the `restricted` Pod Security Standard: a namespace that enforces
/// it admits them and they run. A training job's template override cannot swap the
/// workers' ServiceAccount (the API server refuses it, naming the rule; an
/// evaluation has no template).
async fn a_restricted_namespace_admits_the_workers_and_the_service_account_stays_the_jobs(
    kind: Kind,
) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("restricted")).await;
    let label = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"
    }}});
    Api::<Namespace>::all(c.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    kind.create(&c, &ns, "safe", &Ask::pods(2)).await;
    kind.wait_phase(
        &c,
        &ns,
        "safe",
        kind.running_phase(),
        Duration::from_secs(120),
    )
    .await;
    kind.wait_running(&c, &ns, "safe", 2, 0).await;
    assert!(warnings(&c, &ns, "FailedCreate").await.is_empty());
    if kind != Kind::Training {
        return;
    }

    for field in [
        json!({"serviceAccountName": "default"}),
        json!({"automountServiceAccountToken": true}),
    ] {
        let mut spec = kind.spec(&Ask::pods(1));
        spec["workers"]["template"] = json!({"spec": field});
        let obj = json!({
            "apiVersion": "janus.dev/v1alpha1",
            "kind": kind.name(),
            "metadata": {"name": "swap"},
            "spec": spec
        });
        let err = kind
            .api(&c, &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value::<DynamicObject>(obj).unwrap(),
            )
            .await
            .expect_err("a template that sets the ServiceAccount is refused");
        assert!(
            err.to_string().contains("may not set serviceAccountName"),
            "{err}"
        );
    }
}
for_each_kind!(a_restricted_namespace_admits_the_workers_and_the_service_account_stays_the_jobs);

/// `runPolicy.ttlSecondsAfterFinished`: a failed job is deleted once its TTL passed.
/// The delete names the finished job's UID: a job deleted and created again under
/// its name before its TTL passed is a new job, not deleted for the old one.
async fn a_finished_job_is_deleted_after_its_ttl_and_a_new_one_of_its_name_is_kept(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("ttl-uid")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let ask = |ttl| Ask {
        gpus: Some(0),
        backoff_limit: Some(0),
        ttl_seconds_after_finished: Some(ttl),
        ..Ask::pods(1)
    };
    let fail = |job: &'static str| {
        let c = c.clone();
        let ns = ns.clone();
        async move {
            kind.wait_running(&c, &ns, job, 1, 0).await;
            kind.exit(&c, &ns, &kind.pod_names(job, 1)[0], 1).await;
            let s = kind.wait_phase(&c, &ns, job, "Failed", T).await;
            assert!(s["completionTime"].is_string(), "{s}");
        }
    };
    kind.create(&c, &ns, "t", &ask(3)).await;
    fail("t").await;
    wait_for("the job deleted by its TTL", T, || async {
        kind.get(&c, &ns, "t").await.is_none().then_some(())
    })
    .await;

    let first = kind.create(&c, &ns, "u", &ask(6)).await;
    fail("u").await;
    let api = kind.api(&c, &ns);
    api.delete("u", &Default::default()).await.unwrap();
    wait_for("the first u gone", T, || async {
        kind.get(&c, &ns, "u").await.is_none().then_some(())
    })
    .await;
    let second = kind.create(&c, &ns, "u", &ask(6)).await;
    assert_ne!(first.uid(), second.uid());
    kind.wait_running(&c, &ns, "u", 1, 0).await;
    // Past the first one's TTL.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let now_there = kind.get(&c, &ns, "u").await.expect("the second u is kept");
    assert_eq!(now_there.uid(), second.uid());
    assert_eq!(kind.phase(&c, &ns, "u").await, kind.running_phase());
}
for_each_kind!(a_finished_job_is_deleted_after_its_ttl_and_a_new_one_of_its_name_is_kept);

/// A node of the test's own (no kwok annotation: the test plays its kubelet), Ready,
/// that only the job's pods of this namespace tolerate and select.
async fn own_node(c: &Client, ns: &str) -> (Api<Node>, String) {
    let node_name = format!("{ns}-node");
    let nodes: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name, "labels": {"janus.dev/test-pool": ns}},
        "spec": {"taints": [{"key": "janus.dev/test-pool", "value": ns, "effect": "NoSchedule"}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    let ready = json!({"status": {
        "capacity": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
        "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
            "lastTransitionTime": now}]}});
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Strategic(ready),
        )
        .await
        .unwrap();
    (nodes, node_name)
}

/// Node fencing (issue 30): a node whose kubelet still reports (`Ready=False`, the
/// not-ready taint) may still run the old containers, so past the toleration the pods
/// restart uncounted (`NodeNotReady`, naming the node) but are deleted with their grace
/// period, never forced: they stay Terminating and no pod of the new attempt is made
/// under their names until the kubelet (played by the test) confirms them gone.
async fn pods_on_a_not_ready_node_are_never_force_deleted(kind: Kind) {
    let c = client().await;
    let ns = namespace(&c, &kind.ns("notready")).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let (nodes, node_name) = own_node(&c, &ns).await;
    let ask = Ask {
        backoff_limit: Some(0),
        unreachable_node_toleration_seconds: Some(3),
        pool: Some(("janus.dev/test-pool".into(), ns.clone())),
        ..Ask::pods(2)
    };
    kind.create(&c, &ns, "near", &ask).await;
    let old = wait_for("both pods bound to the test's node", T, || async {
        let ps = kind.pods(&c, &ns, "near").await;
        let bound = ps.len() == 2
            && ps.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
            });
        bound.then_some(ps)
    })
    .await;
    for p in &old {
        report_running(kind, &c, &ns, &p.name_any()).await;
    }
    kind.wait_running(&c, &ns, "near", 2, 0).await;

    // The kubelet reports NotReady (its container runtime broke), and the node
    // lifecycle controller's taints follow.
    let now = || jiff::Timestamp::now().to_string();
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
        "reason": "KubeletNotReady", "message": "container runtime network not ready",
        "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Strategic(not_ready),
        )
        .await
        .unwrap();
    let taints = json!({"spec": {"taints": [
        {"key": "janus.dev/test-pool", "value": ns, "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": now()},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": now()}]}});
    nodes
        .patch(&node_name, &PatchParams::default(), &Patch::Merge(taints))
        .await
        .unwrap();

    let s = wait_for("the restart after the toleration", T, || async {
        let s = kind.status(&c, &ns, "near").await;
        (kind.attempt(&s) == 1).then_some(s)
    })
    .await;
    assert_eq!(kind.counted_restarts(&s), 0);
    let words = restart_words(kind, &c, &ns, "near", "NodeNotReady").await;
    assert!(
        words.contains(&format!("node {node_name} of {}", kind.noun()))
            && words.contains("container runtime network not ready")
            && words.contains("never forced"),
        "{words}"
    );
    wait_warnings(&c, &ns, "NodeNotReady").await;

    // Deleted with their grace period, and left Terminating: nobody forces them, and
    // nothing of attempt 1 takes their names.
    let old_uids: Vec<_> = old.iter().map(|p| p.metadata.uid.clone()).collect();
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let terminating = |ps: &[Pod]| {
        ps.len() == 2
            && ps.iter().all(|p| {
                old_uids.contains(&p.metadata.uid) && p.metadata.deletion_timestamp.is_some()
            })
    };
    let ps = wait_for("the old pods Terminating", T, || async {
        let ps = kind.pods(&c, &ns, "near").await;
        terminating(&ps).then_some(ps)
    })
    .await;
    for p in &ps {
        let grace = p.metadata.deletion_grace_period_seconds;
        assert!(grace.is_some_and(|g| g > 0), "{}: {grace:?}", p.name_any());
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ps = kind.pods(&c, &ns, "near").await;
    assert!(
        terminating(&ps),
        "still the old pods, still Terminating, 6 s later: {:?}",
        ps.iter()
            .map(|p| (
                p.name_any(),
                p.metadata.uid.clone(),
                p.metadata.deletion_timestamp.clone()
            ))
            .collect::<Vec<_>>()
    );

    // The kubelet confirms: its containers stopped.
    for p in &old {
        pods.delete(
            &p.name_any(),
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    }
    let new = wait_for("the pods of attempt 1", T, || async {
        let ps = kind.pods(&c, &ns, "near").await;
        let fresh = ps.len() == 2
            && ps.iter().all(|p| {
                p.labels().get("janus.dev/attempt").map(String::as_str) == Some("1")
                    && !old_uids.contains(&p.metadata.uid)
            });
        fresh.then_some(ps)
    })
    .await;
    let names: Vec<_> = new.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, kind.pod_names("near", 2));
    nodes.delete(&node_name, &Default::default()).await.unwrap();
}
for_each_kind!(pods_on_a_not_ready_node_are_never_force_deleted);
