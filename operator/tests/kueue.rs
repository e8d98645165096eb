//! The operator with real Kueue (see `kueue_common`) on the real control plane, Kueue
//! configured without `waitForPodsReady` (kueue_pods_ready.rs has it): admission and
//! quota, eviction, preemption by priority, admission checks' `podSetUpdates`, and the
//! Workload refreshed when a waiting job changes.

mod kueue_common;
mod support;

use std::time::Duration;

use janus_crds::JanusTrainingJob;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use kueue_common::*;
use serde_json::json;
use support::*;

fn kueue() -> &'static Kueue {
    kueue_with("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quota_for_one_job_the_second_waits_for_admission_then_runs_when_the_first_finishes() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "kueue-quota").await;
    queues(&c, &ns, 2).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);

    let first = queued_job(&c, &ns, "first").await;
    let j = wait_phase(&c, &ns, "first", "Running", T).await;
    let (status, reason, message) = admitted(&j).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Admitted"));
    assert!(message.contains("ClusterQueue kueue-quota-cq"), "{message}");
    // The Workload: owned by the job, one pod set of 2 workers with their GPUs.
    let wl = workload(&c, &ns, "first")
        .await
        .expect("the first job's Workload");
    let owner = &wl.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        (first.uid().unwrap().as_str(), Some(true))
    );
    let ps = &wl.data["spec"]["podSets"][0];
    assert_eq!(ps["count"], 2);
    assert_eq!(
        ps["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"],
        "1"
    );
    // The admitted flavor's node labels and tolerations are on the pods (without the
    // toleration they could not be scheduled on the tainted kwok nodes).
    let ps: Vec<Pod> = wait_gang_running(&c, &ns, "first", 2, 0).await;
    for p in &ps {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_selector.as_ref().unwrap()["type"], "kwok");
        assert!(spec
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("kwok.x-k8s.io/node")));
    }

    // No quota left: the second job waits, suspended, saying why in Kueue's words.
    queued_job(&c, &ns, "second").await;
    let j = wait_admitted_reason(&c, &ns, "second", "WaitingForAdmission").await;
    let (status, _, message) = admitted(&j).unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("LocalQueue lq"), "{message}");
    assert!(
        message.contains("insufficient") || message.contains("quota"),
        "Kueue's message: {message}"
    );
    let j = wait_phase(&c, &ns, "second", "Suspended", T).await;
    assert_eq!(
        condition(&j, "Suspended").unwrap().reason,
        "WaitingForAdmission"
    );
    assert!(pods(&c, &ns, "second").await.is_empty());
    wait_for("a WaitingForAdmission Event", T, || async {
        event_reasons(&c, &ns, "second")
            .await
            .contains(&"WaitingForAdmission".to_string())
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pods(&c, &ns, "second").await.is_empty(),
        "no pods while waiting"
    );

    // The first finishes: its Workload is Finished, the quota returns, the second runs.
    for p in &ps {
        finish_pod(&c, &ns, &p.name_any(), 0).await;
    }
    wait_phase(&c, &ns, "first", "Succeeded", T).await;
    wait_for("the first Workload Finished", T, || async {
        let wl = workload(&c, &ns, "first").await?;
        wl.data["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Finished" && c["status"] == "True")
            .then_some(())
    })
    .await;
    let j = wait_phase(&c, &ns, "second", "Running", T).await;
    assert_eq!(admitted(&j).unwrap().1, "Admitted");
    wait_gang_running(&c, &ns, "second", 2, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_job_stops_its_gang_and_runs_again_when_readmitted() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "kueue-evict").await;
    queues(&c, &ns, 2).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    queued_job(&c, &ns, "evicted").await;
    wait_phase(&c, &ns, "evicted", "Running", T).await;
    wait_gang_running(&c, &ns, "evicted", 2, 0).await;

    // Deactivating a Workload makes Kueue evict it (reason Deactivated).
    let wls: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ar("Workload", "workloads"));
    let name = "janustrainingjob-evicted";
    wls.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"active": false}})),
    )
    .await
    .unwrap();
    let j = wait_admitted_reason(&c, &ns, "evicted", "Evicted").await;
    assert!(
        admitted(&j).unwrap().2.contains("evicted by Kueue"),
        "{:?}",
        admitted(&j)
    );
    wait_for("the gang deleted", T, || async {
        pods(&c, &ns, "evicted").await.is_empty().then_some(())
    })
    .await;
    let j = wait_phase(&c, &ns, "evicted", "Suspended", T).await;
    assert_eq!(
        j.status.unwrap().restarts,
        0,
        "an eviction is not a failure"
    );
    // The quota reservation is released once the gang is gone.
    wait_for("the reservation released", T, || async {
        let wl = wls.get(name).await.ok()?;
        wl.data["status"].get("admission").is_none().then_some(())
    })
    .await;

    wls.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"active": true}})),
    )
    .await
    .unwrap();
    wait_admitted_reason(&c, &ns, "evicted", "Admitted").await;
    wait_phase(&c, &ns, "evicted", "Running", T).await;
    wait_gang_running(&c, &ns, "evicted", 2, 0).await;
}

