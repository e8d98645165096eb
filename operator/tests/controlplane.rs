//! The operator against a real Kubernetes control plane (tests/controlplane): one
//! test per promised behaviour of issue 5, each in its own namespace, each with its
//! own operator process (the built binary).

mod eval;
mod hardening;
mod seams;
mod support;

use std::time::Duration;

use janus_crds::JanusTrainingJob;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(60);
/// What the operator tells pods (the chart's in-cluster Service address).
const REPORT_URL: &str = "http://janus-operator.janus-system.svc:8080/v1/report";

fn env_value(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_job_gets_service_configmap_identity_running_pods_and_reported_progress() {
    let c = client().await;
    let ns = namespace(&c, "apply").await;
    let _op = Operator::start(
        &ns,
        "a",
        &["--no-leader-election", "--report-url", REPORT_URL],
    );
    let job = create_job(&c, &ns, "sft", job_spec(3)).await;

    let j = wait_phase(&c, &ns, "sft", "Running", T).await;
    let ps = wait_gang_running(&c, &ns, "sft", 3, 0).await;
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p.name_any(), format!("sft-worker-{i}"));
        assert_eq!(p.labels()["janus.dev/rank"], i.to_string());
        assert_eq!(p.labels()["janus.dev/job"], "sft");
        let o = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.uid.as_str(), o.controller),
            (job.uid().unwrap().as_str(), Some(true))
        );
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(
            node.starts_with("kwok-node-"),
            "scheduled onto a fake GPU node: {node}"
        );
        assert_eq!(env_value(p, "JANUS_NODE_RANK"), Some(i.to_string()));
        assert_eq!(env_value(p, "JANUS_NNODES").as_deref(), Some("3"));
        assert_eq!(env_value(p, "JANUS_NPROC_PER_NODE").as_deref(), Some("1"));
        assert_eq!(
            env_value(p, "JANUS_MASTER_ADDR").as_deref(),
            Some("sft-worker-0.sft.apply.svc")
        );
        assert_eq!(env_value(p, "JANUS_ATTEMPT").as_deref(), Some("0"));
        assert_eq!(
            env_value(p, "JANUS_CONFIG").as_deref(),
            Some("/etc/janus/config.yaml")
        );
        assert_eq!(p.spec.as_ref().unwrap().subdomain.as_deref(), Some("sft"));
    }
    let svc = Api::<Service>::namespaced(c.clone(), &ns)
        .get("sft")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("sft-config")
        .await
        .unwrap();
    let cfg = &cm.data.unwrap()["config.yaml"];
    assert!(
        cfg.contains("job: sft") && cfg.contains("learning_rate: 5e-6"),
        "{cfg}"
    );
    Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .get("sft-worker")
        .await
        .unwrap();
    assert!(
        Api::<Role>::namespaced(c.clone(), &ns)
            .get_opt("sft-worker")
            .await
            .unwrap()
            .is_none(),
        "the workers hold no Role"
    );

    let s = j.status.unwrap();
    assert_eq!(s.workers.unwrap().running, 3);
    assert_eq!(s.observed_generation, Some(1));
    assert!(s.start_time.is_some());

    // The workers' ServiceAccount may not touch the API at all, not even rank 0's pod.
    let worker = impersonated_client("system:serviceaccount:apply:sft-worker").await;
    let pods_as_worker: Api<Pod> = Api::namespaced(worker, &ns);
    let note = json!({"metadata": {"annotations": {"x": "y"}}});
    match pods_as_worker
        .patch(
            "sft-worker-0",
            &PatchParams::default(),
            &Patch::Merge(&note),
        )
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("a worker patching a pod must be forbidden, got {other:?}"),
    }
    for p in &ps {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            env_value(p, "JANUS_REPORT_URL").as_deref(),
            Some(REPORT_URL)
        );
    }

    // Progress goes through the operator: rank 0's pod-bound token, checked by a real
    // TokenReview, and the annotation it writes is mirrored into status.progress.
    let doc = r#"{"step":42,"totalSteps":1000,"loss":1.25,"tokensPerSecond":5000,"lastCheckpoint":"s3://checkpoints/sft/step-40","updatedAt":"2026-01-01T00:00:00Z"}"#;
    let report = |annotation: &str, value: &str| {
        json!({"annotation": annotation, "value": value}).to_string()
    };
    let rank0 = pod_token(&c, &ns, "sft-worker", &ps[0], "janus.dev/operator").await;
    let (code, why) = _op.post(
        "/v1/report",
        Some(&rank0),
        &report("janus.dev/progress", doc),
    );
    assert_eq!(code, 204, "{why}");
    wait_for("status.progress.step = 42", T, || async {
        let j = get_job(&c, &ns, "sft").await?;
        let s = j.status?;
        (s.progress?.step == 42
            && s.last_checkpoint.as_deref() == Some("s3://checkpoints/sft/step-40"))
        .then_some(())
    })
    .await;

    // Everyone else is refused, with the reason, and nothing is written.
    let progress = report("janus.dev/progress", doc);
    let rank1 = pod_token(&c, &ns, "sft-worker", &ps[1], "janus.dev/operator").await;
    let api_audience = pod_token(&c, &ns, "sft-worker", &ps[0], "").await;
    let unbound = Api::<ServiceAccount>::namespaced(c.clone(), &ns)
        .create_token_request(
            "sft-worker",
            &PostParams::default(),
            &serde_json::from_value(json!({"spec": {"audiences": ["janus.dev/operator"]}}))
                .unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    for (token, body, want, says) in [
        (Some(&rank1), &progress, 403, "only rank 0 (sft-worker-0)"),
        (
            Some(&api_audience),
            &progress,
            401,
            "audience janus.dev/operator",
        ),
        (Some(&unbound), &progress, 403, "names no pod"),
        (None, &progress, 401, "no bearer token"),
        (
            Some(&rank0),
            &report("janus.dev/eval-progress", "{}"),
            403,
            "may set only janus.dev/progress",
        ),
        (
            Some(&rank0),
            &report("janus.dev/progress", "{\"step\":1}"),
            400,
            "not a valid report",
        ),
        (
            Some(&rank0),
            &"not json".to_string(),
            400,
            "malformed report",
        ),
    ] {
        let (code, why) = _op.post("/v1/report", token.map(String::as_str), body);
        assert_eq!(code, want, "{says}: {why}");
        assert!(why.contains(says), "{code}: {why}");
    }
    let rank1_pod = Api::<Pod>::namespaced(c.clone(), &ns)
        .get("sft-worker-1")
        .await
        .unwrap();
    assert!(!rank1_pod.annotations().contains_key("janus.dev/progress"));
    assert!(
        _op.get("/metrics")
            .unwrap_or_default()
            .contains("janus_operator_reports_total{result=\"forbidden\"} 3"),
        "{}",
        _op.get("/metrics").unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_worker_recreates_the_whole_gang() {
    let c = client().await;
    let ns = namespace(&c, "gang").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "g", job_spec(3)).await;
    let before = wait_gang_running(&c, &ns, "g", 3, 0).await;
    finish_pod(&c, &ns, "g-worker-1", 75).await;

    let after = wait_gang_running(&c, &ns, "g", 3, 1).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b.uid(),
            a.uid(),
            "every worker was recreated, not only the failed one"
        );
        assert_eq!(env_value(a, "JANUS_ATTEMPT").as_deref(), Some("1"));
    }
    let j = wait_phase(&c, &ns, "g", "Running", T).await;
    assert_eq!(j.status.as_ref().unwrap().restarts, 1);
    let r = condition(&j, "Restarting").expect("Restarting condition");
    assert_eq!(r.reason, "AllWorkersRunning");
    let reasons = event_reasons(&c, &ns, "g").await;
    assert!(
        reasons.iter().any(|r| r == "WorkerFailed"),
        "events: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_backoff_limit_fails_the_job_with_the_reason() {
    let c = client().await;
    let ns = namespace(&c, "backoff").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(2);
    spec.run_policy.backoff_limit = 1;
    create_job(&c, &ns, "b", spec).await;
    wait_gang_running(&c, &ns, "b", 2, 0).await;
    finish_pod(&c, &ns, "b-worker-0", 1).await;
    wait_gang_running(&c, &ns, "b", 2, 1).await;
    finish_pod(&c, &ns, "b-worker-1", 137).await;
    let j = wait_phase(&c, &ns, "b", "Failed", T).await;
    let f = condition(&j, "Failed").unwrap();
    assert_eq!(f.reason, "BackoffLimitExceeded");
    assert!(
        f.message.contains("b-worker-1") && f.message.contains("137"),
        "{}",
        f.message
    );
    assert_eq!(j.status.as_ref().unwrap().restarts, 1);
    assert!(j.status.unwrap().completion_time.is_some());
    // cleanPodPolicy Running (default): the still-running worker is deleted, the failed one kept.
    wait_for("only the failed worker left", T, || async {
        let ps = pods(&c, &ns, "b").await;
        (ps.len() == 1 && ps[0].name_any() == "b-worker-1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_exit_code_fails_the_job_at_once() {
    let c = client().await;
    let ns = namespace(&c, "exit64").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "x", job_spec(2)).await;
    wait_gang_running(&c, &ns, "x", 2, 0).await;
    finish_pod(&c, &ns, "x-worker-1", 64).await;
    let j = wait_phase(&c, &ns, "x", "Failed", T).await;
    let f = condition(&j, "Failed").unwrap();
    assert_eq!(f.reason, "NonRetryableExit");
    assert!(
        f.message.contains("x-worker-1") && f.message.contains("64"),
        "{}",
        f.message
    );
    assert_eq!(j.status.unwrap().restarts, 0);
    let reasons = event_reasons(&c, &ns, "x").await;
    assert!(
        reasons.iter().any(|r| r == "NonRetryableExit"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_deletes_the_pods_and_resume_recreates_them() {
    let c = client().await;
    let ns = namespace(&c, "suspend").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "s", job_spec(2)).await;
    wait_gang_running(&c, &ns, "s", 2, 0).await;
    let api: Api<JanusTrainingJob> = Api::namespaced(c.clone(), &ns);
    let suspend = |v: bool| json!({"spec": {"runPolicy": {"suspend": v}}});
    api.patch("s", &PatchParams::default(), &Patch::Merge(suspend(true)))
        .await
        .unwrap();
    let j = wait_phase(&c, &ns, "s", "Suspended", T).await;
    assert_eq!(condition(&j, "Suspended").unwrap().status, "True");
    wait_for("no pods while suspended", T, || async {
        pods(&c, &ns, "s").await.is_empty().then_some(())
    })
    .await;

    api.patch("s", &PatchParams::default(), &Patch::Merge(suspend(false)))
        .await
        .unwrap();
    wait_gang_running(&c, &ns, "s", 2, 0).await;
    let j = wait_phase(&c, &ns, "s", "Running", T).await;
    let cond = condition(&j, "Suspended").unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "JobResumed")
    );
    assert_eq!(j.status.unwrap().restarts, 0, "a resume is not a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_fails_the_job_with_deadline_exceeded() {
    let c = client().await;
    let ns = namespace(&c, "deadline").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(1);
    spec.run_policy.active_deadline_seconds = Some(3);
    create_job(&c, &ns, "d", spec).await;
    let j = wait_phase(&c, &ns, "d", "Failed", Duration::from_secs(30)).await;
    assert_eq!(condition(&j, "Failed").unwrap().reason, "DeadlineExceeded");
    wait_for("running pods deleted", T, || async {
        pods(&c, &ns, "d").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_job_is_deleted_after_its_ttl() {
    let c = client().await;
    let ns = namespace(&c, "ttl").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(2);
    spec.run_policy.ttl_seconds_after_finished = Some(3);
    create_job(&c, &ns, "t", spec).await;
    wait_gang_running(&c, &ns, "t", 2, 0).await;
    finish_pod(&c, &ns, "t-worker-0", 0).await;
    finish_pod(&c, &ns, "t-worker-1", 0).await;
    let j = wait_phase(&c, &ns, "t", "Succeeded", T).await;
    assert_eq!(
        condition(&j, "Succeeded").unwrap().reason,
        "AllWorkersSucceeded"
    );
    wait_for("the job deleted by its TTL", T, || async {
        get_job(&c, &ns, "t").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_job_garbage_collects_its_children() {
    let c = client().await;
    let ns = namespace(&c, "gc").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "g", job_spec(2)).await;
    wait_gang_running(&c, &ns, "g", 2, 0).await;
    Api::<JanusTrainingJob>::namespaced(c.clone(), &ns)
        .delete("g", &DeleteParams::background())
        .await
        .unwrap();
    wait_for("pods, Service, ConfigMap garbage-collected", T, || async {
        let gone = pods(&c, &ns, "g").await.is_empty()
            && Api::<Service>::namespaced(c.clone(), &ns)
                .get_opt("g")
                .await
                .unwrap()
                .is_none()
            && Api::<ConfigMap>::namespaced(c.clone(), &ns)
                .get_opt("g-config")
                .await
                .unwrap()
                .is_none()
            && Api::<Role>::namespaced(c.clone(), &ns)
                .get_opt("g-worker")
                .await
                .unwrap()
                .is_none();
        gone.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_recreated_under_a_deleted_jobs_name_does_not_adopt_its_pods() {
    let c = client().await;
    let ns = namespace(&c, "recreate").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let old = create_job(&c, &ns, "r", job_spec(2)).await;
    wait_gang_running(&c, &ns, "r", 2, 0).await;
    // Hold the old pods (a finalizer) so they surely outlive the old job.
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let hold = |f: Vec<&str>| json!({"metadata": {"finalizers": f}});
    for p in ["r-worker-0", "r-worker-1"] {
        pod_api
            .patch(
                p,
                &PatchParams::default(),
                &Patch::Merge(hold(vec!["janus.dev/test-hold"])),
            )
            .await
            .unwrap();
    }
    let jobs: Api<JanusTrainingJob> = Api::namespaced(c.clone(), &ns);
    jobs.delete("r", &DeleteParams::background()).await.unwrap();
    wait_for("the old job gone", T, || async {
        get_job(&c, &ns, "r").await.is_none().then_some(())
    })
    .await;
    let new = create_job(&c, &ns, "r", job_spec(2)).await;
    assert_ne!(old.uid(), new.uid());
    // While the old pods remain the new job neither counts them nor restarts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let j = get_job(&c, &ns, "r").await.unwrap();
    let st = j.status.clone().unwrap_or_default();
    assert_eq!(st.restarts, 0, "{st:?}");
    assert_ne!(phase(&j), "Running", "the old pods were adopted: {st:?}");
    for p in ["r-worker-0", "r-worker-1"] {
        pod_api
            .patch(p, &PatchParams::default(), &Patch::Merge(hold(vec![])))
            .await
            .unwrap();
    }
    // The garbage collector removes the old pods; the new job then creates its own.
    wait_for("2 Running workers owned by the new job", T, || async {
        let ps = pods(&c, &ns, "r").await;
        let ok = ps.len() == 2
            && ps.iter().all(|p| {
                p.owner_references().first().map(|o| Some(o.uid.clone())) == Some(new.uid())
                    && p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
        ok.then_some(())
    })
    .await;
    let j = wait_phase(&c, &ns, "r", "Running", T).await;
    assert_eq!(j.status.unwrap().restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_node_restarts_the_gang() {
    let c = client().await;
    let ns = namespace(&c, "node").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    // A node only this test's job can use (its own taint), so deleting it touches no other test.
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "kwok-node-doomed", "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": "kwok-node-doomed"}},
        "spec": {"taints": [{"key": "janus.dev/doomed", "value": "yes", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"},
                   "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250", "nvidia.com/gpu": "8"}}
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(c.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let mut spec = job_spec(2);
    spec.workers.node_selector = Some(
        [(
            "kubernetes.io/hostname".to_string(),
            "kwok-node-doomed".to_string(),
        )]
        .into(),
    );
    spec.workers.tolerations.as_mut().unwrap().push(
        serde_json::from_value(
            json!({"key": "janus.dev/doomed", "operator": "Exists", "effect": "NoSchedule"}),
        )
        .unwrap(),
    );
    create_job(&c, &ns, "n", spec).await;
    wait_gang_running(&c, &ns, "n", 2, 0).await;
    nodes
        .delete("kwok-node-doomed", &DeleteParams::default())
        .await
        .unwrap();
    let j = wait_for("a gang restart after the node vanished", T, || async {
        let j = get_job(&c, &ns, "n").await?;
        (j.status.as_ref()?.restarts == 1).then_some(j)
    })
    .await;
    // The operator may see the node gone (NodeLost), or pod GC may delete the orphaned
    // pods first (WorkerDeleted while terminating, WorkerLost once gone).
    let accepted = ["NodeLost", "WorkerDeleted", "WorkerLost"];
    let r = condition(&j, "Restarting").unwrap();
    assert!(
        accepted.contains(&r.reason.as_str()),
        "{}: {}",
        r.reason,
        r.message
    );
    let reasons = event_reasons(&c, &ns, "n").await;
    assert!(reasons.iter().any(|e| e == &r.reason), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restart_mid_job_leaves_no_duplicate_or_orphaned_pods() {
    let c = client().await;
    let ns = namespace(&c, "restart").await;
    let mut op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "r", job_spec(4)).await;
    let before = wait_gang_running(&c, &ns, "r", 4, 0).await;
    op.kill();
    let op = Operator::start(&ns, "b", &["--no-leader-election"]);
    wait_for("the new operator reconciled", T, || async {
        (op.metric("janus_operator_reconcile_total") >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pods(&c, &ns, "r").await;
    assert_eq!(
        after.iter().map(|p| p.uid()).collect::<Vec<_>>(),
        before.iter().map(|p| p.uid()).collect::<Vec<_>>(),
        "the same 4 pods: none recreated, none added"
    );
    drop(op);

    // A worker fails while no operator runs: the next one restarts the gang exactly once.
    finish_pod(&c, &ns, "r-worker-2", 75).await;
    let _op = Operator::start(&ns, "c", &["--no-leader-election"]);
    wait_gang_running(&c, &ns, "r", 4, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = get_job(&c, &ns, "r").await.unwrap();
    assert_eq!(j.status.as_ref().unwrap().restarts, 1);
    let all = Api::<Pod>::namespaced(c.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(
        all.len(),
        4,
        "no orphans: {:?}",
        all.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_lease_holder_reconciles() {
    let c = client().await;
    let ns = namespace(&c, "leader").await;
    let fast = [
        "--lease-duration-seconds",
        "4",
        "--renew-deadline-seconds",
        "3",
        "--retry-period-seconds",
        "1",
    ];
    let mut a = Operator::start(&ns, "a", &fast);
    wait_for("replica a leads", T, || async {
        (a.metric("janus_operator_leader") == 1.0).then_some(())
    })
    .await;
    let b = Operator::start(&ns, "b", &fast);
    create_job(&c, &ns, "l", job_spec(2)).await;
    wait_gang_running(&c, &ns, "l", 2, 0).await;
    wait_phase(&c, &ns, "l", "Running", T).await;
    assert!(a.metric("janus_operator_reconcile_total") >= 1.0);
    assert_eq!(b.metric("janus_operator_leader"), 0.0);
    assert_eq!(
        b.metric("janus_operator_reconcile_total"),
        0.0,
        "the standby never reconciles"
    );
    let lease = Api::<Lease>::namespaced(c.clone(), &ns)
        .get("janus-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("leader-a")
    );

    // The leader dies without releasing the lease: the standby takes over after it expires.
    a.kill();
    wait_for("replica b leads", Duration::from_secs(30), || async {
        (b.metric("janus_operator_leader") == 1.0).then_some(())
    })
    .await;
    finish_pod(&c, &ns, "l-worker-0", 75).await;
    wait_gang_running(&c, &ns, "l", 2, 1).await;
    assert!(b.metric("janus_operator_reconcile_total") >= 1.0);
    let lease = Api::<Lease>::namespaced(c.clone(), &ns)
        .get("janus-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("leader-b")
    );
}

/// The liveness probe fails when the controller cannot work: here its identity may not
/// list anything, so every watch fails, and /healthz turns 503 naming the watch and the
/// API server's answer once that has lasted --stall-seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_the_controller_is_wedged_on_failing_watches() {
    let c = client().await;
    let ns = namespace(&c, "wedged").await;
    let cl = cluster();
    // The admin's credentials, impersonating a service account without any RBAC.
    let admin = std::fs::read_to_string(&cl.kubeconfig).unwrap();
    let restricted = cl.dir.join("kubeconfig-nobody");
    std::fs::write(
        &restricted,
        admin.replacen(
            "    client-key-data:",
            &format!("    as: system:serviceaccount:{ns}:nobody\n    client-key-data:"),
            1,
        ),
    )
    .unwrap();
    let op = Operator::start_unready(
        &ns,
        "nobody",
        &["--no-leader-election", "--stall-seconds", "2"],
        &restricted,
    );
    let body = wait_for("/healthz to fail", Duration::from_secs(30), || async {
        op.get("/healthz").filter(|b| b != "ok")
    })
    .await;
    assert!(body.starts_with("wedged:"), "{body}");
    assert!(body.contains("watch has failed"), "{body}");
    assert!(body.contains("forbidden"), "{body}");
    // Not ready either, naming the failing watch, and the errors are counted.
    let ready = op.get("/readyz").unwrap();
    assert!(
        ready.starts_with("not ready:") && ready.contains("jobs watch is failing"),
        "{ready}"
    );
    let metrics = op.get("/metrics").unwrap();
    assert!(
        !metrics.contains("janus_operator_watch_errors_total{watch=\"jobs\"} 0"),
        "{metrics}"
    );
    assert!(op
        .log_text()
        .contains("watch failed; retrying with backoff"));
    // A working operator stays healthy past the same limit.
    let ok = Operator::start(
        &ns,
        "admin",
        &["--no-leader-election", "--stall-seconds", "2"],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ok.get("/healthz").as_deref(), Some("ok"));
}

/// Invalid specs are refused by the API server itself, with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_rejected_by_the_api_server_naming_the_field() {
    let c = client().await;
    let ns = namespace(&c, "invalid").await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.clone(),
        &ns,
        &kube::core::ApiResource::erase::<JanusTrainingJob>(&()),
    );
    let valid = || serde_json::to_value(JanusTrainingJob::new("v", job_spec(2))).unwrap();
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "negative replicas",
            Box::new(|v| v["spec"]["workers"]["replicas"] = json!(-1)),
            "spec.workers.replicas",
        ),
        (
            "zero replicas",
            Box::new(|v| v["spec"]["workers"]["replicas"] = json!(0)),
            "spec.workers.replicas",
        ),
        (
            "zero learning rate",
            Box::new(|v| v["spec"]["hyperparameters"] = json!({"learningRate": 0.0})),
            "spec.hyperparameters.learningRate",
        ),
        (
            "negative learning rate",
            Box::new(|v| v["spec"]["hyperparameters"] = json!({"learningRate": -1e-5})),
            "spec.hyperparameters.learningRate",
        ),
        (
            "unknown method",
            Box::new(|v| v["spec"]["method"] = json!("ppo")),
            "spec.method",
        ),
        (
            "bad model URL scheme",
            Box::new(|v| v["spec"]["model"]["url"] = json!("ftp://models/m")),
            "spec.model.url",
        ),
        (
            "relative checkpoint path",
            Box::new(|v| v["spec"]["checkpoint"]["url"] = json!("checkpoints")),
            "spec.checkpoint.url",
        ),
        (
            "bad dataset URL",
            Box::new(|v| v["spec"]["dataset"]["urls"] = json!(["http://x/y.parquet"])),
            "spec.dataset.urls",
        ),
        (
            "no dataset URLs",
            Box::new(|v| v["spec"]["dataset"]["urls"] = json!([])),
            "spec.dataset.urls",
        ),
        (
            "wrong type",
            Box::new(|v| v["spec"]["workers"]["replicas"] = json!("two")),
            "spec.workers.replicas",
        ),
        (
            "wrong type (epochs)",
            Box::new(|v| v["spec"]["hyperparameters"] = json!({"epochs": "four"})),
            "spec.hyperparameters.epochs",
        ),
        (
            "missing model",
            Box::new(|v| {
                v["spec"].as_object_mut().unwrap().remove("model");
            }),
            "spec.model",
        ),
        (
            "missing image",
            Box::new(|v| {
                v["spec"]["workers"]
                    .as_object_mut()
                    .unwrap()
                    .remove("image");
            }),
            "spec.workers.image",
        ),
        (
            "negative backoffLimit",
            Box::new(|v| v["spec"]["runPolicy"] = json!({"backoffLimit": -1})),
            "spec.runPolicy.backoffLimit",
        ),
        (
            "unknown cleanPodPolicy",
            Box::new(|v| v["spec"]["runPolicy"] = json!({"cleanPodPolicy": "Sometimes"})),
            "spec.runPolicy.cleanPodPolicy",
        ),
        (
            "packing with orpo",
            Box::new(|v| {
                v["spec"]["method"] = json!("orpo");
                v["spec"]["hyperparameters"] = json!({"packing": true});
            }),
            "spec.hyperparameters.packing",
        ),
        (
            "dpo section with method sft",
            Box::new(|v| v["spec"]["dpo"] = json!({"beta": 0.1})),
            "spec.dpo",
        ),
        (
            "zero dpo beta",
            Box::new(|v| {
                v["spec"]["method"] = json!("dpo");
                v["spec"]["dpo"] = json!({"beta": 0.0});
            }),
            "spec.dpo.beta",
        ),
        (
            "dpo label smoothing 0.5",
            Box::new(|v| {
                v["spec"]["method"] = json!("dpo");
                v["spec"]["dpo"] = json!({"labelSmoothing": 0.5});
            }),
            "spec.dpo.labelSmoothing",
        ),
        (
            "format vs extension",
            Box::new(|v| v["spec"]["dataset"]["format"] = json!("jsonl")),
            "spec.dataset.urls",
        ),
        (
            "name too long for pod hostnames",
            Box::new(|v| v["metadata"]["name"] = json!("a".repeat(60))),
            "metadata.name",
        ),
    ];
    let mut failures = vec![];
    for (i, (what, mutate, field)) in cases.iter().enumerate() {
        let mut v = valid();
        if v["metadata"]["name"] == "v" {
            v["metadata"]["name"] = json!(format!("bad-{i}"));
        }
        mutate(&mut v);
        let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!("{what}: expected a 422 naming {field}, got {e}")),
        }
    }

    // Immutable training fields: the job is accepted once, then edits are refused.
    let jobs: Api<JanusTrainingJob> = Api::namespaced(c.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &JanusTrainingJob::new("imm", job_spec(2)),
    )
    .await
    .unwrap();
    for (what, patch, field) in [
        (
            "method",
            json!({"spec": {"method": "orpo", "hyperparameters": {"packing": false}}}),
            "spec.method is immutable",
        ),
        (
            "model",
            json!({"spec": {"model": {"url": "s3://other"}}}),
            "spec.model is immutable",
        ),
        (
            "learning rate",
            json!({"spec": {"hyperparameters": {"learningRate": 1e-4}}}),
            "spec.hyperparameters is immutable",
        ),
        (
            "replicas",
            json!({"spec": {"workers": {"replicas": 5}}}),
            "spec.workers.replicas is immutable",
        ),
        (
            "dataset",
            json!({"spec": {"dataset": {"urls": ["s3://other/x.parquet"]}}}),
            "spec.dataset is immutable",
        ),
    ] {
        match jobs
            .patch("imm", &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => failures.push(format!("changing {what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!(
                "changing {what}: expected a 422 with `{field}`, got {e}"
            )),
        }
    }
    // What may change does change: suspend and the TTL.
    jobs.patch(
        "imm",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"runPolicy": {"suspend": true, "ttlSecondsAfterFinished": 60}}}),
        ),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The example jobs in manifests/examples are valid (server-side dry run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_manifests_are_accepted_by_the_api_server() {
    let c = client().await;
    let ns = namespace(&c, "examples").await;
    let cl = cluster();
    let dir = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../manifests/examples");
    let out = std::process::Command::new(cl.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", cl.kubeconfig.display()))
        .args(["apply", "--dry-run=server", "-n", &ns, "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("janus-7b-orpo") && text.contains("demo"),
        "{text}"
    );
}

/// A pod template override that cannot make a pod fails the job with a visible reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pod_template_fails_the_job_with_a_reason() {
    let c = client().await;
    let ns = namespace(&c, "template").await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let mut spec = job_spec(2);
    spec.workers.template = Some(json!({"spec": {"containers": "not a list"}}));
    create_job(&c, &ns, "bad", spec).await;
    let j = wait_phase(&c, &ns, "bad", "Failed", T).await;
    let f = condition(&j, "Failed").unwrap();
    assert_eq!(f.reason, "InvalidPodTemplate");
    assert!(f.message.contains("pod template override"), "{}", f.message);
    assert!(pods(&c, &ns, "bad").await.is_empty());
}
