//! Scenario tests of the exact requests one reconcile of a training job makes, on the
//! layer's scripted API server ([`crate::controller::fixtures`], as the evaluation's
//! `eval/fixtures.rs`): a new job, an unchanged one (no request), a failed worker, a
//! refused create, a finished job past its TTL. Requests the run loop sends at the same
//! time (the children and the status) are compared as a set, the rest in order.

use janus_crds::training::JobPhase;
use janus_crds::{JanusTrainingJob, JanusTrainingJobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::json;

use super::gang::Gang;
use crate::controller::fixtures::{self, APPLY, CREATE};
use crate::controller::testing::now;
use crate::controller::Decision;
use crate::training::config_render::tests::representative_job;

const NS: &str = "research";
const JOB: &str = "janus-7b-sft";
const JOB_PATH: &str =
    "/apis/janus.dev/v1alpha1/namespaces/research/janustrainingjobs/janus-7b-sft";
const UID: &str = "4f1c2d7e-0000-4000-8000-000000000001";

fn scenario(job: JanusTrainingJob) -> fixtures::Scenario<JanusTrainingJob> {
    fixtures::Scenario::new(job, JOB_PATH)
}

async fn reconcile(sc: &fixtures::Scenario<JanusTrainingJob>) -> crate::error::Result<Action> {
    sc.reconcile_with(()).await
}

fn job_with(status: Option<JanusTrainingJobStatus>) -> JanusTrainingJob {
    let mut job = representative_job();
    job.status = status;
    job
}

/// The status the first reconcile wrote, then the gang in `phase` (a running gang's).
fn started(phase: JobPhase) -> JanusTrainingJobStatus {
    let job = representative_job();
    let d = Decision::Step(Gang::Progress {
        phase: JobPhase::Pending,
        delete: vec![],
        create: (0..4).collect(),
        requeue_after: None,
    });
    let (mut s, _) = super::status::next_status(&job, &d, &[], None, now());
    if phase == JobPhase::Running {
        let mut job = job.clone();
        job.status = Some(s);
        let d = Decision::Step(Gang::Progress {
            phase,
            delete: vec![],
            create: vec![],
            requeue_after: None,
        });
        let pods: Vec<_> = (0..4)
            .map(|r| {
                super::status::pod_facts(&worker(r, "Running", None), Some(UID), |_| {
                    crate::controller::nodes::NodeState::Ready
                })
            })
            .collect();
        s = super::status::next_status(&job, &d, &pods, None, now()).0;
    }
    s
}

/// Worker `rank` of attempt 0 as the operator made it, in `phase`.
fn worker(rank: i32, phase: &str, exit: Option<i32>) -> Pod {
    let mut p = super::children::worker_pod(&representative_job(), rank, 0).unwrap();
    p.status = Some(
        serde_json::from_value(json!({
            "phase": phase,
            "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": match exit {
                    Some(code) => json!({"terminated": {"exitCode": code, "message": "NCCL timeout"}}),
                    None => json!({"running": {}}),
                }}]
        }))
        .unwrap(),
    );
    p
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_new_job_applies_its_children_and_status_together_then_creates_every_worker() {
    let sc = scenario(job_with(None));
    reconcile(&sc).await.expect("reconcile succeeds");
    let lines = sc.server.lines();
    let ns = format!("/api/v1/namespaces/{NS}");
    assert_eq!(
        sorted(lines[..4].to_vec()),
        sorted(vec![
            format!("PATCH {JOB_PATH}/status{APPLY}"),
            format!("POST {ns}/configmaps{CREATE}"),
            format!("POST {ns}/serviceaccounts{CREATE}"),
            format!("POST {ns}/services{CREATE}"),
        ]),
        "no read first: the cache is as fresh as this process's last write, and a new \
         job's children are created (an apply would take over an object of their name); \
         {lines:?}"
    );
    assert_eq!(lines[4..], vec![format!("POST {ns}/pods?"); 4]);
    let reqs = sc.server.requests();
    let status = reqs.iter().find(|r| r.path.contains("/status")).unwrap();
    assert_eq!(
        status.body["metadata"]["uid"], UID,
        "the uid is a precondition"
    );
    assert_eq!(status.body["status"]["phase"], "Pending");
    for r in &reqs[4..] {
        assert_eq!(r.body["metadata"]["labels"]["janus.dev/attempt"], "0");
    }
    assert_eq!(
        fixtures::created_pods(&reqs[4..]),
        fixtures::numbered(&format!("{JOB}-worker-"), 4)
    );
    assert_eq!(
        sc.server.events(),
        [("JobCreated".to_string(), "Normal".to_string())]
    );
}

