//! Kueue installed after the operator: the operator is ready without it (a queued job
//! says Kueue is missing), and once Kueue's CRDs appear its Workload watch starts without
//! a restart, so an admission is noticed at once rather than at the 5-minute resync.

mod kueue_common;
mod support;

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kueue_common::*;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_watch_starts_when_kueue_is_installed_after_the_operator() {
    let c = client().await;
    let ns = namespace(&c, "kueue-late").await;
    let op = Operator::start(&ns, "a", &["--no-leader-election"]);
    queued_job(&c, &ns, "late").await;
    let j = wait_admitted_reason(&c, &ns, "late", "KueueNotInstalled").await;
    assert_eq!(admitted(&j).unwrap().0, "False");
    assert_eq!(
        op.get("/readyz").as_deref(),
        Some("ok"),
        "ready without Kueue"
    );

    kueue_with("");
    // No GPU quota yet: the job waits in the queue.
    queues(&c, &ns, 0).await;
    wait_admitted_reason(&c, &ns, "late", "WaitingForAdmission").await;
    wait_for("the operator's Workload watch", T, || async {
        std::fs::read_to_string(&op.log)
            .ok()?
            .contains("watching Workloads")
            .then_some(())
    })
    .await;
    // Ready again once the new watch has its first list.
    wait_for("the operator ready with its Workload watch", T, || async {
        (op.get("/readyz").as_deref() == Some("ok")).then_some(())
    })
    .await;

    // Quota for it: Kueue admits the Workload and the watch brings the job to it.
    let cqs: Api<DynamicObject> = Api::all_with(c.clone(), &ar("ClusterQueue", "clusterqueues"));
    cqs.patch(
        &format!("{ns}-cq"),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resourceGroups": [{
            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
            "flavors": [{"name": format!("{ns}-kwok"), "resources": [
                {"name": "cpu", "nominalQuota": "256"},
                {"name": "memory", "nominalQuota": "2Ti"},
                {"name": "nvidia.com/gpu", "nominalQuota": "2"}
            ]}]
        }]}})),
    )
    .await
    .unwrap();
    wait_phase(&c, &ns, "late", "Running", Duration::from_secs(30)).await;
    wait_gang_running(&c, &ns, "late", 2, 0).await;
}
