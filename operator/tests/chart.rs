//! The Helm chart, rendered by a real `helm` (built from helm.sh/helm by
//! tests/controlplane/build-node.sh): `helm lint --strict`, `helm template` against
//! golden files, the optional monitors, and the values schema. Installing it into a
//! cluster with a real node is tests/e2e.
//!
//! Regenerate the golden files after an intended change with
//! `JANUS_UPDATE_GOLDEN=1 cargo test -p janus-operator --test chart`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
    .canonicalize()
    .unwrap()
}

fn helm_binary() -> &'static PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(h) = std::env::var_os("JANUS_HELM") {
            return PathBuf::from(h);
        }
        let out = Command::new(repo().join("tests/controlplane/build-node.sh"))
            .output()
            .expect("run build-node.sh");
        assert!(
            out.status.success(),
            "build-node.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exports = String::from_utf8(out.stdout).unwrap();
        let line = exports
            .lines()
            .find_map(|l| l.strip_prefix("export JANUS_HELM="))
            .expect("build-node.sh prints JANUS_HELM");
        PathBuf::from(line.trim_matches('\''))
    })
}

/// Run helm with a private home (no repositories, no state of the machine's user).
fn helm(args: &[&str]) -> (bool, String, String) {
    let home = tempfile_dir();
    let out = Command::new(helm_binary())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("helm-home-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chart() -> String {
    repo().join("charts/janus-operator").display().to_string()
}

fn template(extra: &[&str]) -> String {
    let c = chart();
    let mut args = vec![
        "template",
        "janus-operator",
        c.as_str(),
        "--namespace",
        "janus-system",
    ];
    args.extend(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{err}");
    out
}

fn golden(name: &str, rendered: &str) {
    let path = repo().join("operator/tests/fixtures").join(name);
    if std::env::var_os("JANUS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (JANUS_UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != rendered {
        let first = want
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(rendered.lines().count()));
        panic!(
            "helm template output differs from {} at line {}:\n  golden:   {:?}\n  rendered: {:?}\n\
             (JANUS_UPDATE_GOLDEN=1 rewrites it after an intended change)",
            path.display(),
            first + 1,
            want.lines().nth(first),
            rendered.lines().nth(first)
        );
    }
}

fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn helm_lint_strict_passes() {
    let (ok, out, err) = helm(&["lint", "--strict", &chart()]);
    assert!(ok, "helm lint --strict:\n{out}\n{err}");
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
}

#[test]
fn default_render_matches_its_golden_file() {
    let r = template(&[]);
    golden("chart-default.yaml", &r);
    let k = kinds(&r);
    for want in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    // The operator's port admits only the jobs' pods (any namespace when it watches all).
    let np = &r[r.find("kind: NetworkPolicy").unwrap()..];
    let np = &np[..np.find("\n---").unwrap_or(np.len())];
    for want in [
        "policyTypes: [Ingress]",
        "- {port: http, protocol: TCP}",
        "- {key: janus.dev/job, operator: Exists}",
        "- {key: janus.dev/eval-job, operator: Exists}",
        "namespaceSelector:\n        {}",
    ] {
        assert!(np.contains(want), "{want:?} not in\n{np}");
    }
    // Monitors only when asked for (their CRDs may not exist in the cluster).
    assert!(
        !k.iter().any(|x| x == "ServiceMonitor" || x == "PodMonitor"),
        "{k:?}"
    );
}

#[test]
fn monitors_render_when_enabled_with_their_labels() {
    let r = template(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.labels.team=ml",
        "--set",
        "imagePullSecrets={regcred}",
        "--set",
        "watchNamespace=research",
    ]);
    golden("chart-monitoring.yaml", &r);
    let k = kinds(&r);
    assert!(
        k.iter().any(|x| x == "ServiceMonitor") && k.iter().any(|x| x == "PodMonitor"),
        "{k:?}"
    );
    assert!(r.contains("release: kube-prometheus"), "{r}");
    assert!(r.contains("team: ml"), "{r}");
    assert!(r.contains("- name: \"regcred\""), "{r}");
    assert!(r.contains("matchNames: [research]"), "{r}");
    assert!(r.contains("port: metrics"), "{r}");
    // The target's namespace and pod, never the trainer's own labels of those names.
    assert!(!r.contains("honorLabels:"), "{r}");
}

#[test]
fn the_network_policy_admits_the_watched_namespace_and_the_named_scrapers() {
    let r = template(&[
        "--set",
        "watchNamespace=research",
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ]);
    let np = &r[r.find("kind: NetworkPolicy").expect("a NetworkPolicy")..];
    assert!(
        np.contains("matchLabels: {kubernetes.io/metadata.name: research}"),
        "{np}"
    );
    assert!(
        np.contains("kubernetes.io/metadata.name: monitoring"),
        "{np}"
    );
    let off = template(&["--set", "networkPolicy.enabled=false"]);
    assert!(!kinds(&off).iter().any(|k| k == "NetworkPolicy"));
}

#[test]
fn a_single_replica_has_no_disruption_budget() {
    let k = kinds(&template(&["--set", "replicas=1"]));
    assert!(!k.iter().any(|x| x == "PodDisruptionBudget"), "{k:?}");
}

#[test]
fn the_values_schema_rejects_bad_values_naming_the_key() {
    let c = chart();
    for (set, want) in [
        ("replicas=two", "/replicas"),
        ("replicass=2", "replicass"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "metrics.serviceMonitor.interval=soon",
            "/metrics/serviceMonitor/interval",
        ),
        ("stallSeconds=1", "/stallSeconds"),
    ] {
        let (ok, _, err) = helm(&["template", "x", c.as_str(), "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(
            err.contains(want),
            "--set {set}: the error does not name {want}:\n{err}"
        );
    }
}

#[test]
fn the_rendered_liveness_probe_is_the_wedge_detecting_healthz() {
    let r = template(&["--set", "stallSeconds=45"]);
    assert!(r.contains("- --stall-seconds=45"), "{r}");
    assert!(r.contains("path: /healthz"), "{r}");
}
