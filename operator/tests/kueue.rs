//! The operator with real Kueue (sigs.k8s.io/kueue, built by
//! tests/controlplane/build-kueue.sh at the pinned release) on the real control plane:
//! Kueue's controller manager runs as a local process against the test API server, with
//! its own CRDs, `JanusTrainingJob` declared an external framework, and the real
//! operator binary.
//!
//! Kueue's webhooks are served (tests/controlplane/kueue-run.sh: a self-signed
//! certificate) but not registered with the API server, which would reach them through
//! a Service in an in-cluster install; the objects below are written complete, as its
//! defaulting webhooks would leave them.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use janus_crds::JanusTrainingJob;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(90);

/// Kueue's build: `$JANUS_KUEUE` (the Makefile's), else build-kueue.sh's (cached).
fn kueue_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("JANUS_KUEUE") {
        return PathBuf::from(d);
    }
    let script = controlplane_dir().join("build-kueue.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// Kueue's controller manager, once per test binary (killed with the test process: the
/// watchdog of `support` tears the cluster down, and the pid file kills it).
struct Kueue {
    _child: Child,
}

fn kubectl(args: &[&str]) -> std::process::Output {
    let c = cluster();
    Command::new(c.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", c.kubeconfig.display()))
        .args(args)
        .output()
        .expect("run kubectl")
}

fn kueue() -> &'static Kueue {
    static KUEUE: OnceLock<Kueue> = OnceLock::new();
    KUEUE.get_or_init(|| {
        let c = cluster();
        let dir = kueue_dir();
        let crds = dir.join("crds");
        let out = kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "kubectl apply Kueue's CRDs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ok = false;
        for _ in 0..10 {
            let out = kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/workloads.kueue.x-k8s.io",
                "crd/clusterqueues.kueue.x-k8s.io",
                "crd/localqueues.kueue.x-k8s.io",
                "crd/resourceflavors.kueue.x-k8s.io",
            ]);
            if out.status.success() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(ok, "Kueue's CRDs did not become Established");

        let work = c.dir.join("kueue");
        let certs = work.join("certs");
        std::fs::create_dir_all(&work).unwrap();
        let health = free_port();
        let config = work.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:{health}
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
integrations:
  frameworks: ["batch/job"]
  externalFrameworks: ["{external}"]
featureGates:
  VisibilityOnDemand: false
"#,
                webhook = free_port(),
                certs = certs.display(),
                external = janus_operator::training::kueue::EXTERNAL_FRAMEWORK,
            ),
        )
        .unwrap();
        let log = c.dir.join("kueue.log");
        // kueue-run.sh gives it self-signed certificates (see there).
        let child = Command::new(controlplane_dir().join("kueue-run.sh"))
            .arg(&dir)
            .arg(&work)
            .arg(&c.kubeconfig)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(c.dir.join("kueue.err")).unwrap())
            .spawn()
            .expect("start Kueue");
        c.kill_at_teardown(child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{health}/readyz")])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Kueue did not become ready; see {} and kueue.err",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Kueue { _child: child }
    })
}

fn ar(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind),
        plural,
    )
}

async fn create(c: &Client, ns: Option<&str>, kind: &str, plural: &str, body: serde_json::Value) {
    let ar = ar(kind, plural);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

/// A ResourceFlavor that places pods on the kwok nodes (node label + the toleration of
/// their taint: the jobs below do not tolerate it themselves), a ClusterQueue with
/// `gpus` GPUs and a LocalQueue `lq` in `ns`.
async fn queues(c: &Client, ns: &str, gpus: u32) {
    create(
        c,
        None,
        "ResourceFlavor",
        "resourceflavors",
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": format!("{ns}-kwok")},
            "spec": {
                "nodeLabels": {"type": "kwok"},
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
            }
        }),
    )
    .await;
    create(
        c,
        None,
        "ClusterQueue",
        "clusterqueues",
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": format!("{ns}-cq")},
            "spec": {
                "namespaceSelector": {},
                "queueingStrategy": "BestEffortFIFO",
                "resourceGroups": [{
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [{"name": format!("{ns}-kwok"), "resources": [
                        {"name": "cpu", "nominalQuota": "256"},
                        {"name": "memory", "nominalQuota": "2Ti"},
                        {"name": "nvidia.com/gpu", "nominalQuota": gpus.to_string()}
                    ]}]
                }]
            }
        }),
    )
    .await;
    create(
        c,
        Some(ns),
        "LocalQueue",
        "localqueues",
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": "lq", "namespace": ns},
            "spec": {"clusterQueue": format!("{ns}-cq")}
        }),
    )
    .await;
}

/// A 2-worker job (1 GPU each) in LocalQueue `lq`, without the kwok toleration.
async fn queued_job(c: &Client, ns: &str, name: &str) -> JanusTrainingJob {
    let mut spec = job_spec(2);
    spec.workers.tolerations = None;
    let mut job = JanusTrainingJob::new(name, spec);
    job.metadata.labels =
        Some([("kueue.x-k8s.io/queue-name".to_string(), "lq".to_string())].into());
    Api::<JanusTrainingJob>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap()
}

async fn workload(c: &Client, ns: &str, job: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(c.clone(), ns, &ar("Workload", "workloads"))
        .get_opt(&format!("janustrainingjob-{job}"))
        .await
        .unwrap()
}

fn admitted(job: &JanusTrainingJob) -> Option<(String, String, String)> {
    condition(job, "Admitted").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_admitted_reason(c: &Client, ns: &str, name: &str, reason: &str) -> JanusTrainingJob {
    wait_for(&format!("{name}: Admitted reason {reason}"), T, || async {
        let j = get_job(c, ns, name).await?;
        (admitted(&j)?.1 == reason).then_some(j)
    })
    .await
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