/// A queued job (as `queued_job`) with more labels and a patch of its spec.
async fn queued_job_with(
    c: &Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    spec_patch: serde_json::Value,
) -> JanusTrainingJob {
    let mut spec = job_spec(2);
    spec.workers.tolerations = None;
    let mut v = serde_json::to_value(&spec).unwrap();
    json_merge(&mut v, &spec_patch);
    let mut job = JanusTrainingJob::new(name, serde_json::from_value(v).unwrap());
    let mut l: std::collections::BTreeMap<String, String> =
        [("kueue.x-k8s.io/queue-name".to_string(), "lq".to_string())].into();
    l.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    job.metadata.labels = Some(l);
    Api::<JanusTrainingJob>::namespaced(c.clone(), ns)
        .create(&Default::default(), &job)
        .await
        .unwrap()
}

fn json_merge(into: &mut serde_json::Value, patch: &serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn workload_condition(wl: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    wl.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_preempts_a_running_low_priority_one_which_runs_again_once_quota_frees()
{
    kueue();
    let c = client().await;
    let ns = namespace(&c, "kueue-preempt").await;
    queues_with(
        &c,
        &ns,
        2,
        json!({"preemption": {"withinClusterQueue": "LowerPriority"}}),
    )
    .await;
    for (class, value) in [("low", 100), ("high", 1000)] {
        create(
            &c,
            None,
            "WorkloadPriorityClass",
            "workloadpriorityclasses",
            json!({
                "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                "metadata": {"name": format!("{ns}-{class}")},
                "value": value
            }),
        )
        .await;
    }
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    let low_class = format!("{ns}-low");
    queued_job_with(
        &c,
        &ns,
        "low",
        &[("kueue.x-k8s.io/priority-class", low_class.as_str())],
        json!({}),
    )
    .await;
    wait_phase(&c, &ns, "low", "Running", T).await;
    wait_gang_running(&c, &ns, "low", 2, 0).await;
    // The priority is Kueue's own: the class reference and its value.
    let wl = workload(&c, &ns, "low").await.unwrap();
    assert_eq!(wl.data["spec"]["priority"], 100);
    assert_eq!(
        wl.data["spec"]["priorityClassRef"],
        json!({"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": low_class})
    );

    let high_class = format!("{ns}-high");
    queued_job_with(
        &c,
        &ns,
        "high",
        &[("kueue.x-k8s.io/priority-class", high_class.as_str())],
        json!({}),
    )
    .await;
    // Kueue preempts the low job: its gang is stopped, it says so, and it waits.
    let j = wait_admitted_reason(&c, &ns, "low", "Evicted").await;
    let msg = admitted(&j).unwrap().2;
    assert!(msg.contains("Preempted"), "{msg}");
    wait_for("the low gang stopped", T, || async {
        pods(&c, &ns, "low").await.is_empty().then_some(())
    })
    .await;
    let j = wait_phase(&c, &ns, "low", "Suspended", T).await;
    assert_eq!(
        j.status.unwrap().restarts,
        0,
        "a preemption is not a failure"
    );
    wait_phase(&c, &ns, "high", "Running", T).await;
    let high_pods = wait_gang_running(&c, &ns, "high", 2, 0).await;
    let wl = workload(&c, &ns, "high").await.unwrap();
    assert_eq!(wl.data["spec"]["priority"], 1000);
    let wl = workload(&c, &ns, "low").await.unwrap();
    let (requeued, why, _) = workload_condition(&wl, "Requeued").unwrap();
    assert_eq!((requeued.as_str(), why.as_str()), ("True", "Preempted"));

    // The high job finishes: the quota frees and the low job runs again, from the
    // same attempt (its trainer resumes from its latest checkpoint).
    for p in &high_pods {
        finish_pod(&c, &ns, &p.name_any(), 0).await;
    }
    wait_phase(&c, &ns, "high", "Succeeded", T).await;
    wait_admitted_reason(&c, &ns, "low", "Admitted").await;
    wait_phase(&c, &ns, "low", "Running", T).await;
    wait_gang_running(&c, &ns, "low", 2, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_checks_pod_set_updates_go_on_the_pods() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "kueue-check").await;
    let check = format!("{ns}-manual");
    create(
        &c,
        None,
        "AdmissionCheck",
        "admissionchecks",
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "AdmissionCheck",
            "metadata": {"name": check},
            "spec": {"controllerName": "test.janus.dev/manual"}
        }),
    )
    .await;
    // No controller of ours runs the check: its state is set here, by hand.
    let checks: Api<DynamicObject> =
        Api::all_with(c.clone(), &ar("AdmissionCheck", "admissionchecks"));
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    checks
        .patch_status(
            &check,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Active", "status": "True", "reason": "Active",
                "message": "set by the test", "lastTransitionTime": now}]}})),
        )
        .await
        .unwrap();
    queues_with(
        &c,
        &ns,
        2,
        json!({"admissionChecksStrategy": {"admissionChecks": [{"name": check}]}}),
    )
    .await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    queued_job(&c, &ns, "checked").await;
    // Quota is reserved, but the check is pending: not admitted, no pods.
    let wls: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ar("Workload", "workloads"));
    let name = "janustrainingjob-checked";
    wait_for("the check pending on the Workload", T, || async {
        let wl = wls.get(name).await.ok()?;
        (wl.data["status"]["admissionChecks"][0]["state"] == "Pending").then_some(())
    })
    .await;
    assert!(pods(&c, &ns, "checked").await.is_empty());
    wls.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"admissionChecks": [{
            "name": check, "state": "Ready", "message": "provisioned",
            "lastTransitionTime": now,
            "podSetUpdates": [{
                "name": "workers",
                "labels": {"test.janus.dev/provisioned": "yes"},
                "annotations": {"test.janus.dev/request": "r-1"},
                "nodeSelector": {"type": "kwok"},
                "tolerations": [{"key": "test.janus.dev/reserved", "operator": "Exists", "effect": "NoSchedule"}]
            }]
        }]}})),
    )
    .await
    .unwrap();
    wait_phase(&c, &ns, "checked", "Running", T).await;
    let ps: Vec<Pod> = wait_gang_running(&c, &ns, "checked", 2, 0).await;
    for p in &ps {
        assert_eq!(p.labels()["test.janus.dev/provisioned"], "yes");
        assert_eq!(p.labels()["kueue.x-k8s.io/podset"], "workers");
        assert_eq!(p.annotations()["test.janus.dev/request"], "r-1");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_selector.as_ref().unwrap()["type"], "kwok");
        let tols = spec.tolerations.as_ref().unwrap();
        assert!(tols
            .iter()
            .any(|t| t.key.as_deref() == Some("test.janus.dev/reserved")));
        assert!(tols
            .iter()
            .any(|t| t.key.as_deref() == Some("kwok.x-k8s.io/node")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_changed_while_it_waits_gets_its_workload_updated_and_runs() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "kueue-update").await;
    queues(&c, &ns, 2).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    // 300 CPUs a worker: more than the ClusterQueue's 256, so it waits.
    queued_job_with(
        &c,
        &ns,
        "big",
        &[],
        json!({"workers": {"resources": {"requests": {"cpu": "300"}}}}),
    )
    .await;
    let j = wait_admitted_reason(&c, &ns, "big", "WaitingForAdmission").await;
    assert!(
        admitted(&j).unwrap().2.contains("cpu"),
        "{:?}",
        admitted(&j)
    );
    Api::<JanusTrainingJob>::namespaced(c.clone(), &ns)
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workers": {"resources": {"requests": {"cpu": "1"}}}}})),
        )
        .await
        .unwrap();
    // The Workload asks for what the pods will be, and Kueue admits it.
    wait_for("the Workload updated to 1 CPU a worker", T, || async {
        let wl = workload(&c, &ns, "big").await?;
        let cpu = &wl.data["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]
            ["requests"]["cpu"];
        (cpu == "1").then_some(())
    })
    .await;
    wait_phase(&c, &ns, "big", "Running", T).await;
    let ps = wait_gang_running(&c, &ns, "big", 2, 0).await;
    let req = &ps[0].spec.as_ref().unwrap().containers[0].resources;
    assert_eq!(
        req.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "1"
    );
}