#[tokio::test]
async fn a_second_look_at_an_unchanged_job_makes_no_request() {
    let mut sc = scenario(job_with(Some(started(JobPhase::Running))));
    for r in 0..4 {
        sc = sc.with_pod(worker(r, "Running", None));
    }
    let action = reconcile(&sc).await.expect("reconcile succeeds");
    assert!(sc.server.requests().is_empty(), "{:?}", sc.server.lines());
    assert!(sc.server.events().is_empty());
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(300)));
}

#[tokio::test]
async fn a_failed_worker_is_confirmed_on_a_fresh_list_then_the_gang_is_deleted() {
    let mut sc = scenario(job_with(Some(started(JobPhase::Running))));
    for r in 0..4 {
        let (phase, exit) = if r == 2 {
            ("Failed", Some(75))
        } else {
            ("Running", None)
        };
        sc = sc.with_pod(worker(r, phase, exit));
    }
    reconcile(&sc).await.expect("reconcile succeeds");
    let lines = sc.server.lines();
    let ns = format!("/api/v1/namespaces/{NS}");
    assert_eq!(
        lines[..2],
        [
            format!("GET {ns}/pods?&labelSelector=janus.dev%2Fjob%3D{JOB}"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
        ],
        "no create: the new gang reuses the names once the old pods are gone"
    );
    assert_eq!(
        sorted(lines[2..].to_vec()),
        (0..4)
            .map(|r| format!("DELETE {ns}/pods/{JOB}-worker-{r}?"))
            .collect::<Vec<_>>()
    );
    let st = &sc.server.requests()[1].body["status"];
    assert_eq!(st["phase"], "Restarting");
    assert_eq!(
        (
            st["restarts"].as_i64(),
            st["restartsCountedTowardsBackoff"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let restarting = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restarting")
        .unwrap();
    assert_eq!(restarting["reason"], "WorkerFailed");
    assert!(restarting["message"]
        .as_str()
        .unwrap()
        .contains("exited with code 75: NCCL timeout"));
    assert_eq!(
        sc.server.events(),
        [("WorkerFailed".to_string(), "Warning".to_string())]
    );
}

#[tokio::test]
async fn a_refused_create_is_running_false_quoting_the_api_server_with_one_warning() {
    let sc = scenario(job_with(Some(started(JobPhase::Pending))));
    let quota = "pods \"janus-7b-sft-worker-0\" is forbidden: exceeded quota: no-pods, requested: pods=1, used: pods=0, limited: pods=0";
    sc.server
        .refuse("POST", &format!("/api/v1/namespaces/{NS}/pods"), 403, quota);
    let err = reconcile(&sc)
        .await
        .expect_err("the create fails the reconcile (retried with the backoff)");
    assert!(err.to_string().contains("exceeded quota"), "{err}");
    let lines = sc.server.lines();
    let ns = format!("/api/v1/namespaces/{NS}");
    // A job that made its children already reads each before applying it (its own:
    // applied with its UID as precondition; gone: created again).
    let mut expected: Vec<String> = vec![
        format!("GET {ns}/configmaps/{JOB}-config"),
        format!("POST {ns}/configmaps{CREATE}"),
        format!("GET {ns}/serviceaccounts/{JOB}-worker"),
        format!("POST {ns}/serviceaccounts{CREATE}"),
        format!("GET {ns}/services/{JOB}"),
        format!("POST {ns}/services{CREATE}"),
    ];
    expected.extend(vec![format!("POST {ns}/pods?"); 4]);
    expected.push(format!("PATCH {JOB_PATH}/status{APPLY}"));
    assert_eq!(sorted(lines[..11].to_vec()), sorted(expected), "{lines:?}");
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(
        sc.server
            .requests()
            .last()
            .unwrap()
            .path
            .contains("/status"),
        "the status comes last: {lines:?}"
    );
    let (status, why, msg) = sc.server.last_condition("Running");
    assert_eq!((status.as_str(), why.as_str()), ("False", "FailedCreate"));
    assert!(
        msg.starts_with("creating worker pod janus-7b-sft-worker-")
            && msg.contains("exceeded quota"),
        "{msg}"
    );
    assert_eq!(
        sc.server.events(),
        [("FailedCreate".to_string(), "Warning".to_string())]
    );
}

#[tokio::test]
async fn a_finished_job_past_its_ttl_is_deleted_with_its_uid_as_precondition() {
    let mut status = started(JobPhase::Running);
    status.phase = Some(JobPhase::Succeeded);
    status.completion_time = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let mut job = job_with(Some(status));
    job.spec.run_policy.ttl_seconds_after_finished = Some(60);
    let sc = scenario(job);
    let action = reconcile(&sc).await.expect("reconcile succeeds");
    let reqs = sc.server.requests();
    assert_eq!(sc.server.lines(), [format!("DELETE {JOB_PATH}?")]);
    assert_eq!(reqs[0].body["propagationPolicy"], "Background");
    assert_eq!(reqs[0].body["preconditions"]["uid"], UID);
    assert_eq!(action, Action::await_change());
}

/// The Running condition of a written status.
fn running(status: &serde_json::Value) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Running")
        .expect("a Running condition");
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

#[tokio::test]
async fn a_config_map_of_another_owner_with_the_childs_name_is_left_alone_and_no_pod_made() {
    let sc = scenario(job_with(None));
    let ns = format!("/api/v1/namespaces/{NS}");
    sc.server.insert(
        format!("{ns}/configmaps/{JOB}-config"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": format!("{JOB}-config"), "namespace": NS, "uid": "user-cm"},
               "data": {"mine": "yes"}}),
    );
    let err = reconcile(&sc)
        .await
        .expect_err("a conflict fails the reconcile (retried with the backoff)");
    assert!(
        err.to_string().contains(&format!(
            "ConfigMap {NS}/{JOB}-config exists and has no controller"
        )),
        "{err}"
    );
    let lines = sc.server.lines();
    assert!(
        lines.contains(&format!("GET {ns}/configmaps/{JOB}-config")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("PATCH {ns}/configmaps"))),
        "the object is never applied over: {lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("POST {ns}/pods"))),
        "no pod: {lines:?}"
    );
    let last = sc.server.requests().last().unwrap().clone();
    assert_eq!(last.path, format!("{JOB_PATH}/status{APPLY}"));
    let (status, reason, message) = running(&last.body["status"]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ChildConflict")
    );
    assert!(
        message.contains(&format!("ConfigMap {NS}/{JOB}-config")),
        "{message}"
    );
    assert_eq!(
        sc.server.events(),
        [("ChildConflict".to_string(), "Warning".to_string())]
    );
}

#[tokio::test]
async fn a_conflict_already_reported_writes_nothing_new_and_sends_no_second_warning() {
    let mut status = started(JobPhase::Pending);
    crate::controller::conditions::set_condition(
        &mut status.conditions,
        "Running",
        false,
        "ChildConflict",
        &format!(
            "Service {NS}/{JOB} exists and is controlled by Deployment web, not this job: it is \
             left alone (delete or rename it for the job to start)"
        ),
        now(),
    );
    let sc = scenario(job_with(Some(status)));
    let ns = format!("/api/v1/namespaces/{NS}");
    sc.server.insert(
        format!("{ns}/services/{JOB}"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": JOB, "namespace": NS, "uid": "web-svc",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                "name": "web", "uid": "web", "controller": true}]}}),
    );
    reconcile(&sc).await.expect_err("still in conflict");
    let lines = sc.server.lines();
    assert!(
        !lines.iter().any(|l| l.contains("/status")
            || l.starts_with(&format!("PATCH {ns}/services"))
            || l.starts_with(&format!("POST {ns}/pods"))),
        "{lines:?}"
    );
    assert!(sc.server.events().is_empty(), "{:?}", sc.server.events());
}

#[tokio::test]
async fn a_pod_of_another_owner_with_a_workers_name_takes_back_the_gang_and_says_so() {
    let sc = scenario(job_with(Some(started(JobPhase::Pending))));
    let ns = format!("/api/v1/namespaces/{NS}");
    // Not labelled as the job's: not in the cache, only the create finds it.
    sc.server.insert(
        format!("{ns}/pods/{JOB}-worker-2"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{JOB}-worker-2"), "namespace": NS, "uid": "user-pod"},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let err = reconcile(&sc).await.expect_err("a conflict");
    assert!(
        err.to_string().contains(&format!(
            "Pod {NS}/{JOB}-worker-2 exists and has no controller"
        )),
        "{err}"
    );
    let lines = sc.server.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("DELETE {ns}/pods/{JOB}-worker-2"))),
        "the other owner's pod is left alone: {lines:?}"
    );
    let deleted: Vec<String> = sorted(
        lines
            .iter()
            .filter(|l| l.starts_with("DELETE"))
            .cloned()
            .collect(),
    );
    assert_eq!(
        deleted,
        [0, 1, 3]
            .iter()
            .map(|r| format!("DELETE {ns}/pods/{JOB}-worker-{r}?"))
            .collect::<Vec<_>>(),
        "the pods just made go: a gang with a member missing cannot run"
    );
    let last = sc.server.requests().last().unwrap().clone();
    let (status, reason, message) = running(&last.body["status"]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ChildConflict")
    );
    assert!(
        message.contains(&format!("Pod {NS}/{JOB}-worker-2")),
        "{message}"
    );
    assert_eq!(
        sc.server.events(),
        [("ChildConflict".to_string(), "Warning".to_string())]
    );

    // While the condition stands, the next look reads before it creates: no churn.
    let mut job = job_with(Some(
        serde_json::from_value(last.body["status"].clone()).unwrap(),
    ));
    job.metadata.resource_version = Some("2".into());
    let again = scenario(job);
    again.server.insert(
        format!("{ns}/pods/{JOB}-worker-2"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{JOB}-worker-2"), "namespace": NS, "uid": "user-pod"}}),
    );
    reconcile(&again).await.expect_err("still in conflict");
    let lines = again.server.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("POST {ns}/pods"))),
        "{lines:?}"
    );
    assert!(again.server.events().is_empty());
}

