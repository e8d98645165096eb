//! The operator with real Kueue configured with `waitForPodsReady` (a 20 s timeout, a
//! short requeuing backoff): the operator writes `PodsReady` on its Workloads as
//! Kueue's own job integrations do, so a gang that starts keeps its admission past the
//! timeout and one whose pods never start is evicted (`PodsReadyTimeout`), stopped and
//! requeued.

mod kueue_common;
mod support;

use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::ResourceExt;
use kueue_common::*;
use support::*;

const TIMEOUT_S: u64 = 20;

fn kueue() -> &'static Kueue {
    kueue_with(
        r#"waitForPodsReady:
  timeout: 20s
  blockAdmission: false
  requeuingStrategy:
    timestamp: Eviction
    backoffBaseSeconds: 1
    backoffMaxSeconds: 5"#,
    )
}

fn pods_ready(wl: &DynamicObject) -> Option<(String, String)> {
    wl.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodsReady")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn evicted(wl: &DynamicObject) -> bool {
    wl.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Evicted" && c["status"] == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_that_starts_is_pods_ready_and_keeps_its_admission_past_the_timeout() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "ready-started").await;
    queues(&c, &ns, 2).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    queued_job(&c, &ns, "started").await;
    wait_phase(&c, &ns, "started", "Running", T).await;
    let before: Vec<String> = wait_gang_running(&c, &ns, "started", 2, 0)
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    wait_for("PodsReady=True (Started) on the Workload", T, || async {
        let wl = workload(&c, &ns, "started").await?;
        (pods_ready(&wl)? == ("True".to_string(), "Started".to_string())).then_some(())
    })
    .await;
    // Past Kueue's timeout: still admitted, the same pods.
    tokio::time::sleep(Duration::from_secs(TIMEOUT_S + 5)).await;
    let wl = workload(&c, &ns, "started").await.unwrap();
    assert!(!evicted(&wl), "{:?}", wl.data["status"]);
    let j = get_job(&c, &ns, "started").await.unwrap();
    assert_eq!(admitted(&j).unwrap().1, "Admitted");
    let after: Vec<String> = pods(&c, &ns, "started")
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    assert_eq!(before, after, "the gang was not stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_that_never_starts_is_evicted_at_the_timeout_stopped_and_requeued() {
    kueue();
    let c = client().await;
    let ns = namespace(&c, "ready-never").await;
    queues(&c, &ns, 2).await;
    let _op = Operator::start(&ns, "a", &["--no-leader-election"]);
    // No node has this label: the pods stay Pending (Unschedulable), never Ready.
    let mut spec = job_spec(2);
    spec.workers.tolerations = None;
    spec.workers.node_selector =
        Some([("test.janus.dev/no-such-pool".to_string(), "x".to_string())].into());
    let mut job = janus_crds::JanusTrainingJob::new("never", spec);
    job.metadata.labels =
        Some([("kueue.x-k8s.io/queue-name".to_string(), "lq".to_string())].into());
    Api::<janus_crds::JanusTrainingJob>::namespaced(c.clone(), &ns)
        .create(&Default::default(), &job)
        .await
        .unwrap();
    wait_for("the never-starting gang's pods", T, || async {
        (pods(&c, &ns, "never").await.len() == 2).then_some(())
    })
    .await;
    wait_for(
        "PodsReady=False (WaitForStart) on the Workload",
        T,
        || async {
            let wl = workload(&c, &ns, "never").await?;
            (pods_ready(&wl)? == ("False".to_string(), "WaitForStart".to_string())).then_some(())
        },
    )
    .await;
    // Kueue evicts it at the timeout: the job says why, and its gang is stopped.
    let j = wait_admitted_reason(&c, &ns, "never", "Evicted").await;
    let msg = admitted(&j).unwrap().2;
    assert!(msg.contains("PodsReadyTimeout"), "{msg}");
    let wls: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &ar("Workload", "workloads"));
    // Requeued: after Kueue's backoff it is admitted again and the gang is recreated.
    let j = wait_admitted_reason(&c, &ns, "never", "Admitted").await;
    assert_eq!(
        j.status.unwrap().restarts,
        0,
        "an eviction is not a failure"
    );
    let wl = wls.get("janustrainingjob-never").await.unwrap();
    assert!(
        wl.data["status"]["requeueState"]["count"].as_i64() >= Some(1),
        "{:?}",
        wl.data["status"]
    );
    wait_for("the gang recreated", T, || async {
        (pods(&c, &ns, "never").await.len() == 2).then_some(())
    })
    .await;
}
