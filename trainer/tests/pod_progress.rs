//! In a pod, rank 0 publishes its progress as the `janus.dev/progress` annotation on its
//! own pod, with a service account that may get/patch only that pod: checked against a
//! real kube-apiserver (tests/controlplane).

mod common;

use std::path::PathBuf;
use std::process::Command;

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    api: String,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let scripts = std::env::var_os("JANUS_CONTROLPLANE")
            .map(PathBuf::from)
            .unwrap_or_else(|| common::repo().join("tests/controlplane"));
        let out = Command::new(scripts.join("up.sh"))
            .arg(dir.path())
            .arg("1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the test control plane did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap_or_else(|| panic!("{k} missing from env:\n{env}"))
                .to_string()
        };
        Self {
            bin: PathBuf::from(var("JANUS_K8S_BIN")),
            api: var("JANUS_K8S_API"),
            dir,
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let scripts = common::repo().join("tests/controlplane");
        let _ = Command::new(scripts.join("down.sh"))
            .arg(self.dir.path())
            .output();
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: progress}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: demo-worker, namespace: progress}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: demo-progress, namespace: progress}
rules:
- apiGroups: [""]
  resources: [pods]
  resourceNames: [demo-worker-0]
  verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: demo-progress, namespace: progress}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: demo-progress}
subjects:
- {kind: ServiceAccount, name: demo-worker, namespace: progress}
"#;

fn pod(name: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "{name}", "namespace": "progress"}},
  "spec": {{"serviceAccountName": "demo-worker", "automountServiceAccountToken": false,
    "tolerations": [{{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}}],
    "containers": [{{"name": "trainer", "image": "janus:test"}}]}}}}"#
    )
}

fn annotation(c: &Cluster, pod: &str) -> String {
    c.kubectl_ok(
        &[
            "-n",
            "progress",
            "get",
            "pod",
            pod,
            "-o",
            r"jsonpath={.metadata.annotations.janus\.dev/progress}",
        ],
        None,
    )
}

#[test]
fn rank_0_publishes_progress_on_its_own_pod_and_nothing_else() {
    let cluster = Cluster::start();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(OBJECTS));
    // Pods are refused until the namespace's default service account exists.
    for name in ["demo-worker-0", "other"] {
        let mut tries = 0;
        while !cluster
            .kubectl(&["apply", "-f", "-"], Some(&pod(name)))
            .status
            .success()
        {
            tries += 1;
            assert!(tries < 50, "pod {name} was never accepted");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let token = cluster.kubectl_ok(&["-n", "progress", "create", "token", "demo-worker"], None);
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token.trim()).unwrap();

    let (data, model) = common::tiny_setup(tmp.path(), 8);
    let mut cmd = common::janus();
    cmd.args(["train", "--preset", "tiny"]);
    let overrides = common::tiny_overrides(
        tmp.path(),
        &model,
        &data.join("sft.parquet"),
        &["hyperparameters.max_steps=6", "checkpoint.every_steps=3"],
    );
    for o in overrides {
        cmd.args(["--set", &o]);
    }
    cmd.env("JANUS_POD_NAME", "demo-worker-0")
        .env("JANUS_POD_NAMESPACE", "progress")
        .env("JANUS_KUBE_API", &cluster.api)
        .env("JANUS_KUBE_TOKEN_FILE", &token_file)
        .env("JANUS_KUBE_CA_FILE", cluster.dir.path().join("pki/ca.crt"));
    let log = common::run_ok(cmd);
    assert!(log.contains("publishing progress on the pod"), "{log}");
    assert!(!log.contains("could not publish progress"), "{log}");

    let value = annotation(&cluster, "demo-worker-0");
    let p: janus_crds::Progress = serde_json::from_str(&value)
        .unwrap_or_else(|e| panic!("annotation is not a progress document ({e}): {value}"));
    assert_eq!((p.step, p.total_steps), (6, 6), "{value}");
    assert!(p.loss.is_some_and(f64::is_finite), "{value}");
    assert!(p.tokens_per_second.is_some_and(|t| t > 0.0), "{value}");
    assert!(
        p.last_checkpoint
            .as_deref()
            .is_some_and(|c| c.ends_with("/tiny/step-6")),
        "{value}"
    );
    assert!(p.updated_at.ends_with('Z'), "{value}");

    // The same credentials cannot touch another pod.
    let denied = Command::new(cluster.bin.join("kubectl"))
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", cluster.api))
        .arg(format!(
            "--certificate-authority={}",
            cluster.dir.path().join("pki/ca.crt").display()
        ))
        .arg(format!("--token={}", token.trim()))
        .args(["-n", "progress", "annotate", "pod", "other", "x=y"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && err.contains("forbidden"),
        "{err}"
    );
    assert!(annotation(&cluster, "other").is_empty());
}