/// A node `secs` seconds into the state its `Ready` condition (`status`, the node
/// lifecycle controller's reason) and `taints` say.
fn node(ready: &str, taints: &[&str], secs: i64) -> k8s_openapi::api::core::v1::Node {
    let since = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs)).to_string();
    let taints: Vec<_> = taints
        .iter()
        .map(|k| json!({"key": k, "effect": "NoExecute", "timeAdded": since}))
        .collect();
    let why = if ready == "False" {
        ("KubeletNotReady", "container runtime network not ready")
    } else {
        ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    };
    serde_json::from_value(json!({
        "metadata": {"name": "gpu-node-7"},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": why.0,
            "message": why.1, "lastTransitionTime": since}]}
    }))
    .unwrap()
}

/// A running gang, rank 1 on `node`; one reconcile. The requests after the fresh list
/// and the status: each DELETE's pod and grace period (None: the pod's own).
async fn gang_with_rank_1_on(
    node: k8s_openapi::api::core::v1::Node,
) -> (
    fixtures::Scenario<JanusTrainingJob>,
    Vec<(String, Option<i64>)>,
) {
    let mut sc = scenario(job_with(Some(started(JobPhase::Running))));
    for r in 0..4 {
        let mut p = worker(r, "Running", None);
        p.spec.as_mut().unwrap().node_name =
            Some(if r == 1 { "gpu-node-7" } else { "gpu-node-1" }.into());
        sc = sc.with_pod(p);
    }
    sc.nodes.push(node);
    reconcile(&sc).await.expect("reconcile succeeds");
    let ns = format!("/api/v1/namespaces/{NS}");
    let lines = sc.server.lines();
    assert_eq!(
        lines[..2],
        [
            format!("GET {ns}/pods?&labelSelector=janus.dev%2Fjob%3D{JOB}"),
            format!("PATCH {JOB_PATH}/status{APPLY}"),
        ],
        "{lines:?}"
    );
    let mut deletes: Vec<(String, Option<i64>)> = sc.server.requests()[2..]
        .iter()
        .map(|r| {
            assert_eq!(r.method, "DELETE", "{lines:?}");
            (
                r.path
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .trim_end_matches('?')
                    .to_string(),
                r.body["gracePeriodSeconds"].as_i64(),
            )
        })
        .collect();
    deletes.sort();
    (sc, deletes)
}

