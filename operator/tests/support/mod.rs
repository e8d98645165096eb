//! Shared harness of the control-plane tests: ONE real control plane per test binary
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok; see
//! tests/controlplane/README.md), a fresh namespace per test, and the operator run as
//! the real built binary (`KUBECONFIG`, `--namespace` = the test's namespace).
//!
//! The control plane is torn down by a watchdog process that runs `down.sh` when the
//! test process exits, however it exits. A control plane that cannot start fails every
//! test loudly; nothing is skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use janus_crds::{JanusTrainingJob, JanusTrainingJobSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
    .canonicalize()
    .unwrap()
}

pub fn controlplane_dir() -> PathBuf {
    std::env::var_os("JANUS_CONTROLPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/controlplane"))
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Have the watchdog kill `pid` with the cluster, however the test process exits.
    pub fn kill_at_teardown(&self, pid: u32) {
        use std::io::Write;
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("operator-pids"))
            .unwrap();
        writeln!(pids, "{pid}").unwrap();
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared control plane (started on first use).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cp = controlplane_dir();
        let bin = match std::env::var_os("JANUS_K8S_BIN") {
            Some(b) => PathBuf::from(b),
            None => {
                let out = run_ok(
                    Command::new(cp.join("build.sh")).stderr(Stdio::inherit()),
                    "tests/controlplane/build.sh",
                );
                PathBuf::from(
                    out.lines()
                        .last()
                        .expect("build.sh prints the bin dir")
                        .trim(),
                )
            }
        };
        // Logs of the run stay under target/tmp (cargo's scratch space for tests).
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("janus-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Watchdog (detached on purpose: it outlives this process): tear the cluster (and any operator we started) down once this process is gone.
        let me = std::process::id();
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
                 [ -f '{d}/operator-pids' ] && xargs -r kill -9 < '{d}/operator-pids' 2>/dev/null; \
                 '{down}' '{d}' >/dev/null 2>&1",
                d = dir.display(),
                down = cp.join("down.sh").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the teardown watchdog");
        run_ok(
            // 6 nodes of 8 GPUs: the tests' jobs mostly keep running to the end, and
            // 32 GPUs left the last ones unschedulable.
            Command::new(cp.join("up.sh"))
                .arg(&dir)
                .arg("6")
                .env("JANUS_K8S_BIN", &bin)
                .stderr(Stdio::inherit()),
            "tests/controlplane/up.sh (the real control plane must start; see its log above)",
        );
        let kubeconfig = dir.join("kubeconfig");
        // The CRDs exactly as committed in the chart.
        let kubectl = |args: &[&str], what: &str| {
            run_ok(
                Command::new(bin.join("kubectl"))
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args(args),
                what,
            )
        };
        kubectl(
            &[
                "apply",
                "--server-side",
                "-f",
                &repo_root()
                    .join("charts/janus-operator/crds")
                    .display()
                    .to_string(),
            ],
            "kubectl apply the chart CRDs",
        );
        // Established can lag the create a moment (and kubectl's discovery cache of a
        // fresh API server too): retry the wait a few times before failing loudly.
        let wait = || {
            Command::new(bin.join("kubectl"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/janustrainingjobs.janus.dev",
                    "crd/janusevaljobs.janus.dev",
                ])
                .output()
                .expect("run kubectl wait")
        };
        let mut out = wait();
        for _ in 0..10 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            out = wait();
        }
        assert!(
            out.status.success(),
            "the CRDs did not become Established:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir,
            kubeconfig,
            bin,
        }
    })
}

