//! Real Kueue for the operator's tests: Kueue's controller manager (built by
//! tests/controlplane/build-kueue.sh at the pinned release) as a local process against
//! the test API server, with its own CRDs, `JanusTrainingJob` declared an external
//! framework, and one Configuration per test binary (`kueue_with`); the queues and jobs
//! the tests share.
//!
//! Kueue's webhooks are served (tests/controlplane/kueue-run.sh: a self-signed
//! certificate) but not registered with the API server, which would reach them through
//! a Service in an in-cluster install; the objects the tests write are complete, as its
//! defaulting webhooks would leave them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use janus_crds::JanusTrainingJob;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;

use crate::support::*;

pub const T: Duration = Duration::from_secs(90);

/// Kueue's build: `$JANUS_KUEUE` (the Makefile's), else build-kueue.sh's (cached).
pub fn kueue_dir() -> PathBuf {
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
pub struct Kueue {
    _child: Child,
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    let c = cluster();
    Command::new(c.bin.join("kubectl"))
        .arg(format!("--kubeconfig={}", c.kubeconfig.display()))
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Kueue's controller manager with its CRDs, once per test binary: `extra` is more of its
/// Configuration (YAML at the top level, e.g. a `waitForPodsReady:` section).
pub fn kueue_with(extra: &'static str) -> &'static Kueue {
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
{extra}
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

pub fn ar(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind),
        plural,
    )
}

pub async fn create(
    c: &Client,
    ns: Option<&str>,
    kind: &str,
    plural: &str,
    body: serde_json::Value,
) {
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
pub async fn queues(c: &Client, ns: &str, gpus: u32) {
    queues_with(c, ns, gpus, json!({})).await
}

/// The same, with more of the ClusterQueue's spec (`preemption`, `admissionChecks`).
pub async fn queues_with(c: &Client, ns: &str, gpus: u32, cq_extra: serde_json::Value) {
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
    let mut spec = json!({
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
    });
    if let Some(extra) = cq_extra.as_object() {
        for (k, v) in extra {
            spec[k] = v.clone();
        }
    }
    create(
        c,
        None,
        "ClusterQueue",
        "clusterqueues",
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": format!("{ns}-cq")},
            "spec": spec
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
pub async fn queued_job(c: &Client, ns: &str, name: &str) -> JanusTrainingJob {
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

pub async fn workload(c: &Client, ns: &str, job: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(c.clone(), ns, &ar("Workload", "workloads"))
        .get_opt(&format!("janustrainingjob-{job}"))
        .await
        .unwrap()
}

pub fn admitted(job: &JanusTrainingJob) -> Option<(String, String, String)> {
    condition(job, "Admitted").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn wait_admitted_reason(
    c: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> JanusTrainingJob {
    wait_for(&format!("{name}: Admitted reason {reason}"), T, || async {
        let j = get_job(c, ns, name).await?;
        (admitted(&j)?.1 == reason).then_some(j)
    })
    .await
}