fn restarting(sc: &fixtures::Scenario<JanusTrainingJob>) -> (String, String) {
    let st = &sc.server.requests()[1].body["status"];
    assert_eq!(st["phase"], "Restarting");
    assert_eq!(st["restartsCountedTowardsBackoff"].as_i64(), Some(0));
    let c = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restarting")
        .unwrap();
    (
        c["reason"].as_str().unwrap().into(),
        c["message"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn a_not_ready_node_past_the_toleration_deletes_the_gang_with_its_grace_period() {
    // Ready=False and the not-ready taint: the kubelet reports, its containers may
    // still run and write; it confirms their deletion once they have stopped.
    let (sc, deletes) =
        gang_with_rank_1_on(node("False", &["node.kubernetes.io/not-ready"], 400)).await;
    assert_eq!(
        deletes,
        (0..4)
            .map(|r| (format!("{JOB}-worker-{r}"), None))
            .collect::<Vec<_>>(),
        "no grace period 0"
    );
    let (reason, message) = restarting(&sc);
    assert_eq!(reason, "NodeNotReady");
    assert!(
        message.contains("gpu-node-7") && message.contains("never forced"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_node_past_the_toleration_force_deletes_its_worker() {
    let (sc, deletes) =
        gang_with_rank_1_on(node("Unknown", &["node.kubernetes.io/unreachable"], 400)).await;
    assert_eq!(
        deletes,
        (0..4)
            .map(|r| (format!("{JOB}-worker-{r}"), (r == 1).then_some(0)))
            .collect::<Vec<_>>(),
        "only the worker on the silent node is forced"
    );
    let (reason, message) = restarting(&sc);
    assert_eq!(reason, "NodeUnreachable");
    assert!(message.contains("force-deleted"), "{message}");
}

#[tokio::test]
async fn an_out_of_service_node_force_deletes_its_worker_at_once() {
    // Just tainted by an administrator (the non-graceful node shutdown); the kubelet's
    // last word was NotReady.
    let (sc, deletes) =
        gang_with_rank_1_on(node("False", &["node.kubernetes.io/out-of-service"], 1)).await;
    assert_eq!(
        deletes,
        (0..4)
            .map(|r| (format!("{JOB}-worker-{r}"), (r == 1).then_some(0)))
            .collect::<Vec<_>>()
    );
    let (reason, message) = restarting(&sc);
    assert_eq!(reason, "NodeUnreachable");
    assert!(message.contains("out of service"), "{message}");
}

#[tokio::test]
async fn a_not_ready_node_within_the_toleration_makes_no_request() {
    let mut sc = scenario(job_with(Some(started(JobPhase::Running))));
    for r in 0..4 {
        let mut p = worker(r, "Running", None);
        p.spec.as_mut().unwrap().node_name = Some("gpu-node-7".into());
        sc = sc.with_pod(p);
    }
    sc.nodes
        .push(node("False", &["node.kubernetes.io/not-ready"], 10));
    let action = reconcile(&sc).await.expect("reconcile succeeds");
    assert_eq!(sc.server.lines(), Vec::<String>::new());
    assert_ne!(
        action,
        Action::await_change(),
        "looked at again when it ends"
    );
}