pub async fn client() -> Client {
    janus_operator::install_crypto_provider();
    let c = cluster();
    let kc = Kubeconfig::read_from(&c.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A client acting as `user` (admin impersonation), to check RBAC.
pub async fn impersonated_client(user: &str) -> Client {
    janus_operator::install_crypto_provider();
    let c = cluster();
    let kc = Kubeconfig::read_from(&c.kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).unwrap()
}

/// A token of ServiceAccount `sa` bound to `pod`, as the kubelet projects it (empty
/// `audience`: the API server's own).
pub async fn pod_token(c: &Client, ns: &str, sa: &str, pod: &Pod, audience: &str) -> String {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let audiences: Vec<&str> = if audience.is_empty() {
        vec![]
    } else {
        vec![audience]
    };
    let request = serde_json::from_value(json!({"spec": {
        "audiences": audiences,
        "expirationSeconds": 600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
    }}))
    .unwrap();
    Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, name: &str) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
    name.to_string()
}

/// The operator binary, running against the test cluster.
pub struct Operator {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Operator {
    /// Start the built `janus-operator` for namespace `ns` with extra flags.
    pub fn start(ns: &str, tag: &str, extra: &[&str]) -> Operator {
        Self::start_as(ns, tag, extra, &cluster().kubeconfig)
    }

    /// The same with another kubeconfig (another identity).
    pub fn start_as(ns: &str, tag: &str, extra: &[&str], kubeconfig: &Path) -> Operator {
        Self::spawn(ns, tag, extra, kubeconfig, |body| body == "ok")
    }

    /// The same, returning once it serves HTTP at all (it may never become ready).
    pub fn start_unready(ns: &str, tag: &str, extra: &[&str], kubeconfig: &Path) -> Operator {
        Self::spawn(ns, tag, extra, kubeconfig, |_| true)
    }

    fn spawn(
        ns: &str,
        tag: &str,
        extra: &[&str],
        kubeconfig: &Path,
        up: impl Fn(&str) -> bool,
    ) -> Operator {
        let c = cluster();
        let port = free_port();
        let log = c.dir.join(format!("operator-{ns}-{tag}.log"));
        // JANUS_OPERATOR_BIN: another build (the report flood's figure before a change).
        let bin = std::env::var_os("JANUS_OPERATOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_janus-operator").into());
        let child = Command::new(bin)
            .args(["--namespace", ns, "--lease-namespace", ns])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--identity", &format!("{ns}-{tag}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,janus_operator=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start janus-operator");
        c.kill_at_teardown(child.id());
        let op = Operator {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if op.get("/readyz").is_some_and(|b| up(&b)) {
                return op;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "janus-operator did not become ready; log {}",
            op.log.display()
        );
    }

    /// GET a path of the operator's HTTP server (plain HTTP/1.0 over a TCP socket).
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let addr = self.http.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (head, rest) = body.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| rest.to_string())
    }

    /// POST `body` (JSON) to a path, with a bearer token: (status code, body).
    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.http.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("operator HTTP");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, rest.to_string())
    }

    /// Value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A job spec for the fake GPU nodes.
pub fn job_spec(replicas: i32) -> JanusTrainingJobSpec {
    serde_json::from_value(json!({
        "method": "sft",
        "model": {"url": "s3://models/mistral-7b-v0.2"},
        "dataset": {"urls": ["s3://data/mfc/train.parquet"]},
        "workers": {
            "replicas": replicas,
            "gpusPerWorker": 1,
            "image": "ghcr.io/janus/trainer:test",
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
        },
        "checkpoint": {"url": "s3://checkpoints"},
        "output": {"url": "s3://models/out"}
    }))
    .unwrap()
}

pub async fn create_job(
    client: &Client,
    ns: &str,
    name: &str,
    spec: JanusTrainingJobSpec,
) -> JanusTrainingJob {
    let api: Api<JanusTrainingJob> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &JanusTrainingJob::new(name, spec))
        .await
        .unwrap()
}

pub async fn get_job(client: &Client, ns: &str, name: &str) -> Option<JanusTrainingJob> {
    Api::<JanusTrainingJob>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub async fn pods(client: &Client, ns: &str, job: &str) -> Vec<Pod> {
    let mut v = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("janus.dev/job={job}")))
        .await
        .unwrap()
        .items;
    v.sort_by_key(|p| p.name_any());
    v
}

/// Poll `check` until it returns Some or `timeout` passes (then panic with `what`).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn phase(job: &JanusTrainingJob) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

/// Wait until the job reports `want` and return it.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> JanusTrainingJob {
    let mut last = String::new();
    let r = tokio::time::timeout(timeout, async {
        loop {
            if let Some(j) = get_job(client, ns, name).await {
                last = phase(&j);
                if last == want {
                    return j;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match r {
        Ok(j) => j,
        Err(_) => panic!(
            "job {ns}/{name} did not reach phase {want} in {timeout:?} (last phase {last:?})"
        ),
    }
}

/// Wait until every worker of `attempt` exists and is Running; returns the pods.
pub async fn wait_gang_running(
    client: &Client,
    ns: &str,
    job: &str,
    n: usize,
    attempt: i32,
) -> Vec<Pod> {
    wait_for(
        &format!("{n} Running workers of {ns}/{job} attempt {attempt}"),
        Duration::from_secs(60),
        || async {
            let ps = pods(client, ns, job).await;
            let ok = ps.len() == n
                && ps.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.labels().get("janus.dev/attempt") == Some(&attempt.to_string())
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            ok.then_some(ps)
        },
    )
    .await
}

/// Make the trainer container of pod `pod` terminate with `code` (README of
/// tests/controlplane: a strategic merge patch of the status subresource).
pub async fn finish_pod(client: &Client, ns: &str, pod: &str, code: i32) {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let reason = if code == 0 { "Completed" } else { "Error" };
    let patch = json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"},
                       {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [{"name": "trainer", "ready": false, "started": false,
            "state": {"running": null, "terminated": {"exitCode": code, "reason": reason,
                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}}]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

/// Reasons of the Events recorded for `job`.
pub async fn event_reasons(client: &Client, ns: &str, job: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job))
        .filter_map(|e| e.reason)
        .collect()
}

pub fn condition<'a>(
    job: &'a JanusTrainingJob,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}
