//! Issue 30 (safe at the seams) against the real control plane, with the real operator
//! binary: objects of others are never taken over, the pod settings a platform needs,
//! and the report endpoint under a flood.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::support::*;

const T: Duration = Duration::from_secs(60);

/// The Running condition of `job` once its reason is ChildConflict.
async fn wait_conflict(c: &Client, ns: &str, job: &str) -> String {
    wait_for("the ChildConflict condition", T, || async {
        let j = get_job(c, ns, job).await?;
        let cond = condition(&j, "Running")?.clone();
        (cond.reason == "ChildConflict" && cond.status == "False").then_some(cond.message)
    })
    .await
}

/// The ChildConflict Warnings of `ns`, counting a series' repeats.
async fn conflict_warnings(c: &Client, ns: &str) -> i32 {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("ChildConflict") && e.type_.as_deref() == Some("Warning")
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// A user's ConfigMap and ServiceAccount that have a job's children's names are left
/// alone (no owner reference, their data unchanged: the garbage collector would delete
/// them with the job), the job says which object is in the way (Running=False
/// ChildConflict, one Warning) and makes no pod; once they are gone the job starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_others_with_a_childs_name_are_left_alone_and_the_job_says_so() {
    let c = client().await;
    let ns = namespace(&c, "no-adoption").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), &ns);
    let mine: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "clash-config", "labels": {"team": "web"}},
        "data": {"config.yaml": "the web team's"}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &mine).await.unwrap();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "clash-worker"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "clash", job_spec(2)).await;
    let msg = wait_conflict(&c, &ns, "clash").await;
    assert!(
        msg.contains(&format!("ConfigMap {ns}/clash-config"))
            || msg.contains(&format!("ServiceAccount {ns}/clash-worker")),
        "{msg}"
    );
    assert!(msg.contains("has no controller"), "{msg}");
    // Several retries with the backoff (1 s, 2 s, 4 s) meet the same objects.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(pods(&c, &ns, "clash").await.is_empty(), "no pod");
    let cm = cms.get("clash-config").await.unwrap();
    assert!(cm.owner_references().is_empty(), "{:?}", cm.metadata);
    assert_eq!(
        cm.data.as_ref().unwrap()["config.yaml"],
        "the web team's",
        "the data is untouched"
    );
    assert!(cm.labels().get("janus.dev/job").is_none());
    assert!(sas
        .get("clash-worker")
        .await
        .unwrap()
        .owner_references()
        .is_empty());
    assert_eq!(
        conflict_warnings(&c, &ns).await,
        1,
        "one Warning for one cause"
    );

    // Gone: the job's own children are made and the gang starts.
    cms.delete("clash-config", &DeleteParams::default())
        .await
        .unwrap();
    sas.delete("clash-worker", &DeleteParams::default())
        .await
        .unwrap();
    wait_phase(&c, &ns, "clash", "Running", Duration::from_secs(120)).await;
    let uid = get_job(&c, &ns, "clash").await.unwrap().uid().unwrap();
    let cm = cms.get("clash-config").await.unwrap();
    assert!(cm.owner_references().iter().any(|o| o.uid == uid));
}

/// A pod of another owner with a worker's name (not labelled as the job's: only the
/// create meets it) is left alone; the job says so and keeps no pod of a gang that
/// could not run; once it is gone the gang is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_another_owner_with_a_workers_name_is_left_alone_and_the_job_makes_no_pods() {
    let c = client().await;
    let ns = namespace(&c, "pod-clash").await;
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let theirs: Pod = serde_json::from_value(json!({
        "metadata": {"name": "clash-worker-1"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    pod_api
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    create_job(&c, &ns, "clash", job_spec(3)).await;
    let msg = wait_conflict(&c, &ns, "clash").await;
    assert!(msg.contains(&format!("Pod {ns}/clash-worker-1")), "{msg}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let left = wait_for("the pods just made to go", T, || async {
        let p = pods(&c, &ns, "clash").await;
        p.iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(p.len())
    })
    .await;
    assert!(left <= 2, "{left}");
    let p = pod_api.get("clash-worker-1").await.unwrap();
    assert!(p.owner_references().is_empty(), "{:?}", p.metadata);
    assert_eq!(conflict_warnings(&c, &ns).await, 1);

    pod_api
        .delete("clash-worker-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_gang_running(&c, &ns, "clash", 3, 0).await;
}
